//! A failed call to a gRPC service: the service's answer, or none. The edge
//! answers 503 for none (the service cannot be reached), and the `token`
//! commands and `quotad health` say what to fix.

use tonic::Status;

/// Why a call to a gRPC service got no answer of the service.
#[derive(Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// The peer answered in HTTP/2, but not in gRPC: this content type (a
    /// REST port, a proxy's error page).
    NotGrpc(String),
    /// No answer: the connection was refused, cut or closed, or the peer
    /// speaks no HTTP/2 (a TLS port called in plain text, say).
    Transport,
}

/// Why `status` is no answer of the service, if it is not. A status the
/// service sent has no source; one the transport made has its error as
/// source, and so has a stream the service reset (a handler that
/// panicked), which is the service's answer, however rude.
pub fn unanswered(status: &Status) -> Option<Unanswered> {
    if let Some(content_type) = status.metadata().get("content-type") {
        let content_type = content_type.to_str().unwrap_or("not text");
        return (!content_type.starts_with("application/grpc"))
            .then(|| Unanswered::NotGrpc(format!("content-type {content_type}")));
    }
    let mut source = std::error::Error::source(status)?;
    loop {
        if let Some(h2) = source.downcast_ref::<h2::Error>()
            && h2.is_reset()
            && h2.is_remote()
        {
            return None;
        }
        match source.source() {
            Some(next) => source = next,
            None => return Some(Unanswered::Transport),
        }
    }
}
