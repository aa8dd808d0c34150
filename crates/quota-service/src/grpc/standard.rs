//! The standard services served beside quota's own, `grpc.health.v1.Health`
//! and server reflection (v1 and v1alpha), through servers generated with
//! quota's request codec (`quota::standard`): a request that does not
//! decode is INVALID_ARGUMENT there too, not tonic-prost's INTERNAL.
//! tonic-health's service is called directly. tonic-reflection's builder
//! hands its service out only inside a server, so that server is called in
//! process by a tonic client, with no socket in between.

use quota::standard::health::health_server::{self, HealthServer};
use quota::standard::{reflection_v1, reflection_v1alpha};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::sync::oneshot;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_server::Health as _;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The health service of `reporter`, behind the request codec.
pub fn health_server(reporter: &HealthReporter) -> HealthServer<Health> {
    HealthServer::new(Health(HealthService::from_health_reporter(
        reporter.clone(),
    )))
}

/// tonic-health's service, called by the generated server of
/// [`quota::standard::health`].
#[derive(Debug)]
pub struct Health(HealthService);

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.check(request).await
    }

    type WatchStream = <HealthService as tonic_health::pb::health_server::Health>::WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.watch(request).await
    }
}

/// A server as a tonic client calls it in process.
type InProcess = super::LocalService;

/// Both reflection services, describing the services of `builder`, behind
/// the request codec.
pub fn reflection_servers(
    builder: impl Fn() -> tonic_reflection::server::Builder<'static>,
) -> Result<
    (
        reflection_v1::server_reflection_server::ServerReflectionServer<ReflectionV1>,
        reflection_v1alpha::server_reflection_server::ServerReflectionServer<ReflectionV1alpha>,
    ),
    tonic_reflection::server::Error,
> {
    use tonic_reflection::pb::{v1, v1alpha};
    let v1 = v1::server_reflection_client::ServerReflectionClient::new(InProcess::new(
        builder().build_v1()?,
    ));
    let v1alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(InProcess::new(
        builder().build_v1alpha()?,
    ));
    Ok((
        reflection_v1::server_reflection_server::ServerReflectionServer::new(ReflectionV1(v1)),
        reflection_v1alpha::server_reflection_server::ServerReflectionServer::new(
            ReflectionV1alpha(v1alpha),
        ),
    ))
}

/// A reflection service of `$version`: tonic-reflection's, reached by a
/// client in process, behind the generated server of `$server`.
macro_rules! reflection {
    ($name:ident, $version:ident, $server:ident) => {
        #[doc = concat!("tonic-reflection's `", stringify!($version), "` service, called in process.")]
        #[derive(Debug)]
        pub struct $name(
            tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient<
                InProcess,
            >,
        );

        #[tonic::async_trait]
        impl $server::server_reflection_server::ServerReflection for $name {
            type ServerReflectionInfoStream =
                ThenFault<Streaming<tonic_reflection::pb::$version::ServerReflectionResponse>>;

            async fn server_reflection_info(
                &self,
                request: Request<
                    Streaming<tonic_reflection::pb::$version::ServerReflectionRequest>,
                >,
            ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
                let (requests, fault) = until_fault(request.into_inner());
                let answers = self
                    .0
                    .clone()
                    .server_reflection_info(requests)
                    .await?
                    .into_inner();
                Ok(Response::new(ThenFault {
                    answers: Some(answers),
                    fault: Some(fault),
                }))
            }
        }
    };
}

reflection!(ReflectionV1, v1, reflection_v1);
reflection!(ReflectionV1alpha, v1alpha, reflection_v1alpha);

/// `incoming` up to its first message that does not decode, whose status
/// the receiver then gets (INVALID_ARGUMENT for a body that is not whole
/// gRPC messages, as for the other services); dropped with no status if
/// there is none.
fn until_fault<T>(incoming: Streaming<T>) -> (UntilFault<T>, oneshot::Receiver<Status>) {
    let (fault, receiver) = oneshot::channel();
    let requests = UntilFault {
        incoming,
        fault: Some(fault),
    };
    (requests, receiver)
}

/// See [`until_fault`].
#[derive(Debug)]
pub struct UntilFault<T> {
    incoming: Streaming<T>,
    /// `None` once the stream has ended.
    fault: Option<oneshot::Sender<Status>>,
}

impl<T> Stream for UntilFault<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.fault.is_none() {
            return Poll::Ready(None);
        }
        let next = ready!(Pin::new(&mut self.incoming).poll_next(cx));
        match next {
            Some(Ok(message)) => Poll::Ready(Some(message)),
            end => {
                if let (Some(Err(status)), Some(fault)) = (end, self.fault.take()) {
                    let _ = fault.send(super::server::caller_mistake(status));
                }
                self.fault = None;
                Poll::Ready(None)
            }
        }
    }
}

/// The answers to the requests of an [`UntilFault`], then its fault, if it
/// had one.
#[derive(Debug)]
pub struct ThenFault<S> {
    /// `None` once they have ended.
    answers: Option<S>,
    /// `None` once the fault has been given or there is none.
    fault: Option<oneshot::Receiver<Status>>,
}

impl<S, U> Stream for ThenFault<S>
where
    S: Stream<Item = Result<U, Status>> + Unpin,
{
    type Item = Result<U, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(answers) = self.answers.as_mut() {
            match ready!(Pin::new(answers).poll_next(cx)) {
                // An error ends the answers, and the requests' fault is not
                // waited for: the requests may never end.
                Some(Err(status)) => {
                    self.answers = None;
                    self.fault = None;
                    return Poll::Ready(Some(Err(status)));
                }
                Some(answer) => return Poll::Ready(Some(answer)),
                None => self.answers = None,
            }
        }
        // The answers ended, so the service read the requests to their end
        // and dropped them: the fault has been sent, or its sender dropped.
        let Some(fault) = self.fault.as_mut() else {
            return Poll::Ready(None);
        };
        let fault = ready!(Pin::new(fault).poll(cx));
        self.fault = None;
        Poll::Ready(fault.ok().map(Err))
    }
}
