//! OTLP trace export of decisions: one trace per sampled decision, a `decide` span with a child
//! span per stage (admit, retrieve, hydrate, rank, score, value, pod) placed at the times the
//! engine measured, sent over OTLP/HTTP (JSON) by the SDK's batch processor on its own thread.
//!
//! Spans are built after the decision from its stage timings, so the request path pays nothing
//! for tracing but the sampling draw; a sampled decision costs the span construction (a few
//! microseconds) and the queue push.

use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use podium_core::Decision;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Where and how much to export.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The collector: a base URL (`http://collector:4318`, spans go to `/v1/traces`) or the full
    /// traces URL.
    pub endpoint: String,
    /// Share of decisions exported, 0–1.
    pub sample_ratio: f64,
}

/// The exporter of decision traces.
pub struct DecisionTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Export one decision in `every`, counted: deterministic, cheap, and even over time.
    every: u64,
    seen: AtomicU64,
}

impl std::fmt::Debug for DecisionTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionTracer")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let path_start = trimmed
        .find("://")
        .map(|i| i + 3)
        .and_then(|i| trimmed[i..].find('/'));
    match path_start {
        Some(_) => trimmed.to_string(),
        None => format!("{trimmed}/v1/traces"),
    }
}

impl DecisionTracer {
    /// Starts the exporter (its batch thread). Errors name the endpoint and the problem.
    pub fn start(config: &OtlpConfig) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(format!(
                "--otlp-sample-ratio must be between 0 and 1, got {}",
                config.sample_ratio
            ));
        }
        let url = traces_url(&config.endpoint);
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(format!(
                "--otlp-endpoint {:?}: an http:// or https:// URL",
                config.endpoint
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("--otlp-endpoint {url}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("podium").build())
            .build();
        let tracer = provider.tracer("podium");
        let every = if config.sample_ratio <= 0.0 {
            u64::MAX
        } else {
            (1.0 / config.sample_ratio).round().max(1.0) as u64
        };
        Ok(Self {
            provider,
            tracer,
            every,
            seen: AtomicU64::new(0),
        })
    }

    /// Exports a decision's trace when it is sampled. `received` is when the request arrived.
    pub fn record(&self, received: SystemTime, decision: &Decision, endpoint: &'static str) {
        if !self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every)
        {
            return;
        }
        let t = &decision.timings;
        let at = |us: u64| received + Duration::from_micros(us);
        let root = self
            .tracer
            .span_builder("decide")
            .with_kind(SpanKind::Server)
            .with_start_time(received)
            .with_attributes([
                KeyValue::new("podium.request_id", decision.request_id.to_string()),
                KeyValue::new("podium.endpoint", endpoint),
                KeyValue::new("podium.eligible", decision.eligible as i64),
                KeyValue::new(
                    "podium.ads",
                    decision.breaks.iter().map(|b| b.ads.len()).sum::<usize>() as i64,
                ),
                KeyValue::new("podium.degraded", decision.degraded.join("; ")),
            ])
            .start(&self.tracer);
        let cx = Context::current_with_span(root);
        let mut offset = 0;
        for (stage, us) in t.stages() {
            let mut span = self
                .tracer
                .span_builder(stage)
                .with_kind(SpanKind::Internal)
                .with_start_time(at(offset))
                .with_end_time(at(offset + us))
                .start_with_context(&self.tracer, &cx);
            span.end_with_timestamp(at(offset + us));
            offset += us;
        }
        cx.span().end_with_timestamp(at(t.total_us));
    }

    /// Sends what is queued (at shutdown).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_one_is_kept() {
        assert_eq!(
            traces_url("http://c:4318"),
            "http://c:4318/v1/traces".to_string()
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c/x/v1/traces"), "http://c/x/v1/traces");
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let bad = |endpoint: &str, ratio| {
            DecisionTracer::start(&OtlpConfig {
                endpoint: endpoint.into(),
                sample_ratio: ratio,
            })
            .unwrap_err()
        };
        assert!(bad("http://c:4318", 2.0).contains("--otlp-sample-ratio"));
        assert!(bad("c:4318", 1.0).contains("--otlp-endpoint"));
    }
}
