//! TLS with certificates made here (rcgen): REST served over TLS, and the
//! edge calling an `https://` upstream, trusting a private CA and refusing
//! one it was not given.

use crate::helpers::*;
use crate::pki::{Pki, make_pki};
use quota::pb::quota_service_server::QuotaServiceServer;
use quota_edge::{ClientTls, EdgeConfig, ServerTls, Upstream, app};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, ServerTlsConfig};
use tower::ServiceExt;

#[tokio::test]
async fn rest_over_tls() {
    let pki = make_pki();
    let tls = ServerTls::from_pem(pki.cert.as_bytes(), pki.key.as_bytes()).unwrap();
    let edge = spawn_edge_with(EdgeConfig::default(), None, Some(tls)).await;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(edge.addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let reply = exchange(stream, &subscription(VALID_KEY)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Plain HTTP on the TLS port is not served.
    let plain = TcpStream::connect(edge.addr).await.unwrap();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::spawn(async move {
            let mut plain = plain;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = plain.write_all(&subscription(VALID_KEY)).await;
            let mut buf = Vec::new();
            let _ = plain.read_to_end(&mut buf).await;
            assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
        }),
    )
    .await;
}

/// A fake upstream served over TLS with `pki`'s certificate; its URL.
async fn tls_upstream(pki: &Pki) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let identity = Identity::from_pem(&pki.cert, &pki.key);
    let fake = Fake {
        calls: Default::default(),
        gate: None,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(QuotaServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

async fn status_through(router: axum::Router) -> u16 {
    let request = axum::http::Request::get("/v1/dashboard/billing/subscription")
        .header("authorization", format!("Bearer {VALID_KEY}"))
        .body(axum::body::Body::empty())
        .unwrap();
    router.oneshot(request).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_edge_calls_an_https_upstream_trusting_its_ca_only() {
    let pki = make_pki();
    let url = tls_upstream(&pki).await;
    let trusted = ClientTls::with_ca_pem(pki.ca.as_bytes()).unwrap();
    let router = app(Upstream::lazy_with(&url, &trusted).unwrap());
    assert_eq!(status_through(router).await, 200);
    // Another CA: the upstream cannot be reached (503), never 500.
    let wrong = ClientTls::with_ca_pem(make_pki().ca.as_bytes()).unwrap();
    let router = app(Upstream::lazy_with(&url, &wrong).unwrap());
    assert_eq!(status_through(router).await, 503);
    // The web's roots do not know a private CA either.
    let router = app(Upstream::lazy(&url).unwrap());
    assert_eq!(status_through(router).await, 503);
}

#[test]
fn a_file_without_a_certificate_is_one_clear_error() {
    let e = ClientTls::with_ca_pem(b"not a certificate").unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    let pki = make_pki();
    let e = ServerTls::from_pem(pki.cert.as_bytes(), b"").unwrap_err();
    assert!(e.to_string().contains("private key"), "{e}");
}
