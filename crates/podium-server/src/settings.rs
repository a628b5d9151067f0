//! Admin routes over the fleet's run-time settings: line items' daily budgets and the
//! experiments file. A change is written to the shared settings store (Redis in a fleet) and
//! applied on this server at once; every other server applies it at its next poll (a second).
//!
//! - `GET /v1/admin/budgets`: every line item's daily budget now, the marketplace's, whether it
//!   was set at run time, and today's spend and pacing target (the ledger's, across the fleet).
//! - `PUT /v1/admin/budgets/{line_item}` with `{"daily_budget": 250.0}` (currency units) sets
//!   it; `{"daily_budget": null}` goes back to the marketplace's.
//! - `GET /v1/admin/experiments`: the experiments file in force (TOML) and where it came from.
//! - `PUT /v1/admin/experiments` with a TOML body sets it for the fleet (checked first: shares,
//!   names, and that each model version an arm names is loaded); `DELETE` goes back to the file
//!   the servers started with.

use crate::admin::check_bearer;
use crate::api::ApiError;
use crate::app::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use podium_core::Micros;
use podium_pacing::settings::SettingsStore;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// What the settings routes need.
#[derive(Clone)]
pub struct SettingsAdmin {
    /// The server's state (its engine).
    pub app: AppState,
    /// The shared settings.
    pub store: Arc<dyn SettingsStore>,
    /// The admin token; without one these routes refuse every call.
    pub token: Option<String>,
    /// The experiments file the server started with (TOML), if any.
    pub startup_experiments: Option<String>,
}

/// The settings routes under `/v1/admin/budgets` and `/v1/admin/experiments`.
pub fn settings_router(admin: SettingsAdmin) -> Router {
    Router::new()
        .route("/v1/admin/budgets", get(budgets))
        .route("/v1/admin/budgets/{line_item}", put(set_budget))
        .route(
            "/v1/admin/experiments",
            get(experiments)
                .put(set_experiments)
                .delete(clear_experiments),
        )
        .with_state(admin)
}

#[allow(clippy::result_large_err)]
fn authorize(admin: &SettingsAdmin, headers: &HeaderMap) -> Result<(), Response> {
    match &admin.token {
        Some(t) if !t.is_empty() => check_bearer(headers, t),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "budgets and experiments need an admin token (--admin-token or PODIUM_ADMIN_TOKEN)",
        )
        .into_response()),
    }
}

fn engine(admin: &SettingsAdmin) -> Result<&podium_engine::Engine, ApiError> {
    admin
        .app
        .engine()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "models are loading"))
}

fn store_error(e: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the settings store is unreachable: {e}"),
    )
}

/// Applies the stored budgets to this server's engine at once.
async fn apply_budgets(admin: &SettingsAdmin) -> Result<(), ApiError> {
    let settings = admin.store.get().await.map_err(store_error)?;
    let budgets = settings.budgets.into_iter().collect();
    engine(admin)?.set_budget_overrides(&budgets);
    Ok(())
}

async fn budgets(State(admin): State<SettingsAdmin>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&admin, &headers) {
        return denied;
    }
    let engine = match engine(&admin) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let market = engine.market();
    let view: std::collections::HashMap<String, podium_engine::PacingView> = engine
        .pacing_view()
        .into_iter()
        .map(|v| (v.line_item.clone(), v))
        .collect();
    let items: Vec<_> = market
        .marketplace
        .line_items
        .iter()
        .enumerate()
        .map(|(i, li)| {
            let v = view.get(li.id.as_str());
            json!({
                "line_item": li.id.as_str(),
                "daily_budget": market.daily_budget(i).as_units(),
                "marketplace_daily_budget": li.daily_budget.as_units(),
                "set_at_run_time": market.budget_overridden(i),
                "spent_today": v.map(|v| Micros(v.spent_micros).as_units()),
                "pacing_target_now": v.map(|v| Micros(v.target_micros).as_units()),
            })
        })
        .collect();
    Json(json!({"line_items": items})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    daily_budget: Option<f64>,
}

async fn set_budget(
    State(admin): State<SettingsAdmin>,
    headers: HeaderMap,
    Path(line_item): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(denied) = authorize(&admin, &headers) {
        return denied;
    }
    let result: Result<serde_json::Value, ApiError> = async {
        let body: BudgetBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::field(
                "body",
                format!("{e}: expected {{\"daily_budget\": units or null}}"),
            )
        })?;
        let budget = match body.daily_budget {
            Some(b) if !(0.0..=1e12).contains(&b) => {
                return Err(ApiError::field(
                    "daily_budget",
                    format!("{b} is not a budget: a finite amount from 0 to 1e12"),
                ))
            }
            b => b.map(Micros::from_units),
        };
        let market = engine(&admin)?.market();
        if market.position(&line_item.as_str().into()).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no line item {line_item:?} in the marketplace"),
            ));
        }
        admin
            .store
            .set_budget(&line_item, budget)
            .await
            .map_err(store_error)?;
        apply_budgets(&admin).await?;
        let i = market
            .position(&line_item.as_str().into())
            .unwrap_or_default() as usize;
        Ok(json!({
            "line_item": line_item,
            "daily_budget": engine(&admin)?.market().daily_budget(i).as_units(),
            "set_at_run_time": budget.is_some(),
            "fleet": "every server applies it within a second",
        }))
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn experiments(State(admin): State<SettingsAdmin>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&admin, &headers) {
        return denied;
    }
    match admin.store.get().await {
        Ok(s) => {
            let (toml, source) = match s.experiments {
                Some(t) => (Some(t), "admin"),
                None => (admin.startup_experiments.clone(), "startup"),
            };
            Json(json!({"experiments": toml, "source": source})).into_response()
        }
        Err(e) => store_error(e).into_response(),
    }
}

/// Parses experiments and checks that every model version an arm names is loaded here.
pub fn check_experiments(
    engine: &podium_engine::Engine,
    text: &str,
) -> Result<podium_engine::Experiments, String> {
    let parsed = podium_engine::Experiments::parse(text)?;
    let models = engine.models();
    for (name, version) in parsed.model_versions() {
        let loaded = models
            .versions_of(&name)
            .iter()
            .any(|m| m.version() == version);
        if !loaded {
            return Err(format!(
                "model {name:?} version {version:?} is not loaded: publish it and promote it to \
                 shadow (or name it in --experiments at start) before an arm serves it"
            ));
        }
    }
    Ok(parsed)
}

async fn set_experiments(
    State(admin): State<SettingsAdmin>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(denied) = authorize(&admin, &headers) {
        return denied;
    }
    let result: Result<serde_json::Value, ApiError> = async {
        let engine = engine(&admin)?;
        let text = std::str::from_utf8(&body)
            .map_err(|e| ApiError::field("body", format!("not UTF-8 TOML: {e}")))?;
        let parsed = check_experiments(engine, text).map_err(|e| ApiError::field("body", e))?;
        admin
            .store
            .set_experiments(Some(text.to_string()))
            .await
            .map_err(store_error)?;
        engine.set_experiments(parsed);
        Ok(json!({"source": "admin", "fleet": "every server applies it within a second"}))
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn clear_experiments(State(admin): State<SettingsAdmin>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&admin, &headers) {
        return denied;
    }
    let result: Result<serde_json::Value, ApiError> = async {
        let engine = engine(&admin)?;
        admin
            .store
            .set_experiments(None)
            .await
            .map_err(store_error)?;
        let startup = match &admin.startup_experiments {
            Some(t) => podium_engine::Experiments::parse(t)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?,
            None => podium_engine::Experiments::default(),
        };
        engine.set_experiments(startup);
        Ok(json!({"source": "startup"}))
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Applies the shared settings to `engine` every second: budgets always (cheap when unchanged),
/// experiments when the stored text changes.
pub async fn follow(
    engine: podium_engine::Engine,
    store: Arc<dyn SettingsStore>,
    startup_experiments: Option<String>,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut applied: Option<Option<String>> = None;
    loop {
        every.tick().await;
        let settings = match store.get().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "settings unreadable; keeping those applied");
                continue;
            }
        };
        let unknown = engine.set_budget_overrides(&settings.budgets.into_iter().collect());
        if !unknown.is_empty() {
            tracing::debug!(
                ?unknown,
                "budgets set for line items this marketplace lacks"
            );
        }
        if applied.as_ref() != Some(&settings.experiments) {
            let text = settings.experiments.clone().or(startup_experiments.clone());
            let parsed = match &text {
                Some(t) => check_experiments(&engine, t),
                None => Ok(podium_engine::Experiments::default()),
            };
            match parsed {
                Ok(e) => {
                    engine.set_experiments(e);
                    applied = Some(settings.experiments);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the fleet's experiments do not fit this server; keeping its own")
                }
            }
        }
    }
}
