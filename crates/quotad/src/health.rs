//! `quotad health`: is a server ready? For container health checks, which
//! must probe readiness, not an open port (the image has no curl or grpcurl).

use anyhow::{Result, anyhow, bail};
use quota_edge::ClientTls;
use quota_edge::tls::endpoint;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Asks the gRPC server or the HTTP URL given, over TLS for `https://`
/// (trusting `tls`); `Ok` (exit 0) when ready.
pub async fn run(
    grpc: Option<String>,
    http: Option<String>,
    tls: ClientTls,
    timeout: Duration,
) -> Result<ExitCode> {
    let check = async {
        match (grpc, http) {
            (Some(url), _) => grpc_ready(&url, &tls).await,
            (_, Some(url)) => http_ready(&url, &tls).await,
            (None, None) => bail!("give --grpc URL or --http URL"),
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow!("not ready: no answer within {timeout:?}"))??;
    Ok(ExitCode::SUCCESS)
}

/// `grpc.health.v1.Health/Check` of the server as a whole (service "").
async fn grpc_ready(url: &str, tls: &ClientTls) -> Result<()> {
    let channel = endpoint(url, tls)
        .map_err(|e| anyhow!("--grpc {e}"))?
        .connect()
        .await
        .map_err(|e| anyhow!("not ready: cannot connect to {url}: {}", innermost(&e)))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| {
            match crate::token::unanswered_tip(url, &s, "--grpc names the gRPC listener") {
                Some(tip) => anyhow!("not ready: {tip}"),
                None => anyhow!("not ready: {url} answered {}: {}", s.code(), s.message()),
            }
        })?
        .into_inner();
    match ServingStatus::try_from(answer.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => bail!("not ready: {url} reports {}", other.as_str_name()),
        Err(_) => bail!("not ready: {url} reports status {}", answer.status),
    }
}

/// `GET url` over HTTP/1.1, or over TLS for `https://`: ready on a 2xx status.
async fn http_ready(url: &str, tls: &ClientTls) -> Result<()> {
    let (rest, secure) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => bail!("--http {url:?}: expected http://HOST:PORT/PATH or https://HOST:PORT/PATH"),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let (host, target) = match authority.rsplit_once(':') {
        Some((host, _)) if !authority.ends_with(']') => (host, authority.to_owned()),
        _ => (
            authority,
            format!("{authority}:{}", if secure { 443 } else { 80 }),
        ),
    };
    let stream = tokio::net::TcpStream::connect(&target)
        .await
        .map_err(|e| anyhow!("not ready: cannot connect to {authority}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let head = if secure {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tls.connect(host, stream).await.map_err(|e| {
            anyhow!(
                "not ready: cannot connect to {authority}: {}",
                innermost(&e)
            )
        })?;
        status_line(stream, &request).await?
    } else {
        status_line(stream, &request).await?
    };
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .ok_or_else(|| anyhow!("not ready: {url} did not answer HTTP"))?;
    if status.starts_with('2') {
        Ok(())
    } else {
        bail!("not ready: {url} answered {status}")
    }
}

/// Sends `request` on `stream` and reads the start of the answer's status line.
async fn status_line<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<String> {
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(String::from_utf8_lossy(&head[..read]).into_owned())
}

fn innermost(err: &dyn std::error::Error) -> String {
    let mut last = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        last = e.to_string();
        cur = e.source();
    }
    last
}
