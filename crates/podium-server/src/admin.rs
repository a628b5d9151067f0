//! Admin HTTP API over the model registry: list models, read a model's history, publish a bundle
//! (a tar archive of its directory), promote and roll back. Loading is not here: serving follows
//! the registry by polling its stages, so a change made through one server reaches the fleet.
//!
//! Every route needs `Authorization: Bearer <token>`; changes are recorded as by `admin-api`.

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use podium_registry::{Registry, RegistryError, Stage};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who the registry history records for changes made through this API.
pub const ADMIN_BY: &str = "admin-api";

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    token: Arc<str>,
}

/// The admin routes under `/v1/admin/models`, guarded by a bearer token. An empty token locks
/// every route rather than opening them.
pub fn admin_router(registry: Registry, token: String) -> Router {
    let state = AdminState {
        registry,
        token: token.into(),
    };
    Router::new()
        .route("/v1/admin/models", get(list_models).post(publish))
        .route("/v1/admin/models/{name}/history", get(history))
        .route("/v1/admin/models/{name}/promote", post(promote))
        .route("/v1/admin/models/{name}/rollback", post(rollback))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn registry_error(e: RegistryError) -> Response {
    let status = match &e {
        RegistryError::BadRequest(_) | RegistryError::InvalidBundle { .. } => {
            StatusCode::BAD_REQUEST
        }
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::AlreadyPublished { .. } | RegistryError::Conflict(_) => StatusCode::CONFLICT,
        RegistryError::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Err(denied) = check_bearer(request.headers(), &state.token) {
        return denied;
    }
    next.run(request).await
}

/// Checks `Authorization: Bearer <token>` against the admin token; the 401 answer when it does
/// not match. An empty configured token matches nothing.
#[allow(clippy::result_large_err)]
pub(crate) fn check_bearer(headers: &axum::http::HeaderMap, token: &str) -> Result<(), Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match presented {
        // Constant-time so the token cannot be guessed byte by byte from response times.
        Some(t) => !token.is_empty() && bool::from(t.as_bytes().ct_eq(token.as_bytes())),
        None => false,
    };
    if ok {
        return Ok(());
    }
    let message = if presented.is_none() {
        "missing Authorization: Bearer <token> header"
    } else {
        "invalid admin token"
    };
    Err(error(StatusCode::UNAUTHORIZED, message))
}

/// Parses a JSON body, naming the field at fault; an empty body reads as `{}`.
#[allow(clippy::result_large_err)]
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let malformed = matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        if malformed || path == "." || path.is_empty() {
            error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {inner}"),
            )
        } else {
            error(StatusCode::BAD_REQUEST, format!("{path}: {inner}"))
        }
    })
}

async fn list_models(State(state): State<AdminState>) -> Response {
    match state.registry.list().await {
        Ok(models) => {
            Json(json!({"registry": state.registry.url(), "models": models})).into_response()
        }
        Err(e) => registry_error(e),
    }
}

async fn history(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.registry.history(&name).await {
        Ok(h) => Json(json!({"name": name, "history": h})).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `POST /v1/admin/models` with a tar archive of a bundle directory (`tar -cf - -C bundle .`):
/// validated like `podium model publish` (golden rows scored, checksums checked) and uploaded.
async fn publish(State(state): State<AdminState>, body: Bytes) -> Response {
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be a tar archive of the bundle directory (tar -cf - -C bundle .)",
        );
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("temp dir: {e}")),
    };
    let target = dir.path().to_path_buf();
    // Unpacking is blocking I/O; `unpack` refuses entries that would land outside `target`.
    let unpacked = tokio::task::spawn_blocking(move || {
        tar::Archive::new(std::io::Cursor::new(body)).unpack(&target)
    })
    .await;
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a readable tar archive of a bundle: {e}"),
            )
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    // An archive of the directory itself (`tar -cf - bundle`) holds one folder: use it.
    let mut root = dir.path().to_path_buf();
    if !root.join("model.toml").exists() {
        let entries: Vec<_> = std::fs::read_dir(&root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if let [only] = entries.as_slice() {
            if only.join("model.toml").exists() {
                root = only.clone();
            }
        }
    }
    match state.registry.publish(&root, ADMIN_BY).await {
        Ok(p) => (StatusCode::CREATED, Json(p)).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `POST /v1/admin/models/{name}/promote` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    version: String,
    stage: String,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    why: Option<String>,
}

async fn promote(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let b: PromoteBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let stage: Stage = match b.stage.parse() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("stage: {e}")),
    };
    match state
        .registry
        .promote(
            &name,
            &b.version,
            stage,
            b.percent,
            ADMIN_BY,
            b.why.as_deref().unwrap_or(""),
        )
        .await
    {
        Ok(entry) => Json(entry).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `POST /v1/admin/models/{name}/rollback` body (may be empty).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    why: Option<String>,
}

async fn rollback(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let b: RollbackBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .rollback(&name, ADMIN_BY, b.why.as_deref().unwrap_or(""))
        .await
    {
        Ok(entry) => Json(entry).into_response(),
        Err(e) => registry_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use podium_model::package::{package, PackageOptions};
    use podium_model::ModelKind;
    use tower::ServiceExt;

    const TOKEN: &str = "s3cret-token";

    async fn registry_with(dir: &std::path::Path, versions: &[&str]) -> Registry {
        let reg = Registry::open(dir.join("registry").to_str().unwrap()).unwrap();
        for v in versions {
            let weights = dir.join(format!("w{v}.json"));
            std::fs::write(&weights, r#"{"intercept": -1.0, "weights": {"a": 0.5}}"#).unwrap();
            let report = package(&PackageOptions {
                kind: ModelKind::Linear,
                weights,
                name: "ctr".into(),
                version: (*v).into(),
                task: "ctr".into(),
                features: None,
                link: None,
                output: None,
                golden: None,
                calibration: None,
                fallback_prior: Some(0.1),
                latency_budget_us: 1_000_000,
                out: dir.join(format!("bundle-{v}")),
            })
            .unwrap();
            reg.publish(&report.dir, "test").await.unwrap();
        }
        reg
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = HttpRequest::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn refuses_requests_without_the_right_token() {
        let tmp = tempfile::tempdir().unwrap();
        let app = admin_router(registry_with(tmp.path(), &[]).await, TOKEN.into());
        for token in [None, Some("wrong"), Some(""), Some("s3cret-token-longer")] {
            for (m, uri) in [
                ("GET", "/v1/admin/models"),
                ("GET", "/v1/admin/models/ctr/history"),
                ("POST", "/v1/admin/models/ctr/rollback"),
            ] {
                let (status, body) = call(&app, m, uri, token, "").await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {uri} {token:?}");
                assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
            }
        }
        // An empty configured token locks everything, even an empty bearer.
        let locked = admin_router(registry_with(tmp.path(), &[]).await, String::new());
        let (status, _) = call(&locked, "GET", "/v1/admin/models", Some(""), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn promotes_rolls_back_and_reports_history() {
        let tmp = tempfile::tempdir().unwrap();
        let app = admin_router(registry_with(tmp.path(), &["1", "2"]).await, TOKEN.into());
        let t = Some(TOKEN);
        let (s, b) = call(
            &app,
            "POST",
            "/v1/admin/models/ctr/promote",
            t,
            r#"{"version":"1","stage":"production","why":"launch"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["by"], "admin-api");
        let (s, b) = call(
            &app,
            "POST",
            "/v1/admin/models/ctr/promote",
            t,
            r#"{"version":"2","stage":"canary","percent":10}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["percent"], 10.0);

        let (s, b) = call(&app, "GET", "/v1/admin/models", t, "").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["models"][0]["versions"], json!(["1", "2"]));
        assert_eq!(b["models"][0]["stages"]["canary"]["version"], "2");

        let (s, b) = call(
            &app,
            "POST",
            "/v1/admin/models/ctr/rollback",
            t,
            r#"{"why":"errors"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            (b["action"].as_str(), b["stage"].as_str()),
            (Some("rollback"), Some("canary"))
        );

        let (s, b) = call(&app, "GET", "/v1/admin/models/ctr/history", t, "").await;
        assert_eq!(s, StatusCode::OK);
        let h = b["history"].as_array().unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0]["why"], "launch");
        assert_eq!(h[2]["why"], "errors");
        assert!(h.iter().all(|e| e["by"] == "admin-api"));
    }

    #[tokio::test]
    async fn maps_errors_to_statuses_with_precise_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let app = admin_router(registry_with(tmp.path(), &["1"]).await, TOKEN.into());
        let t = Some(TOKEN);
        let cases = [
            (
                "/v1/admin/models/ctr/promote",
                r#"{"version":"9","stage":"production"}"#,
                StatusCode::NOT_FOUND,
                "version 9",
            ),
            (
                "/v1/admin/models/nope/promote",
                r#"{"version":"1","stage":"production"}"#,
                StatusCode::NOT_FOUND,
                "nope",
            ),
            (
                "/v1/admin/models/ctr/promote",
                r#"{"version":"1","stage":"staging"}"#,
                StatusCode::BAD_REQUEST,
                "staging",
            ),
            (
                "/v1/admin/models/ctr/promote",
                r#"{"version":"1","stage":"canary","percent":0}"#,
                StatusCode::BAD_REQUEST,
                "percent",
            ),
            (
                "/v1/admin/models/ctr/promote",
                r#"{"stage":"canary"}"#,
                StatusCode::BAD_REQUEST,
                "version",
            ),
            (
                "/v1/admin/models/ctr/promote",
                "{not json",
                StatusCode::BAD_REQUEST,
                "invalid JSON",
            ),
            (
                "/v1/admin/models/ctr/rollback",
                "",
                StatusCode::BAD_REQUEST,
                "no production version",
            ),
        ];
        for (uri, body, status, needle) in cases {
            let (s, b) = call(&app, "POST", uri, t, body).await;
            assert_eq!(s, status, "{uri} {body}: {b}");
            assert!(
                b["error"].as_str().unwrap().contains(needle),
                "{uri} {body}: {b}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_is_503() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = registry_with(tmp.path(), &[]).await;
        // Replace the registry directory by a file: every store call now fails with I/O errors.
        let root = tmp.path().join("registry");
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::write(&root, "not a directory").unwrap();
        let app = admin_router(reg, TOKEN.into());
        let (s, b) = call(&app, "GET", "/v1/admin/models", Some(TOKEN), "").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert!(b["error"].as_str().unwrap().contains("unreachable"), "{b}");
    }
}
