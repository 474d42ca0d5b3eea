//! The OpenAPI document: generated from the routes and the contract types, served as generated,
//! equal to the checked-in copy, valid OpenAPI 3.1, and every documented operation routed.
//!
//! After an API change, regenerate the checked-in copy with
//! `FIRSTMILE_BLESS=1 cargo test -p firstmile-director --test integration openapi`.

use std::path::PathBuf;
use std::process::Command;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use super::{Api, config};

fn generated() -> Value {
    serde_json::to_value(director::api::openapi()).unwrap()
}

#[tokio::test]
async fn the_served_document_is_the_generated_one_and_the_checked_in_copy() {
    let api = Api::new(config());
    let r = api.req(Method::GET, "/openapi.json", None, &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = generated();
    assert_eq!(r.json, doc, "served and generated documents differ");
    assert_eq!(doc["openapi"], "3.1.0");

    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("FIRSTMILE_BLESS").is_some() {
        std::fs::write(&file, &text).unwrap();
    }
    let checked_in: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        checked_in == doc,
        "crates/director/openapi.json is not what the code generates: run \
         FIRSTMILE_BLESS=1 cargo test -p firstmile-director --test integration openapi"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_answers_json_errors() {
    let api = Api::new(config());
    let doc = generated();
    let mut n = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let concrete = path.replace("{id}", "some-id").replace("{broadcast}", "b1");
            let r = api.req(m, &concrete, None, &[], None).await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !(r.status == StatusCode::NOT_FOUND
                    && r.json["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("no such route"))),
                "{method} {path} is documented but not routed"
            );
            n += 1;
        }
    }
    assert!(n >= 24, "only {n} operations documented");
}

#[test]
fn every_operation_documents_its_answers_and_objects_their_required_fields() {
    let doc = generated();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &r["content"]["application/json"]["schema"];
                    if !schema.is_null() {
                        assert!(
                            schema["$ref"].as_str().is_some_and(
                                |s| s.ends_with("/ErrorBody") || s.ends_with("/Readiness")
                            ),
                            "{method} {path} {status}: errors are ErrorBody"
                        );
                    }
                }
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Assignment",
        "AssignmentRequest",
        "Heartbeat",
        "StreamInfo",
        "PublishGrant",
    ] {
        assert!(schemas.contains_key(name), "{name} missing");
    }
    let required = schemas["Assignment"]["required"].as_array().unwrap();
    for f in ["stream", "broadcast", "primary", "expires_at"] {
        assert!(
            required.contains(&Value::from(f)),
            "Assignment.{f} not required"
        );
    }
}

/// The document validates as OpenAPI 3.1 with the reference validator (PyPI
/// `openapi-spec-validator`, installed by `scripts/test`).
#[test]
fn the_document_validates_as_openapi_3_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&generated()).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named"),
        "openapi-spec-validator is missing: run scripts/python-deps.sh (scripts/test does)"
    );
    assert!(out.status.success(), "not valid OpenAPI 3.1:\n{text}");
    assert!(text.contains("OK"), "{text}");
}
