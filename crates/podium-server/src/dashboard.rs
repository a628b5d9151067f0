//! `GET /dashboard`: the monitoring page, served from the binary with its charting library
//! (uPlot, vendored under `assets/`), so that it works with no internet. The page polls the
//! `/v1/monitor/...` endpoints.

use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../assets/dashboard.html");
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../assets/uPlot.min.css"),
    ),
];

/// `GET /dashboard`. Links to admin pages point at the admin listener.
pub async fn page(State(state): State<crate::AppState>) -> Response {
    let page = match state.admin_url() {
        Some(admin) => PAGE.replace("href=\"/v1/admin/", &format!("href=\"{admin}/v1/admin/")),
        None => PAGE.to_string(),
    };
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        page,
    )
        .into_response()
}

/// `GET /dashboard/{file}`: the page's script, the charting library and its style sheet.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => ([(CONTENT_TYPE, *kind)], *body).into_response(),
        None => {
            crate::api::ApiError::new(StatusCode::NOT_FOUND, format!("no dashboard file {file:?}"))
                .into_response()
        }
    }
}
