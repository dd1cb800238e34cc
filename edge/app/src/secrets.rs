//! Development conveniences kept in the data directory: a generated signing secret and a
//! self-signed certificate. Both are refused nowhere but warned about loudly.

use anyhow::Context as _;
use edge_config::EdgeConfig;
use std::{io::Write as _, path::Path};

/// The URL-signing secret: `signed_url.secret` (or `SIGNED_URL_SECRET`) when set, otherwise a
/// random development secret generated once into `<data_dir>/dev-signing-secret`.
pub fn signing_secret(cfg: &EdgeConfig) -> anyhow::Result<String> {
    if let Some(s) = &cfg.signed_url.secret {
        return Ok(s.clone());
    }
    let path = cfg.resolve(&cfg.server.data_dir).join("dev-signing-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if s.len() >= 32 {
            return Ok(s);
        }
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, secret.as_bytes())?;
    tracing::warn!(path = %path.display(), "no signed_url.secret configured: generated a development secret (set SIGNED_URL_SECRET in production)");
    Ok(secret)
}

/// The TLS certificate and key (PEM): `[tls]` files when configured, otherwise a self-signed
/// certificate for `localhost` and `127.0.0.1`, generated once into `<data_dir>/tls/`.
pub(crate) fn tls_pem(cfg: &EdgeConfig) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    if let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) {
        let read = |p: &Path| {
            std::fs::read(cfg.resolve(p)).with_context(|| format!("cannot read {}", p.display()))
        };
        return Ok((read(cert)?, read(key)?));
    }
    let dir = cfg.resolve(&cfg.server.data_dir).join("tls");
    let (cert_path, key_path) = (dir.join("dev-cert.pem"), dir.join("dev-key.pem"));
    if let (Ok(c), Ok(k)) = (std::fs::read(&cert_path), std::fs::read(&key_path)) {
        return Ok((c, k));
    }
    let generated = rcgen::generate_simple_self_signed(vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ])
    .context("cannot generate a development certificate")?;
    let (cert, key) = (generated.cert.pem(), generated.key_pair.serialize_pem());
    write_private(&key_path, key.as_bytes())?;
    write_private(&cert_path, cert.as_bytes())?;
    tracing::warn!(cert = %cert_path.display(), "no [tls] certificate configured: generated a self-signed development certificate");
    Ok((cert.into_bytes(), key.into_bytes()))
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The HS256 secret of the JWT policy: `JWT_SECRET_KEY` from `vars` when set, otherwise a random
/// development secret generated once into `<data_dir>/dev-jwt-secret` (returned with `true`).
pub(crate) fn jwt_secret(
    cfg: &EdgeConfig,
    vars: &std::collections::HashMap<String, String>,
) -> anyhow::Result<(String, bool)> {
    if let Some(s) = vars.get("JWT_SECRET_KEY").filter(|s| !s.is_empty()) {
        return Ok((s.clone(), false));
    }
    let path = cfg.resolve(&cfg.server.data_dir).join("dev-jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if s.len() >= 32 {
            return Ok((s, true));
        }
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, secret.as_bytes())?;
    Ok((secret, true))
}

/// A development JWT (HS256, `sub` = `dev-user`, valid for a day) for the streaming API of an
/// edge running on a generated secret.
pub(crate) fn dev_token(secret: &str) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        iat: u64,
        exp: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: "dev-user",
        iat: now,
        exp: now + 24 * 3600,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
