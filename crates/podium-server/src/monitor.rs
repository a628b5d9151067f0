//! Monitoring API: how well the models' predictions match what viewers did, how their inputs
//! and predictions drift from their bundles' references, canaries against production, the live
//! series of the dashboard, and the alert log; and the loop that samples and alerts.

use crate::api::ApiError;
use crate::app::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podium_monitor::Alert;
use podium_serving::ModelSet;
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
        "skipped_ads": c.skipped(),
        "models": c.report(now, hours),
    }))
    .into_response())
}

/// `GET /v1/monitor/alerts`: every alert — drift (this server's loop), calibration, and the
/// canary guardrails' — oldest first.
pub async fn alerts(State(state): State<AppState>) -> Result<Response, ApiError> {
    let c = engine(&state)?.calibration();
    let mut all: Vec<Alert> = state.alert_log().all();
    all.extend(c.alerts().into_iter().map(|a| Alert {
        at_ms: a.ts_ms,
        source: "calibration".into(),
        model: a.model,
        version: a.version,
        rule: format!("calibration_{}", a.task),
        detail: format!(
            "calibration ratio {:.3} (Σ predicted ÷ Σ observed) over {:.0} outcomes",
            a.calibration_ratio, a.observed
        ),
        action: None,
    }));
    if let Some(status) = state.lifecycle_status() {
        all.extend(status.alerts.into_iter().map(|a| Alert {
            at_ms: a.at_ms as i64,
            source: "guardrail".into(),
            model: a.model,
            version: a.version,
            rule: a.rule,
            detail: a.detail,
            action: Some(a.action),
        }));
    }
    all.sort_by_key(|a| a.at_ms);
    Ok(Json(json!({ "alerts": all })).into_response())
}

/// Where a version serves: `(stage, percent, task)` by `(model, version)`.
fn stages(set: &ModelSet) -> HashMap<(String, String), (&'static str, Option<f64>, String)> {
    let mut out = HashMap::new();
    let key = |m: &podium_model::Model| (m.name().to_string(), m.version().to_string());
    for slot in std::iter::once(&set.ranker).chain(&set.scorers) {
        let task = slot.task().to_string();
        for (i, m) in slot.models().enumerate() {
            let stage = if i == 0 { "production" } else { "fallback" };
            out.entry(key(m.model()))
                .or_insert((stage, None, task.clone()));
        }
        if let Some(c) = slot.canary() {
            out.insert(
                key(c.model.model()),
                ("canary", Some(c.percent), task.clone()),
            );
        }
        if let Some(c) = slot.shadow() {
            out.insert(
                key(c.model.model()),
                ("shadow", Some(c.percent), task.clone()),
            );
        }
        for a in slot.alternates() {
            out.entry(key(a.model.model()))
                .or_insert(("alternate", None, task.clone()));
        }
    }
    for m in &set.serve_only {
        out.entry(key(m))
            .or_insert(("serve_only", None, m.manifest().task.clone()));
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn whole(
    q: &HashMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .ok()
            .filter(|v| (1..=max).contains(v))
            .ok_or_else(|| {
                ApiError::field(name, format!("must be a whole number from 1 to {max}"))
            }),
    }
}

/// `GET /v1/monitor/drift?minutes=N` (default 60, at most 60): per model version, its inputs'
/// and predictions' drift against the bundle's reference (PSI, Jensen–Shannon distance, missing
/// shares), and its predictions against production's over the same bins.
pub async fn drift(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let minutes = whole(&q, "minutes", 60, podium_monitor::drift::WINDOW_MINUTES)?;
    let engine = engine(&state)?;
    let set = engine.models();
    let stages = stages(&set);
    let now = now_ms();
    let snapshots = set.stats.all();
    let production_bins = |model: &str| {
        let version = stages
            .iter()
            .find(|((m, _), (stage, _, _))| m == model && *stage == "production")
            .map(|((_, v), _)| v.clone())?;
        snapshots
            .iter()
            .find(|(m, v, _)| m == model && *v == version)
            .map(|(_, _, s)| s.bins.clone())
    };
    let mut models = Vec::new();
    for (name, version, stats) in set.stats.versions() {
        let Some(&(stage, _, _)) = stages.get(&(name.clone(), version.clone())) else {
            continue;
        };
        let own_bins = snapshots
            .iter()
            .find(|(m, v, _)| *m == name && *v == version)
            .map(|(_, _, s)| s.bins.clone())
            .unwrap_or_default();
        let vs_production = (stage != "production")
            .then(|| production_bins(&name))
            .flatten();
        let psi_production = vs_production
            .as_ref()
            .and_then(|p| podium_monitor::stat::psi(p, &own_bins));
        let js_production = vs_production
            .as_ref()
            .and_then(|p| podium_monitor::stat::js_distance(p, &own_bins));
        let report = stats.drift().map(|d| d.report(now, minutes));
        models.push(match report {
            Some(r) => json!({
                "model": name, "version": version, "stage": stage, "has_reference": true,
                "sampled_rows": r.sampled_rows,
                "prediction": {
                    "psi_reference": r.prediction.psi_reference,
                    "js_reference": r.prediction.js_reference,
                    "psi_production": psi_production,
                    "js_production": js_production,
                    "band": r.prediction.band,
                    "edges": r.prediction.edges,
                    "reference": r.prediction.reference,
                    "live": r.prediction.live,
                },
                "features": r.features,
            }),
            None => json!({
                "model": name, "version": version, "stage": stage, "has_reference": false,
                "sampled_rows": 0,
                "prediction": {
                    "psi_reference": null, "js_reference": null,
                    "psi_production": psi_production, "js_production": js_production,
                    "band": "no reference",
                    "edges": (0..=podium_serving::SCORE_BINS).map(|i| i as f64 / podium_serving::SCORE_BINS as f64).collect::<Vec<_>>(),
                    "reference": [],
                    "live": own_bins,
                },
                "features": [],
            }),
        });
    }
    Ok(Json(json!({"minutes": minutes, "models": models})).into_response())
}

/// `GET /v1/monitor/canaries`: each canary against production, every rule's test (from the
/// registry watcher's last judgement).
pub async fn canaries(State(state): State<AppState>) -> Result<Response, ApiError> {
    let canaries = state
        .lifecycle_status()
        .map(|s| s.canaries)
        .unwrap_or_default();
    Ok(Json(json!({ "canaries": canaries })).into_response())
}

/// `GET /v1/monitor/live?seconds=N` (default 300): per-second decision rate and latency
/// percentiles per stage, each model version's rate and latency, and the line items spending most:
/// pacing curves.
pub async fn live(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let seconds = whole(&q, "seconds", 300, crate::live::KEEP_SECONDS)?;
    let live = state.live();
    let mut models = Vec::new();
    let mut pacing = Vec::new();
    if let Some(engine) = state.engine() {
        let set = engine.models();
        let stages = stages(&set);
        for (name, version, s) in set.stats.all() {
            let Some((stage, percent, task)) = stages.get(&(name.clone(), version.clone())) else {
                continue;
            };
            let series = live.model_series(&name, &version);
            let last = series.last();
            models.push(json!({
                "model": name, "version": version, "stage": stage, "task": task,
                "percent": percent,
                "batches_per_s": last.map_or(0.0, |p| p.batches_per_s),
                "rows_per_s": last.map_or(0.0, |p| p.rows_per_s),
                "p50_us": s.p50_us, "p99_us": s.p99_us, "error_rate": s.error_rate,
                "series": series,
            }));
        }
        let view = engine.pacing_view();
        for li in crate::live::spending_most(&view) {
            let mut row = serde_json::to_value(li).unwrap_or_default();
            row["series"] = json!(live.pacing_series(&li.line_item));
            pacing.push(row);
        }
    }
    Ok(Json(json!({
        "now_ms": now_ms(),
        "points": live.points(seconds),
        "models": models,
        "pacing": pacing,
    }))
    .into_response())
}

/// Seconds between drift checks of the alert loop.
const DRIFT_EVERY_S: i64 = 10;
/// Window of the drift alert checks, minutes.
const DRIFT_WINDOW_MINUTES: usize = 15;
/// Largest rise of an input's missing share over its reference before an alert.
const MAX_MISSING_RISE: f64 = 0.2;

/// Starts the monitoring loop: the live series every second, model and pacing samples, and
/// drift checks that raise alerts.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            let now = now_ms();
            state.live().tick(now, state.admission().shed_total());
            let Some(engine) = state.engine() else {
                continue;
            };
            let (models, pacing) = crate::live::Live::due(now);
            if models {
                let versions = engine
                    .models()
                    .stats
                    .all()
                    .into_iter()
                    .map(|(m, v, s)| {
                        let mut recent = s.recent_us.clone();
                        recent.sort_unstable();
                        let p99 = recent
                            .get((recent.len() * 99 / 100).min(recent.len().saturating_sub(1)))
                            .copied()
                            .unwrap_or(0) as u64;
                        (m, v, s.batches, s.rows, p99)
                    })
                    .collect();
                state.live().sample_models(now, versions);
            }
            if pacing {
                state.live().sample_pacing(now, &engine.pacing_view());
            }
            if (now / 1000) % DRIFT_EVERY_S == 0 {
                check_drift(&state, engine, now);
            }
        }
    })
}

/// Raises an alert for each version whose predictions or inputs moved into the major band, or
/// whose inputs go missing far more often than in the reference.
fn check_drift(state: &AppState, engine: &podium_engine::Engine, now: i64) {
    for (name, version, stats) in engine.models().stats.versions() {
        let Some(sketch) = stats.drift() else {
            continue;
        };
        let report = sketch.report(now, DRIFT_WINDOW_MINUTES);
        let active = podium_monitor::drift::findings(&report, MAX_MISSING_RISE)
            .into_iter()
            .map(|(rule, subject, detail)| {
                (
                    format!("{rule}/{subject}"),
                    Alert {
                        at_ms: now,
                        source: "drift".into(),
                        model: name.clone(),
                        version: version.clone(),
                        rule,
                        detail,
                        action: None,
                    },
                )
            })
            .collect();
        for a in state
            .alert_log()
            .observe(&format!("drift/{name}/{version}"), active)
        {
            tracing::warn!(model = %a.model, version = %a.version, rule = %a.rule, detail = %a.detail, "drift alert");
            metrics::counter!("podium_model_drift_alerts_total", "model" => a.model.clone(), "rule" => a.rule.clone())
                .increment(1);
        }
    }
}
