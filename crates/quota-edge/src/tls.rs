//! TLS (rustls, ring): the REST listener's certificate, and how clients of
//! the gRPC service (the edge, the `token` commands, `quotad health`) trust
//! an `https://` one.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A certificate or key that cannot be used, said in one line.
#[derive(Debug)]
pub struct TlsError(String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The certificate chain of a PEM file, at least one certificate.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{what} is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError(format!("{what} holds no PEM certificate")));
    }
    Ok(chain)
}

/// TLS for the REST listener: HTTP/2 and HTTP/1.1 (ALPN) with one identity.
#[derive(Clone)]
pub struct ServerTls(pub(crate) TlsAcceptor);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// From a PEM certificate chain (leaf first) and its PEM private key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<ServerTls, TlsError> {
        let chain = certificates(cert_chain, "the TLS certificate file")?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| TlsError(format!("the TLS key file holds no usable private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS cannot be configured: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                TlsError(format!(
                    "the TLS certificate and key do not go together: {e}"
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls(TlsAcceptor::from(Arc::new(config))))
    }
}

/// Whom a client of an `https://` gRPC service trusts: a private CA
/// (`--ca-cert`), or by default the web's roots (webpki-roots).
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
}

impl ClientTls {
    /// Trust only the CA certificate(s) of this PEM file.
    pub fn with_ca_pem(pem: &[u8]) -> Result<ClientTls, TlsError> {
        certificates(pem, "the CA certificate file")?;
        Ok(ClientTls {
            ca: Some(Certificate::from_pem(pem)),
        })
    }

    fn config(&self) -> ClientTlsConfig {
        match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(ca.clone()),
            None => ClientTlsConfig::new().with_webpki_roots(),
        }
    }

    /// A TLS connection over `stream` to the server named `host` (a name or
    /// an IP address), trusting what this trusts: for an `https://` URL that
    /// is not a gRPC service, such as the edge's `/readyz`.
    pub async fn connect<S>(&self, host: &str, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in certificates(ca.get_ref(), "the CA certificate file")
                    .map_err(|e| invalid(e.to_string()))?
                {
                    roots.add(cert).map_err(|e| invalid(e.to_string()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| invalid(format!("{host:?} is not a server name")))?;
        TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
    }
}

/// A URL that is not one of a gRPC service: `http://HOST:PORT`,
/// `https://HOST:PORT` or `HOST:PORT` (plain) is expected.
#[derive(Debug)]
pub struct InvalidUrl(pub(crate) String);

impl std::fmt::Display for InvalidUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not a gRPC service URL: expected http://HOST:PORT, https://HOST:PORT or HOST:PORT (a port from 1 to 65535, no path)",
            self.0
        )
    }
}

impl std::error::Error for InvalidUrl {}

/// The endpoint of the gRPC service at `url`: plain for `http://` or a
/// bare `HOST:PORT` (as `--grpc-addr` names it), TLS trusting `tls` for
/// `https://`.
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, InvalidUrl> {
    let invalid = || InvalidUrl(url.to_owned());
    let uri: http::Uri = if url.contains("://") {
        url.parse()
    } else {
        format!("http://{url}").parse()
    }
    .map_err(|_| invalid())?;
    // A host, a port a socket can have (or the scheme's), no user info and
    // nothing after: gRPC names its own paths, so a path or query here is a
    // mistake.
    let port_ok = uri.authority().is_some_and(|authority| {
        // `Uri` keeps any text after the host's last `:` as the port; user
        // info, which gRPC never reads (and whose password lines quoting
        // the URL would show), fails the prefix test.
        let after_host = authority
            .as_str()
            .strip_prefix(authority.host())
            .unwrap_or("?");
        match after_host.strip_prefix(':') {
            None => after_host.is_empty(),
            Some(port) => port.parse::<u16>().is_ok_and(|port| port != 0),
        }
    });
    let origin_only = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if uri.host().is_none_or(str::is_empty) || !port_ok || !origin_only {
        return Err(invalid());
    }
    match uri.scheme_str() {
        Some("http") => Ok(Endpoint::from(uri)),
        Some("https") => Endpoint::from(uri)
            .tls_config(tls.config())
            .map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}
