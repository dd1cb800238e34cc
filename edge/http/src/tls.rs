use pingora_core::{
    listeners::tls::TlsSettings,
    tls::{
        pkey::PKey,
        ssl::{SslAcceptor, SslMethod, SslMode},
        x509::X509,
    },
};

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// TLS settings (Mozilla intermediate profile) for a PEM certificate chain and key, offering
/// HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_settings(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsSettings, TlsError> {
    fn err(what: &'static str) -> impl Fn(pingora_core::tls::error::ErrorStack) -> TlsError {
        move |e| TlsError(format!("{what}: {e}"))
    }
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(err("acceptor"))?;
    let mut chain = X509::stack_from_pem(cert_pem)
        .map_err(err("certificate"))?
        .into_iter();
    let leaf = chain
        .next()
        .ok_or_else(|| TlsError("certificate: no certificate in PEM".into()))?;
    builder.set_certificate(&leaf).map_err(err("certificate"))?;
    for extra in chain {
        builder
            .add_extra_chain_cert(extra)
            .map_err(err("certificate chain"))?;
    }
    let key = PKey::private_key_from_pem(key_pem).map_err(err("private key"))?;
    builder.set_private_key(&key).map_err(err("private key"))?;
    builder
        .check_private_key()
        .map_err(err("key does not match certificate"))?;
    // OpenSSL's record buffers (about 34 KiB a connection) are returned while a connection is
    // idle and taken again for its next record, as nginx does: an idle `wss://` signaling
    // connection or keep-alive holds none.
    builder.set_mode(SslMode::RELEASE_BUFFERS);
    let mut settings: TlsSettings = builder.into();
    settings.enable_h2();
    Ok(settings)
}
