//! A TCP proxy in front of a database server, which a test can cut (every
//! open connection closed, new ones closed as soon as they arrive) and
//! restore.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// The proxy; it stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Proxies 127.0.0.1, port 0, to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = watch::channel(true);
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::clone(&links);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut links = accepted.lock().unwrap();
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
            }
        });
        Proxy {
            addr,
            up,
            links,
            accept,
        }
    }

    /// Cuts the database off: open connections are closed, new ones too.
    pub fn cut(&self) {
        self.up.send_replace(false);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// `url` (`scheme://user@host:port/db`) with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
        format!("{scheme}://{}{}{path}", user.unwrap_or_default(), self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The server address of a database URL (`scheme://user@host:port/db`).
pub async fn server_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.contains(':') {
        host.to_owned()
    } else if url.starts_with("mysql:") {
        format!("{host}:3306")
    } else {
        format!("{host}:5432")
    };
    tokio::net::lookup_host(host)
        .await
        .unwrap()
        .next()
        .expect("the database host resolves")
}
