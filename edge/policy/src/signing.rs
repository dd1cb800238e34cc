//! Signed modules: ed25519 signatures over a module's bytes, kept beside it in `MODULE.sig`.
//!
//! ```text
//! edge-policy-signature v1
//! sha256:<hex of the module>
//! ed25519:<base64 signature of the module bytes>
//! ```
//!
//! Keys are PKCS#8 / SPKI PEM files, so `openssl pkey` can read them too.

use ed25519_dalek::{
    Signature, Signer, SigningKey, Verifier, VerifyingKey,
    pkcs8::{
        DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey,
        spki::der::pem::LineEnding,
    },
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const HEADER: &str = "edge-policy-signature v1";

/// Problems with keys or signatures.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key file could not be read or parsed.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The module has no signature file although trusted keys are configured.
    #[error(
        "{module}: unsigned module refused (trusted keys are configured and {sig} does not exist; sign it with `edge policy sign`)"
    )]
    Unsigned {
        /// The module.
        module: PathBuf,
        /// The expected signature file.
        sig: PathBuf,
    },
    /// The signature file is malformed, is for other bytes, or no trusted key made it.
    #[error("{module}: bad signature: {reason}")]
    BadSignature {
        /// The module.
        module: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The sha256 of `bytes` in hex: a module's version.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A new key pair as (private PKCS#8 PEM, public SPKI PEM).
pub fn generate_key() -> (String, String) {
    let mut seed = [0u8; 32];
    getrandom_seed(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map(|p| p.to_string())
        .unwrap_or_default();
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap_or_default();
    (private, public)
}

fn getrandom_seed(seed: &mut [u8; 32]) {
    use rand_core::{OsRng, RngCore};
    OsRng.fill_bytes(seed);
}

/// The signature file text for `module` bytes, signed with the private key PEM at `key`.
pub fn sign(key: &Path, module: &[u8]) -> Result<String, SigningError> {
    let pem = std::fs::read_to_string(key).map_err(|e| SigningError::Key {
        path: key.to_owned(),
        reason: format!("cannot read: {e}"),
    })?;
    let key_pair = SigningKey::from_pkcs8_pem(&pem).map_err(|e| SigningError::Key {
        path: key.to_owned(),
        reason: format!("not an ed25519 private key (PKCS#8 PEM): {e}"),
    })?;
    let sig = key_pair.sign(module);
    Ok(format!(
        "{HEADER}\nsha256:{}\ned25519:{}\n",
        sha256_hex(module),
        base64_encode(&sig.to_bytes())
    ))
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The keys modules must be signed by. Empty: signatures are not required.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// Reads public key PEM files.
    pub fn load(paths: &[PathBuf]) -> Result<Self, Vec<SigningError>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|pem| {
                    VerifyingKey::from_public_key_pem(&pem)
                        .map_err(|e| format!("not an ed25519 public key (SPKI PEM): {e}"))
                });
            match parsed {
                Ok(k) => keys.push(k),
                Err(reason) => errors.push(SigningError::Key {
                    path: path.clone(),
                    reason,
                }),
            }
        }
        if errors.is_empty() {
            Ok(Self(keys))
        } else {
            Err(errors)
        }
    }

    /// Whether any key is configured (and so signatures are required).
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Checks `bytes` (read from `module`) against its signature file, when signatures are required.
    pub fn check(&self, module: &Path, bytes: &[u8]) -> Result<(), SigningError> {
        if !self.required() {
            return Ok(());
        }
        let sig_path = edge_config::signature_path(module);
        let text = std::fs::read_to_string(&sig_path).map_err(|_| SigningError::Unsigned {
            module: module.to_owned(),
            sig: sig_path.clone(),
        })?;
        let bad = |reason: &str| SigningError::BadSignature {
            module: module.to_owned(),
            reason: reason.to_owned(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad("not an edge policy signature file"));
        }
        let digest = lines
            .next()
            .and_then(|l| l.strip_prefix("sha256:"))
            .ok_or_else(|| bad("missing sha256 line"))?;
        if digest != sha256_hex(bytes) {
            return Err(bad(
                "the signature is for other module bytes (re-sign after rebuilding)",
            ));
        }
        let sig = lines
            .next()
            .and_then(|l| l.strip_prefix("ed25519:"))
            .and_then(|b| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(b).ok()
            })
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| bad("missing or malformed ed25519 line"))?;
        if self.0.iter().any(|k| k.verify(bytes, &sig).is_ok()) {
            Ok(())
        } else {
            Err(bad("not signed by any trusted key"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate_key();
        let (_, other_public) = generate_key();
        std::fs::write(dir.path().join("k.pem"), private).unwrap();
        std::fs::write(dir.path().join("k.pub"), public).unwrap();
        std::fs::write(dir.path().join("o.pub"), other_public).unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, b"\0asm module").unwrap();
        let trusted = TrustedKeys::load(&[dir.path().join("k.pub")]).unwrap();
        let err = trusted.check(&module, b"\0asm module").unwrap_err();
        assert!(matches!(err, SigningError::Unsigned { .. }), "{err}");
        let sig = sign(&dir.path().join("k.pem"), b"\0asm module").unwrap();
        std::fs::write(edge_config::signature_path(&module), &sig).unwrap();
        trusted.check(&module, b"\0asm module").unwrap();
        let err = trusted.check(&module, b"\0asm tampered").unwrap_err();
        assert!(err.to_string().contains("other module bytes"), "{err}");
        let other = TrustedKeys::load(&[dir.path().join("o.pub")]).unwrap();
        let err = other.check(&module, b"\0asm module").unwrap_err();
        assert!(
            err.to_string().contains("not signed by any trusted key"),
            "{err}"
        );
        assert!(!TrustedKeys::default().required());
        let err = TrustedKeys::load(&[dir.path().join("k.pem")]).unwrap_err();
        assert!(
            err[0].to_string().contains("not an ed25519 public key"),
            "{}",
            err[0]
        );
    }
}
