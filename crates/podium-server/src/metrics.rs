//! `GET /metrics`: Prometheus text exposition, through the `metrics` crate and its Prometheus
//! exporter. Decision latencies are recorded as they happen; the subsystems' own counters
//! (hydration, the event stream, admission, the registry watcher) are read at scrape time.

use crate::app::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use podium_core::StageTimings;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// The process's recorder: installed once, shared by every router built in the process.
fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
                    0.1,
                ])
                .ok()?;
            // Another recorder installed first (an embedding application's) wins; /metrics then
            // says so instead of panicking.
            builder.install_recorder().ok()
        })
        .as_ref()
}

/// Installs the recorder (idempotent); call before serving so that the first decisions count.
pub fn install() {
    let _ = handle();
}

/// Records one decision's latencies: the whole and each stage.
pub fn record_decision(t: &StageTimings) {
    let s = |us: u64| us as f64 / 1e6;
    metrics::histogram!("podium_decision_duration_seconds").record(s(t.total_us));
    for (stage, us) in t.stages() {
        metrics::histogram!("podium_decision_stage_duration_seconds", "stage" => stage)
            .record(s(us));
    }
}

/// Counts a decision that served at least one stage on a fallback (store down, model failed…).
pub fn record_degraded(reasons: &[String]) {
    for r in reasons {
        let kind = r.split(':').next().unwrap_or("other").to_string();
        metrics::counter!("podium_decision_degraded_total", "reason" => kind).increment(1);
    }
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Response {
    let Some(handle) = handle() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "another metrics recorder is installed in this process",
        )
            .into_response();
    };
    refresh(&state).await;
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Copies the subsystems' counters into the recorder.
async fn refresh(state: &AppState) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    metrics::counter!("podium_admission_shed_total").absolute(state.admission().shed_total());
    metrics::gauge!("podium_ready").set(if state.ready() { 1.0 } else { 0.0 });
    if let Some(log) = state.decision_log() {
        metrics::counter!("podium_log_decisions_written_total").absolute(log.written());
        metrics::counter!("podium_log_decisions_dropped_total").absolute(log.dropped());
        metrics::counter!("podium_log_decisions_failed_total").absolute(log.failed());
    }
    if let Some(engine) = state.engine() {
        let h = engine.hydrator().stats();
        metrics::counter!("podium_features_hydrations_total").absolute(get(&h.requests));
        metrics::counter!("podium_features_store_errors_total").absolute(get(&h.store_errors));
        metrics::counter!("podium_features_store_timeouts_total").absolute(get(&h.timeouts));
        metrics::counter!("podium_features_entities_total").absolute(get(&h.entities));
        metrics::counter!("podium_features_entities_missing_total")
            .absolute(get(&h.entities_missing));
        metrics::counter!("podium_features_values_stale_total").absolute(get(&h.values_stale));
        metrics::counter!("podium_features_candidate_refreshes_total")
            .absolute(get(&h.candidate_refreshes));
        metrics::counter!("podium_features_candidate_refresh_errors_total")
            .absolute(get(&h.candidate_refresh_errors));
        for source in engine.hydrator().signals().sources() {
            let name = source.def().name.clone();
            let st = source.stats();
            for (outcome, c) in [
                ("cache_hit", &st.cache_hits),
                ("answered", &st.answered),
                ("late", &st.late),
                ("error", &st.errors),
                ("breaker_open", &st.skipped),
                ("shed", &st.shed),
                ("stale", &st.stale),
            ] {
                metrics::counter!("podium_signal_requests_total", "source" => name.clone(), "outcome" => outcome)
                    .absolute(get(c));
            }
            metrics::counter!("podium_signal_calls_total", "source" => name.clone())
                .absolute(get(&st.calls));
            metrics::counter!("podium_signal_call_failures_total", "source" => name.clone())
                .absolute(get(&st.call_failures));
            metrics::counter!("podium_signal_hedges_total", "source" => name.clone())
                .absolute(get(&st.hedges));
            metrics::counter!("podium_signal_hedge_wins_total", "source" => name.clone())
                .absolute(get(&st.hedge_wins));
            metrics::counter!("podium_signal_breaker_opened_total", "source" => name.clone())
                .absolute(get(&st.breaker_opened));
            metrics::counter!("podium_signal_values_missing_total", "source" => name.clone())
                .absolute(get(&st.values_missing));
            let state = match source.status().breaker {
                podium_features::signals::BreakerState::Closed => 0.0,
                podium_features::signals::BreakerState::Open => 1.0,
                podium_features::signals::BreakerState::HalfOpen => 2.0,
            };
            metrics::gauge!("podium_signal_breaker_state", "source" => name).set(state);
        }
        let store = crate::events::store_health(engine).await;
        let up = store["reachable"].as_bool().unwrap_or(false);
        metrics::gauge!("podium_features_store_up", "backend" => store["backend"].as_str().unwrap_or("unknown").to_string())
            .set(if up { 1.0 } else { 0.0 });
        metrics::gauge!("podium_budget_ledger_up").set(if engine.budget_ledger_up() {
            1.0
        } else {
            0.0
        });
        // Each model version's calibration over the last day, all segments together.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let calibration = engine.calibration();
        for row in calibration.report(now, 24) {
            if let (true, Some(ratio)) = (row.segment == "all", row.calibration_ratio) {
                metrics::gauge!("podium_model_calibration_ratio", "model" => row.model, "version" => row.version, "task" => row.task)
                    .set(ratio);
            }
        }
        metrics::gauge!("podium_model_calibration_alerts").set(calibration.alerts().len() as f64);
        model_figures(engine, now);
        pacing_figures(engine);
    }
    let stream = state.events().map(|e| e.stats.clone());
    if let Some(s) = stream {
        for (outcome, c) in [
            ("applied", &s.applied),
            ("malformed", &s.malformed),
            ("unknown_type", &s.unknown_type),
            ("bad_timestamp", &s.bad_timestamp),
            ("missing_entity", &s.missing_entity),
            ("late", &s.late),
            ("duplicate", &s.duplicate),
        ] {
            metrics::counter!("podium_features_events_total", "outcome" => outcome)
                .absolute(get(c));
        }
        metrics::counter!("podium_features_stream_store_errors_total")
            .absolute(get(&s.store_errors));
    }
    if let Some(status) = state.lifecycle_status() {
        metrics::gauge!("podium_registry_up").set(if status.reachable { 1.0 } else { 0.0 });
        metrics::counter!("podium_registry_swaps_total").absolute(status.swaps);
        metrics::gauge!("podium_registry_guardrail_alerts").set(status.alerts.len() as f64);
    }
}

/// Each model version's batches, failures and drift against its reference over the last hour.
fn model_figures(engine: &podium_engine::Engine, now_ms: i64) {
    let set = engine.models();
    for (model, version, s) in set.stats.all() {
        let labels = [("model", model.clone()), ("version", version.clone())];
        metrics::counter!("podium_model_batches_total", &labels).absolute(s.batches);
        metrics::counter!("podium_model_failures_total", &labels).absolute(s.failures);
    }
    for (model, version, stats) in set.stats.versions() {
        let Some(drift) = stats.drift() else {
            continue;
        };
        let r = drift.report(now_ms, podium_monitor::drift::WINDOW_MINUTES);
        let labels = [("model", model.clone()), ("version", version.clone())];
        if let Some(psi) = r.prediction.psi_reference {
            metrics::gauge!("podium_model_prediction_psi", &labels).set(psi);
        }
        for f in &r.features {
            let labels = [
                ("model", model.clone()),
                ("version", version.clone()),
                ("feature", f.name.clone()),
            ];
            if let Some(psi) = f.psi {
                metrics::gauge!("podium_model_feature_psi", &labels).set(psi);
            }
            metrics::gauge!("podium_model_feature_missing_ratio", &labels).set(f.missing_share);
        }
    }
}

/// Pacing over all line items, and spend against budget for the line items spending most.
fn pacing_figures(engine: &podium_engine::Engine) {
    let view = engine.pacing_view();
    let (budget, spent): (i64, i64) = view.iter().fold((0, 0), |(b, s), v| {
        (b + v.budget_micros, s + v.spent_micros)
    });
    metrics::gauge!("podium_pacing_budget_dollars").set(budget as f64 / 1e6);
    metrics::gauge!("podium_pacing_spent_dollars").set(spent as f64 / 1e6);
    metrics::gauge!("podium_pacing_throttled_line_items")
        .set(view.iter().filter(|v| v.throttle < 1.0).count() as f64);
    for li in crate::live::spending_most(&view) {
        let labels = [("line_item", li.line_item.clone())];
        metrics::gauge!("podium_pacing_spent_ratio", &labels)
            .set(li.spent_micros as f64 / li.budget_micros.max(1) as f64);
        metrics::gauge!("podium_pacing_target_ratio", &labels)
            .set(li.target_micros as f64 / li.budget_micros.max(1) as f64);
        metrics::gauge!("podium_pacing_multiplier", &labels).set(li.multiplier);
        metrics::gauge!("podium_pacing_throttle", &labels).set(li.throttle);
    }
}
