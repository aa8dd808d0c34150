//! `/openapi.json`: a valid OpenAPI 3 document of every route, whose
//! subscription route is the seed spec's.

use crate::helpers::*;
use axum::http::StatusCode;
use serde_json::Value;
use std::path::PathBuf;

/// The seed spec: the shared copy beside the repository when there is one
/// (checked against the committed copy), else the committed copy.
fn seed_spec() -> Value {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let committed_path = manifest.join("tests/data/billing-subscription.openapi.yaml");
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    let shared_path = manifest.join("../../../shared/spec/billing-subscription.openapi.yaml");
    let text = match std::fs::read_to_string(&shared_path) {
        Ok(shared) => {
            assert_eq!(
                shared,
                committed,
                "{} differs from the shared seed spec {}: copy it again",
                committed_path.display(),
                shared_path.display()
            );
            shared
        }
        Err(_) => committed,
    };
    serde_norway::from_str(&text).unwrap()
}

async fn served() -> (Value, String) {
    let router = unreachable_upstream().await;
    let response = send(&router, "GET", "/openapi.json", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let text = body_text(response).await;
    (serde_json::from_str(&text).unwrap(), text)
}

/// Follows a local `$ref` (`#/components/schemas/X`) in `doc`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.trim_start_matches('#')).unwrap()),
        None => v,
    }
}

/// A schema without the annotations that do not change what it accepts
/// (`description`, `format`), so that generated and seed schemas compare
/// by properties, types, required and order.
fn without_annotations(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "description" | "format"))
                .map(|(k, v)| (k.clone(), without_annotations(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_annotations).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3() {
    let (_, text) = served().await;
    let spec = oas3::from_json(&text).expect("the document parses as OpenAPI 3.1");
    let version = spec
        .validate_version()
        .expect("a supported OpenAPI version");
    assert_eq!(version.major, 3);
    // Every reference in every response resolves.
    let mut operations = 0;
    for (path, method, operation) in spec.operations() {
        operations += 1;
        let responses = operation.responses.as_ref().expect("responses");
        assert!(!responses.is_empty(), "{method} {path}");
        for (status, response) in responses {
            let response = response.resolve(&spec).unwrap_or_else(|e| {
                panic!("{method} {path} {status}: {e}");
            });
            for media in response.content.values() {
                if let Some(schema) = &media.schema {
                    schema
                        .resolve(&spec)
                        .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"));
                }
            }
        }
    }
    assert_eq!(operations, 7);
}

#[tokio::test]
async fn every_route_is_documented_with_its_errors() {
    let (doc, _) = served().await;
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/v1/dashboard/billing/subscription",
        "/dashboard/billing/subscription",
        "/v1/dashboard/billing/usage",
        "/dashboard/billing/usage",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    assert_eq!(paths.len(), 7, "{paths:?}");
    for path in [
        "/v1/dashboard/billing/usage",
        "/dashboard/billing/usage",
        "/v1/dashboard/billing/subscription",
        "/dashboard/billing/subscription",
    ] {
        let op = &doc["paths"][path]["get"];
        assert_eq!(
            op["security"],
            serde_json::json!([{"bearer": []}]),
            "{path}"
        );
        for status in ["401", "405", "429", "500", "503", "504"] {
            let schema = &op["responses"][status]["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/ErrorBody",
                "{path} {status}"
            );
        }
        // The headers the edge sends with them.
        for (status, header) in [
            ("401", "WWW-Authenticate"),
            ("429", "Retry-After"),
            ("503", "Retry-After"),
        ] {
            let headers = &op["responses"][status]["headers"];
            assert!(headers.get(header).is_some(), "{path} {status}: {headers}");
        }
    }
    let usage = &doc["paths"]["/v1/dashboard/billing/usage"]["get"];
    assert_eq!(
        usage["responses"]["400"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    let params: Vec<&str> = usage["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["in"], "query");
            assert_eq!(p["required"], false);
            assert_eq!(p["schema"]["format"], "date");
            p["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(params, ["start_date", "end_date"]);
    assert_eq!(
        doc["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/ErrorBody"
    );
    // No authentication on the operations routes.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert!(
            doc["paths"][path]["get"].get("security").is_none(),
            "{path}"
        );
    }
    // The error body, as the edge writes it.
    let error = resolve(&doc, &doc["components"]["schemas"]["ErrorBody"]);
    assert_eq!(error["required"], serde_json::json!(["error"]));
    let detail = resolve(&doc, &error["properties"]["error"]);
    let fields: Vec<&String> = detail["properties"].as_object().unwrap().keys().collect();
    assert_eq!(fields, ["message", "type", "param", "code"]);
    assert_eq!(
        detail["properties"]["param"]["type"],
        serde_json::json!(["string", "null"])
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        serde_json::json!({"type": "http", "scheme": "bearer"})
    );
}

#[tokio::test]
async fn the_subscription_route_is_the_seed_specs() {
    let (doc, _) = served().await;
    let seed = seed_spec();
    let seed_op = &seed["paths"]["/v1/dashboard/billing/subscription"]["get"];
    let seed_ok = &seed_op["responses"]["200"]["content"]["application/json"];
    for path in [
        "/v1/dashboard/billing/subscription",
        "/dashboard/billing/subscription",
    ] {
        let op = &doc["paths"][path]["get"];
        let ok = &op["responses"]["200"]["content"]["application/json"];
        let schema = without_annotations(resolve(&doc, &ok["schema"]));
        // Whole-value equality: same properties with the same types, in
        // the same order (the maps here keep their order), same required list.
        assert_eq!(schema, seed_ok["schema"], "{path}");
        let order = |s: &Value| -> Vec<String> {
            s["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(order(&schema), order(&seed_ok["schema"]), "{path}");
        assert_eq!(schema["required"], seed_ok["schema"]["required"], "{path}");
        assert_eq!(ok["example"], seed_ok["example"], "{path}");
        assert_eq!(op["summary"], seed_op["summary"], "{path}");
        assert_eq!(op["security"], seed_op["security"], "{path}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        seed["components"]["securitySchemes"]["bearer"]
    );
}
