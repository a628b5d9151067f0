//! The admin API on its own listener: bearer token, bundle publish over HTTP, and the audit
//! trail of every change.

mod common;

use common::Server;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_live_only_on_the_admin_listener_need_the_token_and_are_audited() {
    let registry = tempfile::tempdir().unwrap();
    let url = format!("file://{}", registry.path().display());
    let server = Server::start_with_args(
        |_| {},
        &["--registry", &url, "--admin-token", "s3cret-token"],
    )
    .await;
    assert_ne!(server.admin, server.base);
    let client = reqwest::Client::new();

    // The decision listener knows no admin route, with or without the token.
    for path in [
        "/v1/admin/models",
        "/v1/admin/audit",
        "/v1/admin/models/ctr/rollback",
    ] {
        let r = client
            .post(server.url(path))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the decision listener");
        let r = client
            .get(server.url(path))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 404 || r.status() == 405,
            "{path}: {}",
            r.status()
        );
    }

    // The admin listener wants the token.
    let r = client
        .get(server.admin_url("/v1/admin/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(server.admin_url("/v1/admin/models/ctr/promote"))
        .bearer_auth("guessed")
        .json(&json!({"version": "demo-1", "stage": "production"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Publish a bundle over HTTP: a tar of its directory, validated, then listed.
    let bundle = server.data.path().join("models/ctr");
    let tar = std::process::Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(&bundle)
        .arg(".")
        .output()
        .unwrap();
    assert!(tar.status.success());
    let publish = |body: Vec<u8>| {
        client
            .post(server.admin_url("/v1/admin/models"))
            .bearer_auth("s3cret-token")
            .header("content-type", "application/x-tar")
            .header("x-podium-actor", "ml-engineer@example.com")
            .body(body)
            .send()
    };
    let r = publish(tar.stdout.clone()).await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = publish(tar.stdout.clone()).await.unwrap();
    assert_eq!(r.status(), 409, "a version is published once");
    let r = publish(b"not a tar archive at all".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("tar"), "{body}");
    let models = server
        .admin_get_json("/v1/admin/models", "s3cret-token")
        .await;
    assert_eq!(models["models"][0]["name"], "ctr", "{models}");
    let r = client
        .post(server.admin_url("/v1/admin/models/ctr/promote"))
        .bearer_auth("s3cret-token")
        .json(&json!({"version": "demo-1", "stage": "production", "why": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // The trail: every change and every refused attempt, who and from where, never the token.
    let audit = server
        .admin_get_json("/v1/admin/audit", "s3cret-token")
        .await;
    let records = audit["records"].as_array().unwrap();
    let statuses: Vec<(String, u64)> = records
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("/v1/admin/models/ctr/promote".to_string(), 401),
            ("/v1/admin/models".to_string(), 201),
            ("/v1/admin/models".to_string(), 409),
            ("/v1/admin/models".to_string(), 400),
            ("/v1/admin/models/ctr/promote".to_string(), 200),
        ],
        "{audit}"
    );
    let published = &records[1];
    assert_eq!(published["actor_name"], "ml-engineer@example.com");
    assert!(published["actor"].as_str().unwrap().starts_with("token:"));
    assert_eq!(
        published["body"]["bytes"].as_u64().unwrap() as usize,
        tar.stdout.len()
    );
    assert!(published["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_ne!(records[0]["actor"], published["actor"], "another token");
    assert_eq!(records[4]["body"]["why"], "first");
    let on_disk = std::fs::read_to_string(server.data.path().join("admin-audit.jsonl")).unwrap();
    assert_eq!(on_disk.lines().count(), 5);
    assert!(!on_disk.contains("s3cret-token") && !on_disk.contains("guessed"));

    // Without the token the trail is not readable.
    let r = client
        .get(server.admin_url("/v1/admin/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
