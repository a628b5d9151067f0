//! The admin listener: the admin routes behind one audit trail, on a socket of their own.
//!
//! Every request that changes something (any method but GET and HEAD) is appended to a JSON
//! Lines file once it has been answered: when, who (the bearer token's fingerprint, never the
//! token, and the `X-Podium-Actor` name if the caller gave one), from where, what (method, path,
//! the body up to 4 KiB) and the outcome (status). Refused attempts are recorded too, so a
//! guessed token shows up in the trail. `GET /v1/admin/audit` reads the trail back.

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest admin request body: a model bundle (a tar archive) is the big one.
pub const MAX_ADMIN_BODY_BYTES: usize = 512 * 1024 * 1024;

/// Body bytes kept in an audit record.
const BODY_KEPT: usize = 4096;

/// The append-only audit trail of admin changes.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    token: Option<Arc<str>>,
}

impl AuditLog {
    /// Opens (creating it and its directory) the trail at `path`. `token` is the admin token
    /// whose presence the audit page itself requires.
    pub fn open(path: &Path, token: Option<String>) -> std::io::Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            token: token.filter(|t| !t.is_empty()).map(Into::into),
        }))
    }

    /// Where the trail is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and syncs it: an acknowledged change is on disk.
    pub fn append(&self, record: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let mut f = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// The last `n` records, oldest first.
    pub fn tail(&self, n: usize) -> std::io::Result<Vec<Value>> {
        let f = std::fs::File::open(&self.path)?;
        let mut out = std::collections::VecDeque::with_capacity(n.min(4096));
        for line in std::io::BufReader::new(f).lines() {
            let line = line?;
            if let Ok(v) = serde_json::from_str(&line) {
                if out.len() == n {
                    out.pop_front();
                }
                out.push_back(v);
            }
        }
        Ok(out.into())
    }
}

/// Who made a request: the bearer token's SHA-256 fingerprint (12 hex digits), or `anonymous`.
pub fn actor_of(headers: &axum::http::HeaderMap) -> String {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) => {
            let digest = Sha256::digest(t.as_bytes());
            let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
            format!("token:{hex}")
        }
        None => "anonymous".into(),
    }
}

/// The admin listener's app: `routes` (each guarding itself with the token), the audit page,
/// a JSON 404 for anything else, and the audit middleware around all of it.
pub fn admin_app(routes: Router, audit: Arc<AuditLog>) -> Router {
    Router::new()
        .route("/v1/admin/audit", get(read_audit))
        .with_state(audit.clone())
        .merge(routes)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such admin route; see docs/api.md"})),
            )
        })
        .layer(middleware::from_fn_with_state(audit, record))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY_BYTES))
}

async fn record(State(audit): State<Arc<AuditLog>>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let started = std::time::SystemTime::now();
    let (parts, body) = request.into_parts();
    // Buffer the body so the trail can keep its head; the handler gets it whole.
    let bytes = match axum::body::to_bytes(body, MAX_ADMIN_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"error": format!("admin request body over {MAX_ADMIN_BODY_BYTES} bytes")})),
        )
            .into_response(),
    };
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let named = parts
        .headers
        .get("x-podium-actor")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect::<String>());
    let body_kept = summary(&parts.headers, &bytes);
    let entry = json!({
        "ts_ms": started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "actor": actor_of(&parts.headers),
        "actor_name": named,
        "peer": peer,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body": body_kept,
    });
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let mut entry = entry;
    entry["status"] = json!(response.status().as_u16());
    if let Err(e) = audit.append(&entry) {
        // A change that cannot be audited is reported as failed, though it happened: the
        // operator must know the trail has a hole.
        tracing::error!(error = %e, path = %audit.path.display(), "admin audit write failed");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": format!("the change was applied but its audit record could not be written: {e}")})),
        )
            .into_response();
    }
    response
}

/// What the trail keeps of a body: JSON as JSON, text as text, else its size and digest.
fn summary(headers: &axum::http::HeaderMap, bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let json_typed = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json") || t.contains("toml") || t.starts_with("text/"));
    if json_typed && bytes.len() <= BODY_KEPT {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return v;
        }
        if let Ok(s) = std::str::from_utf8(bytes) {
            return Value::String(s.to_string());
        }
    }
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    json!({"bytes": bytes.len(), "sha256": hex})
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn read_audit(
    State(audit): State<Arc<AuditLog>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    match &audit.token {
        Some(t) => {
            if let Err(denied) = crate::admin::check_bearer(&headers, t) {
                return denied;
            }
        }
        None => {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "the audit trail needs an admin token (--admin-token)"})),
            )
                .into_response()
        }
    }
    match audit.tail(q.limit.unwrap_or(100).clamp(1, 10_000)) {
        Ok(records) => Json(json!({"path": audit.path, "records": records})).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": format!("reading the audit trail: {e}")})),
        )
            .into_response(),
    }
}
