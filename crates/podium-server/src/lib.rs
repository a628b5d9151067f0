//! HTTP adapters from wire formats to the engine. Handlers parse and validate at the edge, call
//! [`podium_engine::Engine::decide`], and shape the answer; no decision logic lives here.

pub mod admin;
pub mod admission;
pub mod adserving;
pub mod api;
mod app;
mod audit;
pub mod dashboard;
pub mod events;
pub mod forecast;
pub mod live;
pub mod metrics;
pub mod monitor;
pub mod oip;
pub mod otlp;
pub mod settings;
pub mod signal_demo;

pub use admin::admin_router;
pub use admission::{Admission, AdmissionConfig};
pub use app::{
    router, serve, serve_with, AppState, MAX_BODY_BYTES, MAX_HEADERS, MAX_HEADER_BYTES,
    MAX_INFER_BODY_BYTES, MAX_URI_BYTES,
};
pub use audit::{admin_app, AuditLog, MAX_ADMIN_BODY_BYTES};
pub use forecast::{forecast_router, ForecastConfig};
