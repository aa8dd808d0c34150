//! A database that goes away behind the whole chain.

use crate::helpers::*;

use axum::http::StatusCode;
use quota_edge::{Upstream, app};
use quota_service::store::NewToken;
use quota_service::testing::{TestDb, TestServer, test_config};
use tokio::net::TcpListener;

/// A TCP proxy on 127.0.0.1:0 to `target`. [`Proxy::cut`] closes every
/// connection through it and every later one at once, as a database that
/// goes away would; the port stays held, so nothing else answers on it.
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn to(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, is_cut) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *is_cut.borrow() {
                    continue; // dropped: closed at once
                }
                let mut is_cut = is_cut.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = is_cut.wait_for(|cut| *cut) => {}
                        }
                    }
                });
            }
        });
        Proxy { port, cut, task }
    }

    /// From now on, every connection through the proxy is closed.
    fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_503_not_a_timeout() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    // The same database, reached through a proxy that can be pulled.
    let target = {
        let authority = db
            .url
            .split_once("://")
            .unwrap()
            .1
            .split_once('/')
            .unwrap()
            .0;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        tokio::net::lookup_host(host_port)
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = Proxy::to(target).await;
    let proxied = db.url.replacen(
        &format!(":{}/", target.port()),
        &format!(":{}/", proxy.port),
        1,
    );
    let proxied = if proxied == db.url {
        db.url
            .replacen("127.0.0.1/", &format!("127.0.0.1:{}/", proxy.port), 1)
    } else {
        proxied
    };
    let store = quota_service::Store::connect(&proxied).await.unwrap();
    let now = quota_service::domain::unix_now();
    let new = NewToken {
        quota: 2_500_000,
        ..Default::default()
    };
    let (_, key) = store.create_token(new, now).await.unwrap();
    // Every read reaches the database: none is answered from the cache.
    let config = quota_service::ServiceConfig {
        cache: quota_service::CacheConfig::OFF,
        ..test_config()
    };
    let server = TestServer::spawn(store, config).await;
    let router = app(Upstream::lazy(&server.url()).unwrap());
    let bearer = format!("Bearer {}", key.expose());
    let response = send(&router, "GET", SUBSCRIPTION, &[("authorization", &bearer)]).await;
    assert_eq!(response.status(), StatusCode::OK);

    proxy.cut();
    let started = std::time::Instant::now();
    let response = send(&router, "GET", SUBSCRIPTION, &[("authorization", &bearer)]).await;
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "service_unavailable",
    )
    .await;
    // The contract says within 3 s; the margin is for a loaded machine.
    assert!(
        started.elapsed() <= std::time::Duration::from_millis(3_500),
        "{:?}",
        started.elapsed()
    );
}
