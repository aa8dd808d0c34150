//! Shared setup of the gRPC tests: a server on port 0, clients, credentials.

pub use quota::pb;
pub use quota::pb::quota_service_client::QuotaServiceClient;
pub use quota::pb::token_admin_client::TokenAdminClient;
pub use quota::pb::token_ref::Ref;
pub use quota_service::ServiceConfig;
pub use quota_service::domain::unix_now;
pub use quota_service::on_every_database;
pub use quota_service::store::NewToken;
pub use quota_service::testing::{TEST_ADMIN_TOKEN, TestDb, TestServer, test_config};
pub use tonic::transport::Channel;
pub use tonic::{Code, Request, Status};

/// A server on its own database, and a channel to it.
pub struct Api {
    _server: TestServer,
    pub channel: Channel,
    // Dropped last, after the server has been told to stop.
    _db: TestDb,
}

impl Api {
    /// A server with the test admin credential.
    pub async fn start(db: TestDb) -> Api {
        Api::start_with(db, test_config()).await
    }

    pub async fn start_with(db: TestDb, config: ServiceConfig) -> Api {
        let server = TestServer::spawn(db.store().await, config).await;
        let channel = Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server");
        Api {
            _server: server,
            channel,
            _db: db,
        }
    }

    pub fn quota(&self) -> QuotaServiceClient<Channel> {
        QuotaServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> TokenAdminClient<Channel> {
        TokenAdminClient::new(self.channel.clone())
    }

    /// Creates a token through the admin API: the token and its key.
    pub async fn create(&self, req: pb::CreateTokenRequest) -> (pb::Token, String) {
        let created = self
            .admin()
            .create_token(as_admin(req))
            .await
            .expect("CreateToken")
            .into_inner();
        (
            created.token.expect("CreateToken returns the token"),
            created.key,
        )
    }

    /// A limited token of `quota` units.
    pub async fn create_units(&self, quota: i64) -> (pb::Token, String) {
        self.create(pb::CreateTokenRequest {
            quota,
            ..Default::default()
        })
        .await
    }

    pub async fn subscription(&self, key: &str) -> Result<pb::Subscription, Status> {
        let req = bearer(pb::GetSubscriptionRequest {}, key);
        Ok(self.quota().get_subscription(req).await?.into_inner())
    }

    pub async fn usage(&self, key: &str, start: &str, end: &str) -> Result<pb::Usage, Status> {
        let req = bearer(
            pb::GetUsageRequest {
                start_date: start.into(),
                end_date: end.into(),
            },
            key,
        );
        Ok(self.quota().get_usage(req).await?.into_inner())
    }

    pub async fn consume(
        &self,
        key: &str,
        quota: i64,
        request_id: &str,
    ) -> Result<pb::ConsumeResponse, Status> {
        let req = as_admin(pb::ConsumeRequest {
            token: key.into(),
            quota,
            request_id: request_id.into(),
        });
        Ok(self.quota().consume(req).await?.into_inner())
    }

    pub async fn get(&self, token: Option<pb::TokenRef>) -> Result<pb::Token, Status> {
        let req = as_admin(pb::GetTokenRequest { token });
        Ok(self.admin().get_token(req).await?.into_inner())
    }

    pub async fn grant(&self, req: pb::GrantQuotaRequest) -> Result<pb::Token, Status> {
        Ok(self.admin().grant_quota(as_admin(req)).await?.into_inner())
    }

    pub async fn update(&self, req: pb::UpdateTokenRequest) -> Result<pb::Token, Status> {
        Ok(self.admin().update_token(as_admin(req)).await?.into_inner())
    }

    /// Disables the token with `id`.
    pub async fn disable(&self, id: i64) {
        self.update(pb::UpdateTokenRequest {
            token: by_id(id),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    pub async fn list(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListTokensResponse, Status> {
        let req = as_admin(pb::ListTokensRequest {
            page_size,
            page_token: page_token.into(),
        });
        Ok(self.admin().list_tokens(req).await?.into_inner())
    }
}

/// `message` with the metadata `authorization: <value>`, or none.
pub fn with_authorization<T>(message: T, value: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(value) = value {
        req.metadata_mut()
            .insert("authorization", value.parse().expect("metadata value"));
    }
    req
}

/// `message` with `authorization: Bearer <credential>`.
pub fn bearer<T>(message: T, credential: &str) -> Request<T> {
    with_authorization(message, Some(&format!("Bearer {credential}")))
}

/// `message` with the admin credential.
pub fn as_admin<T>(message: T) -> Request<T> {
    bearer(message, TEST_ADMIN_TOKEN)
}

pub fn by_id(id: i64) -> Option<pb::TokenRef> {
    Some(pb::TokenRef {
        r#ref: Some(Ref::Id(id)),
    })
}

pub fn by_key(key: &str) -> Option<pb::TokenRef> {
    Some(pb::TokenRef {
        r#ref: Some(Ref::Key(key.into())),
    })
}

/// The status code of a call that must fail.
pub fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    match result {
        Ok(ok) => panic!("expected an error status, got {ok:?}"),
        Err(status) => status.code(),
    }
}

/// A well-formed key that no token has.
pub fn unknown_key() -> String {
    format!("sk-{}", "Z".repeat(48))
}
