//! The entry server's OpenAPI document: served as generated from its routes and the contract
//! types, valid OpenAPI 3.1, every documented operation routed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_servers_document_is_served_valid_and_routed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = entry_config("doc-1", "doc", "Paris", dir.path(), None);
    cfg.viewer_wait_ms = 100;
    let s = Server::start(cfg, "127.0.0.9");
    let served: Value = get(format!("http://{}/openapi.json", s.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generated = serde_json::to_value(entry::http::openapi()).unwrap();
    assert_eq!(served, generated, "served and generated documents differ");
    assert_eq!(served["openapi"], "3.1.0");
    // Every documented operation is routed (no fallback 404 or 405 for it).
    let mut n = 0;
    for (path, item) in served["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = format!(
                "http://{}{}",
                s.http,
                path.replace("{id}", "s1").replace("{file}", "s1.flv")
            );
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let r = http_client()
                .request(m, &url)
                .timeout(Duration::from_secs(15))
                .send()
                .await
                .unwrap();
            assert_ne!(r.status().as_u16(), 405, "{method} {path}");
            if r.status() == 404 {
                let body = r.text().await.unwrap_or_default();
                assert!(
                    body.contains("\"code\""),
                    "{method} {path} is not routed: {body:?}"
                );
            }
            n += 1;
        }
    }
    assert!(n >= 11, "only {n} operations");
    // Valid OpenAPI 3.1 by the reference validator.
    let file = dir.path().join("entry-openapi.json");
    std::fs::write(&file, serde_json::to_vec(&served).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .unwrap();
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
}
