//! `quotad health`: is a server ready? For container health checks, which
//! must probe readiness, not an open port (the image has no curl or grpcurl).

use anyhow::{Context, Result, anyhow, bail};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Asks the gRPC server or the HTTP URL given; `Ok` (exit 0) when ready.
pub async fn run(
    grpc: Option<String>,
    http: Option<String>,
    timeout: Duration,
) -> Result<ExitCode> {
    let check = async {
        match (grpc, http) {
            (Some(url), _) => grpc_ready(&url).await,
            (_, Some(url)) => http_ready(&url).await,
            (None, None) => bail!("give --grpc URL or --http URL"),
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow!("not ready: no answer within {timeout:?}"))??;
    Ok(ExitCode::SUCCESS)
}

/// `grpc.health.v1.Health/Check` of the server as a whole (service "").
async fn grpc_ready(url: &str) -> Result<()> {
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let channel = Endpoint::from_shared(url.clone())
        .with_context(|| format!("--grpc {url:?} is not a valid URL (expected http://HOST:PORT)"))?
        .connect()
        .await
        .map_err(|e| anyhow!("not ready: cannot connect to {url}: {}", innermost(&e)))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| anyhow!("not ready: {url} answered {}: {}", s.code(), s.message()))?
        .into_inner();
    match ServingStatus::try_from(answer.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => bail!("not ready: {url} reports {}", other.as_str_name()),
        Err(_) => bail!("not ready: {url} reports status {}", answer.status),
    }
}

/// `GET url` over HTTP/1.1: ready on a 2xx status.
async fn http_ready(url: &str) -> Result<()> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--http {url:?}: expected http://HOST:PORT/PATH");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&target)
        .await
        .map_err(|e| anyhow!("not ready: cannot connect to {authority}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]).await? {
            0 => break,
            n => read += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .ok_or_else(|| anyhow!("not ready: {url} did not answer HTTP"))?;
    if status.starts_with('2') {
        Ok(())
    } else {
        bail!("not ready: {url} answered {status}")
    }
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
