//! Reading the TLS files of the command line: the servers' certificate and
//! key, and the CA a client trusts.

use crate::cli::ServerArgs;
use anyhow::{Result, anyhow};
use quota_edge::{ClientTls, ServerTls};
use std::path::Path;
use tonic::transport::Identity;

/// One certificate and key, for both servers of a process.
pub struct Tls {
    /// For the REST listener.
    pub rest: ServerTls,
    /// For the gRPC listener.
    pub grpc: Identity,
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read {flag} {}: {e}", path.display()))
}

/// The certificate and key of `--tls-cert` / `--tls-key`, checked to go
/// together, or `None` when TLS is not asked for.
pub fn server(args: &ServerArgs) -> Result<Option<Tls>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let (cert, key) = (read(cert, "--tls-cert")?, read(key, "--tls-key")?);
    let rest =
        ServerTls::from_pem(&cert, &key).map_err(|e| anyhow!("--tls-cert/--tls-key: {e}"))?;
    Ok(Some(Tls {
        rest,
        grpc: Identity::from_pem(cert, key),
    }))
}

/// Whom to trust for an `https://` service: `--ca-cert`, or the web's roots.
pub fn client(ca_cert: Option<&Path>) -> Result<ClientTls> {
    match ca_cert {
        None => Ok(ClientTls::default()),
        Some(path) => ClientTls::with_ca_pem(&read(path, "--ca-cert")?)
            .map_err(|e| anyhow!("--ca-cert {}: {e}", path.display())),
    }
}
