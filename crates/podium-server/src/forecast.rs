//! Avails forecasts over the admin API: `POST /v1/admin/forecast/avails` answers what
//! `podium forecast avails` answers, from the server's own decision log and marketplace;
//! `GET /v1/admin/forecast/plot` draws a slice's history and forecast (linked from the
//! dashboard).
//!
//! The model is learned from the log on first use and again when the log's files have changed
//! (at most once a minute), off the async workers. With an admin token configured the routes
//! need it, as every admin route does; without one they are open (they only read).

use crate::admin::check_bearer;
use crate::AppState;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use podium_forecast::{
    AvailsQuery, Cap, ForecastError, ModelConfig, Targeting, TrafficModel, Window,
};
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the forecast reads from.
#[derive(Clone, Debug)]
pub struct ForecastConfig {
    /// The decision log directory (`<log dir>`, holding `decisions/`).
    pub log_dir: PathBuf,
    /// The live-event calendar; `events.toml` beside the log when absent.
    pub calendar: Option<PathBuf>,
    /// The admin token, when the admin API has one.
    pub token: Option<String>,
}

type Cached = (u64, Instant, Arc<TrafficModel>);

#[derive(Clone)]
struct ForecastState {
    app: AppState,
    cfg: Arc<ForecastConfig>,
    model: Arc<Mutex<Option<Cached>>>,
}

/// The forecast routes.
pub fn forecast_router(app: AppState, cfg: ForecastConfig) -> Router {
    let state = ForecastState {
        app,
        cfg: Arc::new(cfg),
        model: Arc::default(),
    };
    Router::new()
        .route("/v1/admin/forecast/avails", post(avails))
        .route("/v1/admin/forecast/plot", get(plot))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn guard(State(state): State<ForecastState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.cfg.token {
        if let Err(denied) = check_bearer(request.headers(), token) {
            return denied;
        }
    }
    next.run(request).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn forecast_error(e: ForecastError) -> Response {
    let status = match e {
        ForecastError::UnknownValue(_) | ForecastError::BadWindow(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, e.to_string())
}

/// A fingerprint of the log's decision files (names and sizes).
fn fingerprint(cfg: &ForecastConfig) -> Result<u64, String> {
    let files = podium_forecast::read::decision_files(&cfg.log_dir)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let size = std::fs::metadata(&f).map_or(0, |m| m.len());
        for b in f.to_string_lossy().bytes().chain(size.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(h)
}

/// The model of the log as it is now (relearned when its files changed, at most once a minute).
async fn model(state: &ForecastState) -> Result<Arc<TrafficModel>, Response> {
    let cfg = state.cfg.clone();
    let cache = state.model.clone();
    let join = tokio::task::spawn_blocking(move || {
        let fp = fingerprint(&cfg)?;
        {
            let held = cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((f, at, m)) = held.as_ref() {
                if *f == fp || at.elapsed() < Duration::from_secs(60) {
                    return Ok(m.clone());
                }
            }
        }
        let loaded = podium_forecast::load(
            &cfg.log_dir,
            cfg.calendar.as_deref(),
            ModelConfig::default(),
            None,
        )?;
        let m = Arc::new(loaded.model);
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((fp, Instant::now(), m.clone()));
        Ok::<_, String>(m)
    })
    .await;
    match join {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The body of `POST /v1/admin/forecast/avails`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AvailsBody {
    #[serde(default)]
    targeting: String,
    start: String,
    end: String,
    #[serde(default)]
    cap: Option<String>,
    #[serde(default)]
    impressions: Option<u64>,
}

#[allow(clippy::result_large_err)]
fn query_of(
    targeting: &str,
    start: &str,
    end: &str,
    cap: Option<&str>,
    impressions: Option<u64>,
) -> Result<AvailsQuery, Response> {
    let bad = |what: &str, e: String| error(StatusCode::BAD_REQUEST, format!("{what}: {e}"));
    Ok(AvailsQuery {
        targeting: Targeting::parse(targeting).map_err(|e| bad("targeting", e))?,
        window: Window {
            start_ms: podium_forecast::parse_time(start).map_err(|e| bad("start", e))?,
            end_ms: podium_forecast::parse_time(end).map_err(|e| bad("end", e))?,
        },
        cap: cap.map(Cap::parse).transpose().map_err(|e| bad("cap", e))?,
        impressions,
    })
}

async fn avails(State(state): State<ForecastState>, body: axum::body::Bytes) -> Response {
    let body: AvailsBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let q = match query_of(
        &body.targeting,
        &body.start,
        &body.end,
        body.cap.as_deref(),
        body.impressions,
    ) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let model = match model(&state).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let market = state.app.engine().map(|e| e.market());
    let items = market.as_ref().map(|m| m.marketplace.line_items.as_slice());
    match podium_forecast::avails(&model, &q, items) {
        Ok(a) => Json(a).into_response(),
        Err(e) => forecast_error(e),
    }
}

/// Query of `GET /v1/admin/forecast/plot`: all optional (all traffic, the week after the log).
#[derive(Debug, Deserialize)]
struct PlotParams {
    #[serde(default)]
    targeting: String,
    start: Option<String>,
    end: Option<String>,
}

async fn plot(State(state): State<ForecastState>, Query(p): Query<PlotParams>) -> Response {
    let model = match model(&state).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let origin = podium_forecast::model::iso(model.origin_ms());
    let week_after = podium_forecast::model::iso(model.origin_ms() + 7 * 86_400_000);
    let q = match query_of(
        &p.targeting,
        p.start.as_deref().unwrap_or(&origin),
        p.end.as_deref().unwrap_or(&week_after),
        None,
        None,
    ) {
        Ok(q) => q,
        Err(r) => return r,
    };
    match podium_forecast::forecast_chart(&model, &q.targeting, q.window) {
        Ok(chart) => {
            let intro = format!(
                "<p>Learned from {} requests of the decision log; history until {origin}. \
                 Other slices: <code>?targeting=country=US,device=tv&amp;start=…&amp;end=…</code>. \
                 <a href=\"/dashboard\">Back to the dashboard</a></p>",
                model.requests()
            );
            (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                chart.page(&intro),
            )
                .into_response()
        }
        Err(e) => forecast_error(e),
    }
}
