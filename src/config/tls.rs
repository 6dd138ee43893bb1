//! TLS: the roots HTTPS upstreams are checked against ([`upstream_config`]), and the optional
//! TLS listener: `[server.tls] cert = "...", key = "..."` (PEM files), served with
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

/// The root certificates in a PEM file (`client.ca_file`): at least one, or why not.
pub fn extra_roots(file: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {file:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{file:?} holds no PEM certificate"));
    }
    Ok(certs)
}

/// The rustls client configuration for HTTPS upstreams: the public (webpki) roots, and those
/// of `ca_file` when set. ALPN is left to the connector (h2, then http/1.1).
pub fn upstream_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, (&'static str, String)> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ca_file {
        for cert in extra_roots(file).map_err(|why| ("client.ca_file", why))? {
            roots
                .add(cert)
                .map_err(|e| ("client.ca_file", format!("{file:?}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("client", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
