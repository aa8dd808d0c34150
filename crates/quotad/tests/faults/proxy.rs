//! A TCP proxy in front of a database server, which a test can cut (every
//! open connection closed, new ones closed as soon as they arrive), stall
//! (every connection left open, new ones accepted, and not a byte forwarded
//! either way: a frozen server, a network that drops every packet) and
//! restore.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// The proxy; it stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    flowing: watch::Sender<bool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Proxies 127.0.0.1, port 0, to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = watch::channel(true);
        let (flowing, flowing_rx) = watch::channel(true);
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::clone(&links);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut flowing = flowing_rx.clone();
                let link = tokio::spawn(async move {
                    // Stalled, a new connection is accepted and left unanswered.
                    if flowing.wait_for(|f| *f).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pipe(client_read, server_write, flowing.clone()),
                        pipe(server_read, client_write, flowing),
                    );
                });
                let mut links = accepted.lock().unwrap();
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
            }
        });
        Proxy {
            addr,
            up,
            flowing,
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

    /// Stalls the database: connections stay open, new ones are accepted,
    /// and no byte passes either way until [`Proxy::restore`] or [`Proxy::cut`].
    pub fn stall(&self) {
        self.flowing.send_replace(false);
    }

    /// Lets connections through again, and bytes on the open ones.
    pub fn restore(&self) {
        self.up.send_replace(true);
        self.flowing.send_replace(true);
    }

    /// `url` (`scheme://user@host:port/db`) with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
        format!("{scheme}://{}{}{path}", user.unwrap_or_default(), self.addr)
    }
}

/// Copies `from` to `to` while `flowing`; stalled, it neither reads nor
/// writes (bytes read just before are held back too), so what is sent waits
/// in the kernel's buffers as it would on the way to a frozen server.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flowing: watch::Receiver<bool>) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        if flowing.wait_for(|f| *f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            // Only whether it stalled: the value's guard must not be held.
            _ = async { flowing.wait_for(|f| !*f).await.is_ok() } => continue,
        };
        let flows = flowing.wait_for(|f| *f).await.is_ok();
        if !flows || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
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
