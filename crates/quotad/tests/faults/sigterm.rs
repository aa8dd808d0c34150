//! SIGTERM under load: 16 keep-alive clients send requests back to back;
//! every request the server received gets its whole answer, and it exits 0.

use crate::helpers::Server;
use quota_service::testing::TestDb;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const CLIENTS: usize = 16;

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Whole 200 answers.
    answered: u64,
    /// Whole answers with another status.
    failed: Vec<String>,
    /// Answers cut short: a status line without all its headers or body.
    truncated: Vec<String>,
}

/// One whole answer, `None` when the connection was closed before any byte
/// of it (the request was not taken), or an error for a partial one.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Result<Option<(u16, bool)>, String> {
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Ok(None),
        Err(e) if status_line.is_empty() => {
            return match e.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Ok(None),
                _ => Err(format!("no answer: {e}")),
            };
        }
        Err(e) => return Err(format!("status line cut short: {e}")),
        Ok(_) => {}
    }
    let status: u16 = status_line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut close) = (None, false);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return Err(format!("headers cut short after {status_line:?}")),
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse::<usize>().ok();
                }
                close |= lower.starts_with("connection:") && lower.contains("close");
            }
        }
    }
    let length = length.ok_or("no content-length")?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body cut short ({length} bytes announced): {e}"))?;
    Ok(Some((status, close)))
}

/// Sends requests back to back on one connection until the server closes it.
fn client(http: SocketAddr, key: String, sent: Arc<AtomicU64>) -> Seen {
    let mut seen = Seen::default();
    let stream = TcpStream::connect(http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let request = format!(
        "GET /v1/dashboard/billing/subscription HTTP/1.1\r\nHost: {http}\r\n\
         Authorization: Bearer {key}\r\n\r\n"
    );
    for _ in 0..100_000 {
        if writer.write_all(request.as_bytes()).is_err() {
            break;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        match read_answer(&mut reader) {
            Ok(None) => break,
            Ok(Some((200, close))) => {
                seen.answered += 1;
                if close {
                    break;
                }
            }
            Ok(Some((status, _))) => {
                seen.failed.push(format!("status {status}"));
                break;
            }
            Err(e) => {
                seen.truncated.push(e);
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_request_received() {
    let db = TestDb::sqlite().await;
    let mut server = Server::start(&db.url).await;
    let (key, _) = server.create_token(500_000).await;
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (key, sent) = (key.clone(), Arc::clone(&sent));
            let http = server.http;
            std::thread::spawn(move || client(http, key, sent))
        })
        .collect();
    // Under load: every client has had answers and keeps sending.
    let started = std::time::Instant::now();
    while sent.load(Ordering::Relaxed) < (CLIENTS * 20) as u64 {
        assert!(started.elapsed() < Duration::from_secs(30), "no load");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.signal("TERM");
    let status = tokio::task::block_in_place(|| server.wait(Duration::from_secs(25)));
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let answered: u64 = seen.iter().map(|s| s.answered).sum();
    let failed: Vec<&String> = seen.iter().flat_map(|s| &s.failed).collect();
    let truncated: Vec<&String> = seen.iter().flat_map(|s| &s.truncated).collect();
    assert!(failed.is_empty(), "failed answers: {failed:?}");
    assert!(truncated.is_empty(), "truncated answers: {truncated:?}");
    assert!(
        answered >= (CLIENTS * 20) as u64 - CLIENTS as u64,
        "{answered}"
    );
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.log());
}
