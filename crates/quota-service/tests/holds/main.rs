//! Holds (`Reserve`, `Settle`, `Release`): every case of the contract through
//! real gRPC clients, expiry without a background job, races between two
//! replicas, and random sequences against a model of the contract; each on
//! SQLite (memory and file), PostgreSQL and MariaDB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cases;
mod expiry;
mod model;
mod races;

use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::token_admin_client::TokenAdminClient;
use quota_service::testing::{TEST_ADMIN_TOKEN, TestDb, TestServer, test_config};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A server on its own database, and a channel to it.
struct Api {
    _server: TestServer,
    channel: Channel,
    // Dropped last, after the server has been told to stop.
    _db: TestDb,
}

impl Api {
    /// A server with the test admin credential.
    async fn start(db: TestDb) -> Api {
        let server = TestServer::spawn(db.store().await, test_config()).await;
        let channel = connect(&server).await;
        Api {
            _server: server,
            channel,
            _db: db,
        }
    }

    fn quota(&self) -> QuotaServiceClient<Channel> {
        QuotaServiceClient::new(self.channel.clone())
    }

    /// A limited token of `quota` units: (id, key).
    async fn token(&self, quota: i64) -> (i64, String) {
        self.create(pb::CreateTokenRequest {
            quota,
            ..Default::default()
        })
        .await
    }

    /// A token as `req` says: (id, key).
    async fn create(&self, req: pb::CreateTokenRequest) -> (i64, String) {
        let created = TokenAdminClient::new(self.channel.clone())
            .create_token(as_admin(req))
            .await
            .expect("CreateToken")
            .into_inner();
        (created.token.expect("the token").id, created.key)
    }

    /// The token as the admin API shows it.
    async fn get(&self, id: i64) -> pb::Token {
        let req = as_admin(pb::GetTokenRequest {
            token: Some(pb::TokenRef {
                r#ref: Some(pb::token_ref::Ref::Id(id)),
            }),
        });
        TokenAdminClient::new(self.channel.clone())
            .get_token(req)
            .await
            .expect("GetToken")
            .into_inner()
    }

    async fn grant(&self, id: i64, quota: i64) {
        let req = as_admin(pb::GrantQuotaRequest {
            token: Some(pb::TokenRef {
                r#ref: Some(pb::token_ref::Ref::Id(id)),
            }),
            quota,
            quota_usd: String::new(),
        });
        TokenAdminClient::new(self.channel.clone())
            .grant_quota(req)
            .await
            .expect("GrantQuota");
    }

    async fn disable(&self, id: i64) {
        let req = as_admin(pb::UpdateTokenRequest {
            token: Some(pb::TokenRef {
                r#ref: Some(pb::token_ref::Ref::Id(id)),
            }),
            enabled: Some(false),
            ..Default::default()
        });
        TokenAdminClient::new(self.channel.clone())
            .update_token(req)
            .await
            .expect("UpdateToken");
    }

    async fn subscription(&self, key: &str) -> pb::Subscription {
        self.quota()
            .get_subscription(bearer(pb::GetSubscriptionRequest {}, key))
            .await
            .expect("GetSubscription")
            .into_inner()
    }

    /// Spend in units over all time, as the usage route counts it.
    async fn usage_units(&self, key: &str) -> i64 {
        let req = bearer(pb::GetUsageRequest::default(), key);
        self.quota()
            .get_usage(req)
            .await
            .expect("GetUsage")
            .into_inner()
            .total_units
    }

    async fn consume(
        &self,
        key: &str,
        quota: i64,
        id: &str,
    ) -> Result<pb::ConsumeResponse, Status> {
        consume(&mut self.quota(), key, quota, id).await
    }

    async fn reserve(
        &self,
        key: &str,
        quota: i64,
        id: &str,
        ttl: i64,
    ) -> Result<pb::ReserveResponse, Status> {
        reserve(&mut self.quota(), key, quota, id, ttl).await
    }

    async fn settle(&self, key: &str, id: &str, quota: i64) -> Result<pb::SettleResponse, Status> {
        settle(&mut self.quota(), key, id, quota).await
    }

    async fn release(&self, key: &str, id: &str) -> Result<pb::ReleaseResponse, Status> {
        release(&mut self.quota(), key, id).await
    }
}

async fn connect(server: &TestServer) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .expect("connect to the test server")
}

async fn consume(
    client: &mut QuotaServiceClient<Channel>,
    key: &str,
    quota: i64,
    id: &str,
) -> Result<pb::ConsumeResponse, Status> {
    let req = as_admin(pb::ConsumeRequest {
        token: key.into(),
        quota,
        request_id: id.into(),
    });
    Ok(client.consume(req).await?.into_inner())
}

async fn reserve(
    client: &mut QuotaServiceClient<Channel>,
    key: &str,
    quota: i64,
    id: &str,
    ttl_seconds: i64,
) -> Result<pb::ReserveResponse, Status> {
    let req = as_admin(pb::ReserveRequest {
        token: key.into(),
        quota,
        request_id: id.into(),
        ttl_seconds,
    });
    Ok(client.reserve(req).await?.into_inner())
}

async fn settle(
    client: &mut QuotaServiceClient<Channel>,
    key: &str,
    id: &str,
    quota: i64,
) -> Result<pb::SettleResponse, Status> {
    let req = as_admin(pb::SettleRequest {
        token: key.into(),
        request_id: id.into(),
        quota,
    });
    Ok(client.settle(req).await?.into_inner())
}

async fn release(
    client: &mut QuotaServiceClient<Channel>,
    key: &str,
    id: &str,
) -> Result<pb::ReleaseResponse, Status> {
    let req = as_admin(pb::ReleaseRequest {
        token: key.into(),
        request_id: id.into(),
    });
    Ok(client.release(req).await?.into_inner())
}

/// `message` with `authorization: Bearer <credential>`.
fn bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}")
            .parse()
            .expect("metadata value"),
    );
    req
}

/// `message` with the admin credential.
fn as_admin<T>(message: T) -> Request<T> {
    bearer(message, TEST_ADMIN_TOKEN)
}

/// The status code of a call that must fail.
fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    match result {
        Ok(ok) => panic!("expected an error status, got {ok:?}"),
        Err(status) => status.code(),
    }
}
