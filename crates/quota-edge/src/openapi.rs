//! `GET /openapi.json`: the OpenAPI document of every REST route, generated
//! by utoipa from the edge's own handlers and response types.
//!
//! The billing routes are declared once, under `/v1`; [`BarePaths`] adds
//! the same operations without the prefix, as the router serves them.

use crate::error::ErrorBody;
use axum::response::IntoResponse;
use std::sync::OnceLock;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's description: the error bodies and how statuses map.
const DESCRIPTION: &str = "OpenAI-compatible billing routes of quota, answered by its gRPC service.\n\n\
The billing routes answer with and without the `/v1` prefix. Errors are OpenAI-shaped \
(`ErrorBody`): 401 `invalid_api_key` (with `WWW-Authenticate: Bearer`), 400 \
`invalid_date`, 404 `unknown_url` (any other path), 405 `method_not_allowed`, \
429 `rate_limit_exceeded` or `insufficient_quota`, 503 `service_unavailable`, \
504 `timeout`, 500 `internal_error`. Every response carries `X-Request-Id`.";

/// The generated document.
#[derive(OpenApi)]
#[openapi(
    info(title = "quota", description = DESCRIPTION),
    paths(
        crate::routes::subscription,
        crate::routes::usage,
        crate::ops::healthz,
        crate::ops::readyz,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme, &BarePaths),
    tags(
        (name = "billing", description = "OpenAI-style billing routes, authenticated by the API key"),
        (name = "operations", description = "Health, readiness and this document; no authentication"),
    ),
)]
pub(crate) struct ApiDoc;

/// The `bearer` security scheme the billing routes name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every `/v1/...` path once more without the prefix.
struct BarePaths;

impl Modify for BarePaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bare: Vec<_> = openapi
            .paths
            .paths
            .iter()
            .filter_map(|(path, item)| {
                let rest = path.strip_prefix("/v1")?;
                let mut item = item.clone();
                if let Some(get) = item.get.as_mut() {
                    get.operation_id = get.operation_id.take().map(|id| format!("{id}_bare"));
                }
                Some((rest.to_owned(), item))
            })
            .collect();
        openapi.paths.paths.extend(bare);
    }
}

/// The document as served, rendered once.
pub(crate) fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    // Serializing a document of plain maps and strings cannot fail; if it
    // ever did, the route would serve an empty object rather than panic.
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|_| "{}".to_owned())
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "The OpenAPI document of every REST route",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")),
)]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}
