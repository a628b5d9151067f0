//! Feature endpoints: event ingestion into the in-process stream, and hydration/stream counters.

use crate::api::ApiError;
use crate::app::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podium_features::{HydrationStats, StreamStats};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest event batch accepted in one `POST /v1/events`.
pub const MAX_EVENTS_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Where ingested events go, and the counters of the aggregator that reads them.
#[derive(Clone)]
pub struct EventIngest {
    /// The in-process bus, or the fleet's NATS JetStream stream.
    pub sink: EventSink,
    /// The aggregator's counters.
    pub stats: Arc<StreamStats>,
}

/// Where a server puts the events it takes (posted, or from tracking pixels).
#[derive(Clone)]
pub enum EventSink {
    /// The sending side of this process's aggregator bus.
    InProcess(mpsc::Sender<Vec<u8>>),
    /// JetStream, which every server of the fleet consumes (spooled to disk while away).
    Nats(Arc<podium_features::Publisher>),
}

impl EventIngest {
    /// Hands `events` on; returns once they are queued (in process) or acknowledged by
    /// JetStream or synced to the spool (NATS).
    pub async fn submit(&self, events: Vec<Vec<u8>>) -> Result<(), ApiError> {
        match &self.sink {
            EventSink::InProcess(sender) => {
                for e in events {
                    // Back-pressure: the bus is bounded, so a flood waits here rather than
                    // growing memory.
                    if sender.send(e).await.is_err() {
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the event aggregator has stopped",
                        ));
                    }
                }
                Ok(())
            }
            EventSink::Nats(publisher) => publisher.publish(events).await.map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("NATS is unreachable and the event spool cannot be written: {e}"),
                )
            }),
        }
    }
}

/// `POST /v1/events`: a JSON array of events, or one event per line (NDJSON). Each event is
/// queued as sent (in a fleet, published to NATS JetStream or spooled to disk); the aggregator validates it and counts rejections by reason (see
/// `GET /v1/features/stats`). A body that is neither is refused whole with 400, naming the line.
pub async fn ingest(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::body(e, MAX_EVENTS_BODY_BYTES))?;
    let ingest = state.events().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event stream is not started yet; retry shortly",
        )
    })?;
    let events = split(&body)?;
    let n = events.len();
    ingest.submit(events).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": n}))).into_response())
}

/// Splits a body into the raw bytes of each event.
fn split(body: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::field("body", e))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<Value> =
            serde_json::from_str(trimmed).map_err(|e| ApiError::field("body", e))?;
        return Ok(items
            .iter()
            .map(|v| serde_json::to_vec(v).unwrap_or_default())
            .collect());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<serde::de::IgnoredAny>(l)
                .map(|_| l.as_bytes().to_vec())
                .map_err(|e| ApiError::field(format!("line {}", i + 1), e))
        })
        .collect()
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Hydration counters as JSON.
pub fn hydration_json(s: &HydrationStats) -> Value {
    json!({
        "requests": get(&s.requests),
        "store_errors": get(&s.store_errors),
        "timeouts": get(&s.timeouts),
        "entities": get(&s.entities),
        "entities_missing": get(&s.entities_missing),
        "values_stale": get(&s.values_stale),
        "candidate_refreshes": get(&s.candidate_refreshes),
        "candidate_refresh_errors": get(&s.candidate_refresh_errors),
    })
}

/// Stream counters as JSON.
pub fn stream_json(s: &StreamStats) -> Value {
    json!({
        "applied": get(&s.applied),
        "rejected": {
            "malformed": get(&s.malformed),
            "unknown_type": get(&s.unknown_type),
            "bad_timestamp": get(&s.bad_timestamp),
            "missing_entity": get(&s.missing_entity),
            "late": get(&s.late),
        },
        "duplicate": get(&s.duplicate),
        "store_errors": get(&s.store_errors),
    })
}

/// `GET /v1/features/stats`: hydration outcomes, the store's health and the stream's counters.
pub async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let engine = state
        .engine()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "models are loading"))?;
    let caps = engine.frequency_store();
    let mut body = json!({
        "hydration": hydration_json(engine.hydrator().stats()),
        "store": store_health(engine).await,
        "frequency_caps": {"backend": caps.backend(), "pending_writes": caps.pending_writes()},
    });
    if let Some(signals) = signals_json(engine) {
        body["signals"] = signals;
    }
    if let Some(ingest) = state.events() {
        body["stream"] = stream_json(&ingest.stats);
        if let EventSink::Nats(p) = &ingest.sink {
            let s = p.stats();
            body["publisher"] = json!({
                "published": get(&s.published),
                "spooled": get(&s.spooled),
                "drained": get(&s.drained),
                "errors": get(&s.errors),
                "spool_pending_bytes": p.spool_pending_bytes().await,
            });
        }
    }
    Ok(Json(body).into_response())
}

/// `POST /v1/features/hydrate`: a decide request's retrieval and hydration only — the features
/// it would be served and how long the fetch took (for debugging and the hydration benchmark).
pub async fn hydrate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::body(e, crate::MAX_BODY_BYTES))?;
    let req = crate::api::parse_decide(&body)?;
    let engine = state
        .engine()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "models are loading"))?;
    Ok(Json(engine.hydrate_only(&req).await).into_response())
}

/// Each real-time signal source's state and counters, one flat object per source; `None` when
/// there is none.
pub fn signals_json(engine: &podium_engine::Engine) -> Option<Value> {
    let signals = engine.hydrator().signals();
    (!signals.is_empty()).then(|| {
        signals
            .sources()
            .iter()
            .map(|s| {
                let mut v = json!(s.status());
                if let (Some(o), Value::Object(c)) = (v.as_object_mut(), json!(s.stats())) {
                    o.extend(c);
                }
                v
            })
            .collect()
    })
}

/// The online store's health: reachable or the error, within 250 ms.
pub async fn store_health(engine: &podium_engine::Engine) -> Value {
    let store = engine.hydrator().store();
    let ping = tokio::time::timeout(std::time::Duration::from_millis(250), store.ping()).await;
    match ping {
        Ok(Ok(())) => json!({"backend": store.backend(), "reachable": true}),
        Ok(Err(e)) => {
            json!({"backend": store.backend(), "reachable": false, "error": e.to_string()})
        }
        Err(_) => {
            json!({"backend": store.backend(), "reachable": false, "error": "ping exceeded 250 ms"})
        }
    }
}
