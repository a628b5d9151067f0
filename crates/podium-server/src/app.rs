//! The router and its shared state.

use crate::admission::{self, Admission, AdmissionConfig};
use crate::api::{parse_decide, ApiError, DecideResponse};
use crate::oip;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use podium_engine::Engine;
use podium_log::MemoryLog;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tower_http::catch_panic::CatchPanicLayer;

/// Largest decide request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest Open Inference Protocol request body (batches of rows are larger than ad requests).
pub const MAX_INFER_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Largest total size of a request's header fields (names and values); more gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most header fields in one request; more gets 431.
pub const MAX_HEADERS: usize = 64;

/// Longest request target (path and query); longer gets 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Refuses requests whose target or headers are over the limits before any handler reads
/// them: a decision server's requests are small, and a huge cookie or query string is either a
/// bug or an attack.
async fn limit_request_head(request: axum::extract::Request, next: middleware::Next) -> Response {
    let uri_len = request.uri().path().len() + request.uri().query().map_or(0, |q| q.len() + 1);
    if uri_len > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("request target is {uri_len} bytes; the limit is {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "{} header fields of {bytes} bytes; the limits are {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes",
                headers.len()
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// What handlers share. The engine is set once models are loaded and warm; until then decisions
/// answer 503 and `/readyz` says so.
#[derive(Clone)]
pub struct AppState {
    engine: Arc<OnceLock<Engine>>,
    log: Arc<OnceLock<MemoryLog>>,
    admission: Admission,
    /// Model calls (Open Inference Protocol) have their own limits: a call is a small batch,
    /// often many rows of many callers micro-batched together, so more of them may be in flight.
    model_admission: Admission,
    default_tmax: Duration,
    batchers: Arc<dashmap::DashMap<(String, String), podium_serving::MicroBatcher>>,
    lifecycle: Arc<OnceLock<podium_lifecycle::Lifecycle>>,
    events: Arc<OnceLock<crate::events::EventIngest>>,
    public_urls: Arc<OnceLock<crate::adserving::PublicUrls>>,
    shader: Arc<podium_auction::BidShader>,
    live: Arc<crate::live::Live>,
    alerts: Arc<podium_monitor::AlertLog>,
    tracer: Arc<OnceLock<crate::otlp::DecisionTracer>>,
    decision_log: Arc<OnceLock<Arc<podium_log::ParquetLog<podium_features::offline::DecisionRow>>>>,
    admin_url: Arc<OnceLock<String>>,
}

impl Default for AppState {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(
            AdmissionConfig::for_threads(threads),
            Duration::from_millis(20),
        )
    }
}

impl AppState {
    /// State with no engine yet, admission limits, and the deadline of requests that set none.
    pub fn new(admission: AdmissionConfig, default_tmax: Duration) -> Self {
        Self {
            engine: Arc::default(),
            log: Arc::default(),
            model_admission: Admission::new(admission.for_model_calls()),
            admission: Admission::new(admission),
            default_tmax,
            batchers: Arc::default(),
            lifecycle: Arc::default(),
            admin_url: Arc::default(),
            events: Arc::default(),
            public_urls: Arc::default(),
            shader: Arc::new(crate::adserving::default_shader()),
            live: Arc::default(),
            alerts: Arc::default(),
            tracer: Arc::default(),
            decision_log: Arc::default(),
        }
    }

    /// The decision log, for its counters in `/metrics`.
    pub fn set_decision_log(
        &self,
        log: Arc<podium_log::ParquetLog<podium_features::offline::DecisionRow>>,
    ) {
        let _ = self.decision_log.set(log);
    }

    /// The decision log, when one is written.
    pub fn decision_log(
        &self,
    ) -> Option<&Arc<podium_log::ParquetLog<podium_features::offline::DecisionRow>>> {
        self.decision_log.get()
    }

    /// Exports sampled decisions' traces over OTLP from now on.
    pub fn set_tracer(&self, tracer: crate::otlp::DecisionTracer) {
        let _ = self.tracer.set(tracer);
    }

    /// Sends the traces still queued (at shutdown).
    pub fn flush_traces(&self) {
        if let Some(t) = self.tracer.get() {
            t.flush();
        }
    }

    /// Records a decision in the metrics and the live series.
    pub fn observe(&self, decision: &podium_core::Decision, endpoint: &'static str) {
        crate::metrics::record_decision(&decision.timings);
        if !decision.degraded.is_empty() {
            crate::metrics::record_degraded(&decision.degraded);
        }
        self.live
            .record(&decision.timings, !decision.degraded.is_empty());
        if let Some(tracer) = self.tracer.get() {
            let received =
                std::time::SystemTime::now() - Duration::from_micros(decision.timings.total_us);
            tracer.record(received, decision, endpoint);
        }
    }

    /// The live time series of the dashboard.
    pub fn live(&self) -> &crate::live::Live {
        &self.live
    }

    /// The drift alerts raised (calibration and guardrail alerts live with their monitors).
    pub fn alert_log(&self) -> &podium_monitor::AlertLog {
        &self.alerts
    }

    /// The admin listener's base URL, for the dashboard's links to admin pages.
    pub fn set_admin_url(&self, url: String) {
        let _ = self.admin_url.set(url);
    }

    /// The admin listener's base URL, once set.
    pub fn admin_url(&self) -> Option<&str> {
        self.admin_url.get().map(String::as_str)
    }

    /// Sets where tracking and notice URLs point (this server as players reach it).
    pub fn set_public_urls(&self, urls: crate::adserving::PublicUrls) {
        let _ = self.public_urls.set(urls);
    }

    /// Where tracking and notice URLs point; `http://localhost` until set.
    pub fn public_urls(&self) -> crate::adserving::PublicUrls {
        self.public_urls
            .get()
            .cloned()
            .unwrap_or_else(|| crate::adserving::PublicUrls::new("http://localhost", None))
    }

    /// The first-price bid shader.
    pub fn shader(&self) -> &podium_auction::BidShader {
        &self.shader
    }

    /// The micro-batching task of a model version, started on first use.
    pub fn batcher(
        &self,
        model: &podium_model::Model,
        pool: &podium_serving::ComputePool,
        config: podium_serving::BatchConfig,
    ) -> podium_serving::MicroBatcher {
        let key = (model.name().to_string(), model.version().to_string());
        if let Some(b) = self.batchers.get(&key) {
            return b.clone();
        }
        // A new version is being batched: drop the batchers of versions no longer served, so a
        // swapped-out model's memory is not held by its idle batcher.
        if let Some(engine) = self.engine.get() {
            let models = engine.models();
            self.batchers.retain(|(name, version), _| {
                models
                    .versions_of(name)
                    .iter()
                    .any(|m| m.version() == version)
            });
        }
        self.batchers
            .entry(key)
            .or_insert_with(|| {
                podium_serving::MicroBatcher::spawn(model.clone(), pool.clone(), config)
            })
            .clone()
    }

    /// The admission controller.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Publishes the engine, making the server ready. Later calls are ignored.
    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    /// Attaches the registry watcher, whose status `/v1/lifecycle` and `/readyz` report.
    pub fn set_lifecycle(&self, lifecycle: podium_lifecycle::Lifecycle) {
        let _ = self.lifecycle.set(lifecycle);
    }

    /// Gives the admin API read access to the in-memory decision log.
    pub fn set_log(&self, log: MemoryLog) {
        let _ = self.log.set(log);
    }

    /// Accepts events over `POST /v1/events` into this in-process bus.
    pub fn set_event_ingest(&self, ingest: crate::events::EventIngest) {
        let _ = self.events.set(ingest);
    }

    /// The in-process event bus, when events come over HTTP.
    pub fn events(&self) -> Option<&crate::events::EventIngest> {
        self.events.get()
    }

    /// The registry watcher's status, when serving from a registry.
    pub fn lifecycle_status(&self) -> Option<podium_lifecycle::Status> {
        self.lifecycle.get().map(|l| l.status())
    }

    /// The engine, once ready.
    pub fn engine(&self) -> Option<&Engine> {
        self.engine.get()
    }

    /// Whether the engine is ready.
    pub fn ready(&self) -> bool {
        self.engine.get().is_some()
    }
}

/// The HTTP API: decide, health, readiness and recent decisions.
pub fn router(state: AppState) -> Router {
    crate::metrics::install();
    let limits = (state.admission.clone(), state.default_tmax);
    let decisions = Router::new()
        .route("/v1/decide", post(decide))
        .route("/openrtb2/auction", post(crate::adserving::openrtb_auction))
        .route("/v1/vast", get(crate::adserving::vast))
        .route_layer(middleware::from_fn_with_state(
            limits.clone(),
            admission::admit_decide,
        ));
    let inference = Router::new()
        .route("/v2/models/{name}/infer", post(oip::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(oip::infer),
        )
        .route_layer(middleware::from_fn_with_state(
            (state.model_admission.clone(), state.default_tmax),
            admission::admit_or_503,
        ))
        .route_layer(DefaultBodyLimit::max(MAX_INFER_BODY_BYTES));
    Router::new()
        .merge(decisions)
        .merge(inference)
        .route("/v1/decisions/recent", get(recent_decisions))
        .route(
            "/v1/events",
            post(crate::events::ingest)
                .layer(DefaultBodyLimit::max(crate::events::MAX_EVENTS_BODY_BYTES)),
        )
        .route("/v1/track", get(crate::adserving::track))
        .route("/v1/openrtb/win", get(crate::adserving::win))
        .route("/v1/openrtb/loss", get(crate::adserving::loss))
        .route("/v1/auction/state", get(crate::adserving::auction_state))
        .route("/v1/monitor/calibration", get(crate::monitor::calibration))
        .route("/v1/monitor/alerts", get(crate::monitor::alerts))
        .route("/v1/monitor/drift", get(crate::monitor::drift))
        .route("/v1/monitor/canaries", get(crate::monitor::canaries))
        .route("/v1/monitor/live", get(crate::monitor::live))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/{file}", get(crate::dashboard::asset))
        .route("/v1/features/stats", get(crate::events::stats))
        .route("/metrics", get(crate::metrics::render))
        .route("/v1/features/hydrate", post(crate::events::hydrate))
        .route("/healthz", get(healthz))
        .route("/openapi.yaml", get(openapi))
        .route("/v1/lifecycle", get(lifecycle))
        .route("/v1/lifecycle/shadow", get(shadow_recent))
        .route("/readyz", get(readyz))
        .route("/v2", get(oip::server_metadata))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2/models/{name}", get(oip::metadata))
        .route("/v2/models/{name}/ready", get(oip::model_ready))
        .route("/v2/models/{name}/versions/{version}", get(oip::metadata))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(oip::model_ready),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(limit_request_head))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }))
        .with_state(state)
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The decision listener's OpenAPI 3 description (what schemathesis checks the server against).
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        OPENAPI_YAML,
    )
        .into_response()
}

async fn decide(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DecideResponse>, ApiError> {
    let received = Instant::now();
    let body = body.map_err(|e| ApiError::body(e, MAX_BODY_BYTES))?;
    let request = parse_decide(&body)?;
    let engine = state.engine.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "models are loading; retry shortly",
        )
    })?;
    let decision = engine.decide(request, received).await;
    state.observe(&decision, "/v1/decide");
    Ok(Json(decision.into()))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /v1/lifecycle`: what the registry watcher serves, its guardrail alerts, and the live
/// figures of every model version.
async fn lifecycle(State(state): State<AppState>) -> Response {
    let status = state.lifecycle.get().map(|l| l.status());
    let stats: Vec<Value> = state
        .engine
        .get()
        .map(|e| {
            e.models()
                .stats
                .all()
                .into_iter()
                .map(|(name, version, s)| json!({"model": name, "version": version, "stats": s}))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({"registry": status, "versions": stats})).into_response()
}

/// `GET /v1/lifecycle/shadow?n=N`: the latest shadow scores beside production's.
async fn shadow_recent(
    State(state): State<AppState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let n = q
        .get("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(20usize)
        .min(1000);
    let records = state
        .engine
        .get()
        .map(|e| e.shadow_recent(n))
        .unwrap_or_default();
    Json(json!({"records": records})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine.get() {
        Some(engine) => {
            let models = engine.models();
            let list: Vec<_> = models
                .all()
                .map(|b| b.model())
                .chain(&models.serve_only)
                .map(|m| json!({"name": m.name(), "version": m.version()}))
                .collect();
            let market = engine.market();
            let mut body = json!({"ready": true, "models": list, "line_items": market.marketplace.line_items.len()});
            // Decisions go on with defaults when the feature store is down; readiness says so.
            body["features"] = crate::events::store_health(engine).await;
            // Real-time signal sources: a skipped one serves its defaults, readiness says which.
            if let Some(signals) = crate::events::signals_json(engine) {
                body["signals"] = signals;
            }
            // Serving goes on when the registry cannot be read; readiness says so.
            if let Some(lifecycle) = state.lifecycle.get() {
                let s = lifecycle.status();
                body["registry"] = json!({
                    "url": s.registry,
                    "reachable": s.reachable,
                    "last_error": s.last_error,
                    "last_sync_ms": s.last_sync_ms,
                });
            }
            Json(body).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "models are loading"})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct RecentQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    20
}

async fn recent_decisions(
    State(state): State<AppState>,
    query: Result<Query<RecentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::field("limit", e.body_text()))?;
    let log = state.log.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server keeps no in-memory decision log",
        )
    })?;
    Ok(Json(log.recent(q.limit.min(1000)).await).into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /v1/decide, /openrtb2/auction, /v1/vast, /healthz, /readyz",
    )
}

/// Serves the router on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, Router::new(), shutdown).await
}

/// As [`serve`], with more routes beside the API (the admin API, when configured).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    extra: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let monitor = crate::monitor::spawn(state.clone());
    let served = axum::serve(listener, router(state).merge(extra))
        .with_graceful_shutdown(shutdown)
        .await;
    monitor.abort();
    served
}
