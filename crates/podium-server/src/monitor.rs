//! Monitoring API: how well the models' predictions match what viewers did.

use crate::api::ApiError;
use crate::app::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

fn engine(state: &AppState) -> Result<&podium_engine::Engine, ApiError> {
    state.engine().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "models are loading; retry shortly",
        )
    })
}

/// `GET /v1/monitor/calibration?hours=N` (default 24, at most 48): per model version, task and
/// segment, Σ predicted ÷ Σ observed, normalised entropy, ECE and the reliability curve.
pub async fn calibration(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let hours: i64 = match q.get("hours") {
        None => 24,
        Some(h) => h
            .parse()
            .ok()
            .filter(|h| (1..=48).contains(h))
            .ok_or_else(|| ApiError::field("hours", "must be a whole number from 1 to 48"))?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let c = engine(&state)?.calibration();
    Ok(Json(json!({
        "hours": hours,
        "pending_ads": c.pending(),
        "models": c.report(now, hours),
    }))
    .into_response())
}

/// `GET /v1/monitor/alerts`: calibration alerts raised, oldest first.
pub async fn alerts(State(state): State<AppState>) -> Result<Response, ApiError> {
    let c = engine(&state)?.calibration();
    Ok(Json(json!({"alerts": c.alerts()})).into_response())
}
