//! `edge policy keygen` and `edge policy sign`: ed25519 keys and module signatures
//! ([`edge_policy::signing`] holds the formats).

use crate::{Error, Result};
use edge_policy::signing;
use std::{
    ffi::OsString,
    io::Write as _,
    path::{Path, PathBuf},
};

/// The files of a new key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// `PREFIX.pem`: the private key (PKCS#8 PEM, mode 0600). Keep it off the edges.
    pub private: PathBuf,
    /// `PREFIX.pub`: the public key (SPKI PEM), for `[wasm] trusted_keys`.
    pub public: PathBuf,
}

/// A module just signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The signature file written (`MODULE.sig`).
    pub signature: PathBuf,
    /// The module's sha256 (hex).
    pub version: String,
}

/// Writes a new key pair to `PREFIX.pem` and `PREFIX.pub`; refuses to overwrite either.
pub fn keygen(prefix: &Path) -> Result<KeyPair> {
    let with = |ext: &str| {
        let mut name = OsString::from(prefix.as_os_str());
        name.push(ext);
        PathBuf::from(name)
    };
    let pair = KeyPair {
        private: with(".pem"),
        public: with(".pub"),
    };
    for path in [&pair.private, &pair.public] {
        if path.exists() {
            return Err(Error::Exists(path.clone()));
        }
    }
    let (private, public) = signing::generate_key();
    if private.is_empty() || public.is_empty() {
        return Err(Error::Runtime("cannot encode the new key pair".into()));
    }
    write_new(&pair.private, private.as_bytes(), 0o600)?;
    write_new(&pair.public, public.as_bytes(), 0o644)?;
    Ok(pair)
}

/// Creates `path` with `mode` (on Unix) and writes `bytes`; fails if it exists.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Exists(path.to_owned()),
        _ => Error::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    file.write_all(bytes).map_err(Error::io(path))
}

/// Signs `module` with the private key at `key` and writes `MODULE.sig` beside it (replacing an
/// older signature: re-signing after a rebuild is the normal case).
pub fn sign(key: &Path, module: &Path) -> Result<Signed> {
    let bytes = std::fs::read(module).map_err(Error::io(module))?;
    let text = signing::sign(key, &bytes)?;
    let signature = edge_config::signature_path(module);
    std::fs::write(&signature, text).map_err(Error::io(&signature))?;
    Ok(Signed {
        signature,
        version: signing::sha256_hex(&bytes),
    })
}
