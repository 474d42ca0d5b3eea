//! `firstmile keygen`: make the director's Ed25519 token key pair; or, with `--entry ID`, entry
//! server ID's own credential (derived from the director's `auth.entry_key`, given with
//! `--entry-key` or `FIRSTMILE_DIRECTOR_AUTH__ENTRY_KEY`); or, with `--stream-key`, a random
//! stream key and its SHA-256 for `[[publish.streams]]`.
//!
//! Writes `PREFIX.key` (PKCS#8 PEM private key, mode 0600, for the director's
//! `tokens.signing_key_file`) and `PREFIX.pub` (SPKI PEM public key, for entry servers). Without
//! `--out`, prints both to standard output.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::Failure;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write PREFIX.key and PREFIX.pub instead of printing.
    #[arg(long, value_name = "PREFIX")]
    pub out: Option<PathBuf>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Print this entry server's own credential (for its `credential` setting or
    /// `FIRSTMILE_ENTRY_CREDENTIAL`) instead of making a key pair.
    #[arg(long, value_name = "ID", conflicts_with_all = ["out", "stream_key"])]
    pub entry: Option<proto::ServerId>,
    /// The director's `auth.entry_key` the credential is derived from.
    #[arg(
        long,
        env = "FIRSTMILE_DIRECTOR_AUTH__ENTRY_KEY",
        hide_env_values = true,
        value_name = "KEY",
        requires = "entry"
    )]
    pub entry_key: Option<String>,
    /// Print a new random stream key and its SHA-256 (for `[[publish.streams]] key_sha256`).
    #[arg(long, conflicts_with_all = ["out", "entry"])]
    pub stream_key: bool,
}

pub fn run(a: KeygenArgs) -> Result<(), Failure> {
    if let Some(id) = &a.entry {
        let Some(k) = a.entry_key.as_deref().filter(|k| k.chars().count() >= 32) else {
            return Err(Failure::usage(anyhow::anyhow!(
                "--entry needs the director's entry key (at least 32 characters): --entry-key \
                 or FIRSTMILE_DIRECTOR_AUTH__ENTRY_KEY"
            )));
        };
        println!("{}", token::entry_credential(k, id));
        return Ok(());
    }
    if a.stream_key {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
        let key = proto::StreamKey::from_random(b);
        let hex: String = key.hash().iter().map(|b| format!("{b:02x}")).collect();
        println!("stream key: {}", key.expose());
        println!("key_sha256: {hex}");
        return Ok(());
    }
    let key = token::SigningKey::generate(&mut rand::rng());
    let private = key.to_pem();
    let public = key.public_key().to_pem();
    let Some(prefix) = a.out else {
        print!("{private}{public}");
        return Ok(());
    };
    let key_path = prefix.with_extension("key");
    let pub_path = prefix.with_extension("pub");
    for p in [&key_path, &pub_path] {
        if p.exists() && !a.force {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} exists; pass --force to overwrite",
                p.display()
            )));
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(&key_path)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .with_context(|| format!("cannot write {}", key_path.display()))
        .map_err(Failure::other)?;
    std::fs::write(&pub_path, public.as_bytes())
        .with_context(|| format!("cannot write {}", pub_path.display()))
        .map_err(Failure::other)?;
    eprintln!(
        "wrote {} (private, for the director) and {} (public, for entry servers)",
        key_path.display(),
        pub_path.display()
    );
    Ok(())
}
