//! Plumbing shared by firstmile's services (L1 in DESIGN.md): no domain types here.
//!
//! [`layered`] merges configuration layers — built-in defaults < a TOML file < environment
//! variables < command-line overrides — on one TOML tree and deserializes once, so every layer is
//! checked by the same rules (`deny_unknown_fields`, types):
//! - an environment variable `<PREFIX><KEY>` sets `<key>` (lowercased); nested keys join with a
//!   double underscore (`FIRSTMILE_DIRECTOR_HEARTBEAT__INTERVAL_MS=500`). Values are TOML
//!   literals when they parse as one (`500`, `true`, `["10.0.0.0/8"]`), else plain strings;
//! - overrides are `key.path=value` pairs with the same value rules (the binary's `--set` flags).
//!
//! The environment is an argument, never read here, so layering is tested without touching the
//! process environment.
//!
//! [`listen`]: the listeners of every service — connection caps (global, per address until
//! authenticated), opening deadlines, bounded reads before authentication, and the hardened
//! HTTP serve loop ([`listen::http`]). [`tls`]: certificates and keys into rustls configs.

pub mod listen;
pub mod tls;

use serde::de::DeserializeOwned;

/// A configuration that cannot be used. The operator is at fault; binaries exit 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file: {0}")]
    Syntax(String),
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("override {arg:?}: {message}; overrides are key.path=value")]
    Override { arg: String, message: String },
    #[error("config key {key}: {message}")]
    Key { key: String, message: String },
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
}

impl ConfigError {
    pub fn key(key: &str, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Parse an env/override value: a TOML literal if it is one, else a string.
pub fn literal(v: &str) -> toml::Value {
    let wrapped = format!("v = {v}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    }
}

fn set_path(root: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut t = root;
    for p in parents {
        if p.is_empty() {
            return Err("empty key segment".into());
        }
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("{p} is not a table")),
        };
    }
    if last.is_empty() {
        return Err("empty key segment".into());
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// Merge the layers into `T` (whose `Default` supplies the defaults through `#[serde(default)]`).
/// `file` is the TOML text of the config file; `env` the process environment, of which only
/// variables starting with `env_prefix` and other than those in `env_ignore` are looked at;
/// `overrides` the `key.path=value` pairs from flags.
pub fn layered<T: DeserializeOwned>(
    file: Option<&str>,
    env: impl IntoIterator<Item = (String, String)>,
    env_prefix: &str,
    env_ignore: &[&str],
    overrides: &[String],
) -> Result<T, ConfigError> {
    let mut root: toml::Table = match file {
        Some(text) => {
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string().trim().into()))?
        }
        None => toml::Table::new(),
    };
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(env_prefix) && !env_ignore.contains(&k.as_str()))
        .collect();
    env.sort();
    for (var, value) in env {
        let path: Vec<String> = var[env_prefix.len()..]
            .to_ascii_lowercase()
            .split("__")
            .map(str::to_owned)
            .collect();
        set_path(&mut root, &path, literal(&value)).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    for arg in overrides {
        let Some((k, v)) = arg.split_once('=') else {
            return Err(ConfigError::Override {
                arg: arg.clone(),
                message: "no '='".into(),
            });
        };
        let path: Vec<String> = k.trim().split('.').map(str::to_owned).collect();
        set_path(&mut root, &path, literal(v.trim())).map_err(|message| ConfigError::Override {
            arg: arg.clone(),
            message,
        })?;
    }
    serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::key(
            if path == "." { "(top level)" } else { &path },
            e.into_inner().to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct C {
        name: String,
        port: u16,
        inner: Inner,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        ms: u64,
        on: bool,
    }

    impl Default for C {
        fn default() -> Self {
            Self {
                name: "default".into(),
                port: 1,
                inner: Inner { ms: 10, on: false },
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_file_env_flags_in_that_order() {
        let file = "name = \"file\"\nport = 2\n[inner]\nms = 20\n";
        let c: C = layered(Some(file), env(&[]), "X_", &[], &[]).unwrap();
        assert_eq!(
            (c.name.as_str(), c.port, c.inner.ms, c.inner.on),
            ("file", 2, 20, false)
        );
        let e = env(&[("X_PORT", "3"), ("X_INNER__ON", "true"), ("OTHER", "9")]);
        let c: C = layered(Some(file), e.clone(), "X_", &[], &[]).unwrap();
        assert_eq!((c.port, c.inner.on), (3, true));
        let c: C = layered(
            Some(file),
            e,
            "X_",
            &[],
            &["port=4".into(), "name=flag".into()],
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.port, c.inner.ms), ("flag", 4, 20));
    }

    #[test]
    fn errors_name_the_key_or_variable() {
        let e = layered::<C>(Some("prot = 1"), env(&[]), "X_", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
        let e = layered::<C>(None, env(&[("X_PORT", "big")]), "X_", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = layered::<C>(None, env(&[]), "X_", &[], &["port".into()]).unwrap_err();
        assert!(e.to_string().contains("key.path=value"), "{e}");
        let e = layered::<C>(Some("port = ["), env(&[]), "X_", &[], &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax(_)));
        let ignored: C = layered(
            None,
            env(&[("X_CONFIG", "f.toml")]),
            "X_",
            &["X_CONFIG"],
            &[],
        )
        .unwrap();
        assert_eq!(ignored, C::default());
    }
}
