//! The REST listener: hyper's HTTP/1.1 and HTTP/2 server with bounded
//! request heads, optionally behind TLS, each request told its peer address;
//! connections whose peer has gone are found and closed ([`quota::liveness`]).

use crate::limits::{FIRST_BYTE_TIMEOUT, HTTP_BUFFER_BYTES, MAX_URI_BYTES, uri_bytes};
use crate::tls::ServerTls;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Uri;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use quota::liveness;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, app, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(HTTP_BUFFER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HTTP_BUFFER_BYTES as u32)
        .keep_alive_interval(Some(liveness::HTTP2_PING_INTERVAL))
        .keep_alive_timeout(liveness::HTTP2_PING_TIMEOUT);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(liveness::TCP_KEEPALIVE_IDLE)
        .with_interval(liveness::TCP_KEEPALIVE_INTERVAL)
        .with_retries(liveness::TCP_KEEPALIVE_RETRIES);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => match tokio::time::timeout(FIRST_BYTE_TIMEOUT, spoken(&stream)).await {
                    Ok(()) => serve_connection(&builder, watcher, stream, app, peer).await,
                    Err(_) => tracing::debug!(%peer, "connection silent; closed"),
                },
                Some(tls) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.0.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, watcher, stream, app, peer).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Waits until a connection has shown which HTTP it speaks, as hyper-util
/// reads it with no time limit of its own: bytes that are not the start of
/// HTTP/2's preface (HTTP/1.1, whose head has hyper's time limit), the whole
/// preface, or its end. Nothing is consumed.
async fn spoken(stream: &tokio::net::TcpStream) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut seen = [0; PREFACE.len()];
    loop {
        match stream.peek(&mut seen).await {
            Ok(n) if n > 0 && n < PREFACE.len() && seen[..n] == PREFACE[..n] => {
                // Part of the preface: the rest is awaited. A peek returns
                // at once while unread bytes wait, so it is asked again
                // after a moment, not in a tight loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => return,
        }
    }
}

async fn serve_connection<IO>(
    builder: &Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    stream: IO,
    app: Router,
    peer: SocketAddr,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(uri) = canonical(request.uri()) {
            *request.uri_mut() = uri;
        }
        app.clone().oneshot(request)
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// `uri` with its path's runs of slashes made one and a trailing slash
/// dropped, or `None` when it has neither (a byte scan, no allocation) or
/// is over the URI bound (refused as it came). A client whose base URL ends
/// in a slash (`http://host/v1/`) asks for `/v1//dashboard/billing/…`, and
/// one that copies a route may keep its slash: both mean the route.
fn canonical(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let untidy = path.as_bytes().windows(2).any(|pair| pair == b"//")
        || (path.len() > 1 && path.ends_with('/'));
    if !untidy || uri_bytes(uri) > MAX_URI_BYTES {
        return None;
    }
    let mut tidy = String::with_capacity(path.len() + uri.query().map_or(0, |q| q.len() + 1));
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        tidy.push('/');
        tidy.push_str(segment);
    }
    if tidy.is_empty() {
        tidy.push('/');
    }
    if let Some(query) = uri.query() {
        tidy.push('?');
        tidy.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(tidy.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Errors of `accept` that concern one connection are skipped; others (out
/// of file descriptors) are logged and waited out, as axum::serve does.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_made_canonical_only_when_untidy() {
        for (given, wanted) in [
            ("/v1/dashboard/billing/subscription", None),
            ("/", None),
            (
                "/v1//dashboard/billing/subscription",
                Some("/v1/dashboard/billing/subscription"),
            ),
            (
                "//v1/dashboard/billing/usage?start_date=2026-01-01",
                Some("/v1/dashboard/billing/usage?start_date=2026-01-01"),
            ),
            (
                "/dashboard/billing/subscription/",
                Some("/dashboard/billing/subscription"),
            ),
            (
                "/v1///dashboard//billing/usage//?a=b//c",
                Some("/v1/dashboard/billing/usage?a=b//c"),
            ),
            ("//", Some("/")),
            ("http://host:8080/v1//x/", Some("http://host:8080/v1/x")),
        ] {
            let uri: Uri = given.parse().unwrap();
            let got = canonical(&uri).map(|u| u.to_string());
            assert_eq!(got.as_deref(), wanted, "{given}");
        }
        // Over the URI bound by one byte, counted as the bound counts it
        // (the `?`, and the scheme and authority HTTP/2 sends): refused as
        // it came, not tidied under the bound.
        for prefix in ["", "http://h:1"] {
            let at_bound = format!("{prefix}/v1//x?");
            let pad = MAX_URI_BYTES + 1 - at_bound.len();
            let over: Uri = format!("{at_bound}{}", "a".repeat(pad)).parse().unwrap();
            assert_eq!(uri_bytes(&over), MAX_URI_BYTES + 1);
            assert_eq!(canonical(&over), None, "{prefix}");
            let within: Uri = format!("{at_bound}{}", "a".repeat(pad - 1))
                .parse()
                .unwrap();
            assert!(canonical(&within).is_some(), "{prefix}");
        }
    }
}
