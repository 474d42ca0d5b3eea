//! `firstmile keygen`: make the director's Ed25519 token key pair.
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
}

pub fn run(a: KeygenArgs) -> Result<(), Failure> {
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
