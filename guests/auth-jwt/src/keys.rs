//! Public keys (never HMAC secrets) from a PEM or a JWKS document, and the choice of one for a
//! token.

use crate::settings::family;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::str::FromStr;

/// One verification key and the algorithms it may verify.
pub(crate) struct PublicKey {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// The asymmetric keys of one source. Symmetric (`oct`) JWKs are never loaded: HS* tokens are
/// verified with the `secret` config only.
pub(crate) struct KeySet {
    keys: Vec<PublicKey>,
}

/// Checks that `key` can build a verifier for `alg` (an EC point on the right curve, a 32-byte
/// Ed25519 key). RSA keys are only checked when a token is verified.
fn usable(key: &DecodingKey, alg: Algorithm) -> bool {
    if family(alg) == AlgorithmFamily::Ed && key.as_bytes().len() != 32 {
        // jsonwebtoken slices `[..32]` without a length check: never hand it a short key.
        return false;
    }
    jsonwebtoken::crypto::verify("", b"", key, alg).is_ok()
}

/// The curve-specific algorithm of an uncompressed or compressed SEC1 point.
fn ec_alg(point: &[u8]) -> Option<Algorithm> {
    match point.len() {
        65 | 33 => Some(Algorithm::ES256),
        97 | 49 => Some(Algorithm::ES384),
        _ => None,
    }
}

impl KeySet {
    /// One `PUBLIC KEY` (or `RSA PUBLIC KEY`) PEM block: RSA, P-256, P-384 or Ed25519.
    pub(crate) fn from_pem(text: &str) -> Result<KeySet, String> {
        let block = pem::parse(text.trim()).map_err(|e| format!("not a PEM block ({e})"))?;
        if !matches!(block.tag(), "PUBLIC KEY" | "RSA PUBLIC KEY") {
            return Err(format!(
                "expected a PUBLIC KEY block, found {:?}",
                block.tag()
            ));
        }
        let bytes = text.trim().as_bytes();
        let (key, algs) = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            (key, AlgorithmFamily::Rsa.algorithms().to_vec())
        } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            let alg = ec_alg(key.as_bytes()).ok_or("unsupported elliptic curve")?;
            (key, vec![alg])
        } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            (key, vec![Algorithm::EdDSA])
        } else {
            return Err("not an RSA, EC or Ed25519 public key".into());
        };
        if !usable(&key, algs[0]) {
            return Err("the key is not valid for its algorithm".into());
        }
        Ok(KeySet {
            keys: vec![PublicKey {
                kid: None,
                algs,
                key,
            }],
        })
    }

    /// A JWKS document (`{"keys": [...]}`). Keys that are not signature-verification keys, or
    /// that this policy cannot use, are skipped; a set with no usable key is an error.
    pub(crate) fn from_jwks(doc: &str) -> Result<KeySet, String> {
        let value: serde_json::Value =
            serde_json::from_str(doc).map_err(|e| format!("not JSON ({e})"))?;
        let entries = value
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("no `keys` array")?;
        let keys: Vec<PublicKey> = entries.iter().filter_map(Self::from_jwk).collect();
        if keys.is_empty() {
            return Err("no usable signature key".into());
        }
        Ok(KeySet { keys })
    }

    fn from_jwk(value: &serde_json::Value) -> Option<PublicKey> {
        let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
        let common = &jwk.common;
        if matches!(common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return None;
        }
        if matches!(common.key_operations, Some(ref ops) if !ops.contains(&KeyOperations::Verify)) {
            return None;
        }
        let mut algs = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                vec![Algorithm::EdDSA]
            }
            _ => return None,
        };
        if let Some(declared) = common.key_algorithm {
            let alg = Algorithm::from_str(&declared.to_string()).ok()?;
            if !algs.contains(&alg) {
                return None;
            }
            algs = vec![alg];
        }
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        if !usable(&key, algs[0]) {
            return None;
        }
        Some(PublicKey {
            kid: common.key_id.clone(),
            algs,
            key,
        })
    }

    /// The key for a token signed with `alg`: the one whose `kid` matches; without a `kid` (or
    /// for a source whose only key has none, like a PEM), the only key that can verify `alg`.
    pub(crate) fn select(&self, alg: Algorithm, kid: Option<&str>) -> Option<&DecodingKey> {
        let candidates: Vec<&PublicKey> =
            self.keys.iter().filter(|k| k.algs.contains(&alg)).collect();
        let by_kid = kid.and_then(|kid| candidates.iter().find(|k| k.kid.as_deref() == Some(kid)));
        let only = match candidates.as_slice() {
            [one] if kid.is_none() || one.kid.is_none() => Some(one),
            _ => None,
        };
        by_kid.or(only).map(|k| &k.key)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}
