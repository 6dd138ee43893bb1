//! The optional TLS listener: `[server.tls] cert = "...", key = "..."` (PEM files), served with
//! rustls (TLS 1.2 and 1.3, HTTP/2 or HTTP/1.1 by ALPN). The files are read when the
//! configuration is loaded, so a reload picks up renewed certificates, and a broken pair is a
//! configuration error that changes nothing.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Reads the certificate chain and key and builds the rustls server configuration.
pub fn load(tls: &TlsConfig) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            (
                "server.tls.cert",
                format!("cannot read {:?}: {e}", tls.cert),
            )
        })?;
    if certs.is_empty() {
        return Err((
            "server.tls.cert",
            format!("{:?} holds no PEM certificate", tls.cert),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| ("server.tls.key", format!("cannot read {:?}: {e}", tls.key)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("server.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            (
                "server.tls",
                format!("the certificate and key do not form a pair: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
