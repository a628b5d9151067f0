//! Admission control: a bound on decisions in flight, a bounded queue with a bounded wait, load
//! shedding, and capacity held back for priority traffic (live events, guaranteed deals).
//!
//! It runs as middleware layers in front of the handlers. A shed decide request gets a fast,
//! well-formed "no ads" answer (HTTP 200, every break empty, `degraded: ["shed: …"]`, header
//! `x-podium-shed: 1`) so that a player simply shows no ad; a shed model call (Open Inference
//! Protocol) gets 503.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits of admission control.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Requests processed at once (all priorities).
    pub max_in_flight: usize,
    /// Of those, slots only priority traffic may use.
    pub reserved_for_priority: usize,
    /// Requests waiting for a slot; one more is shed at once.
    pub max_queue: usize,
    /// Longest wait for a slot; never more than half the request's own deadline.
    pub max_wait: Duration,
}

impl AdmissionConfig {
    /// Limits sized to `compute_threads`: enough in flight to keep them busy while requests
    /// wait on I/O, not so many that queueing inside the engine eats the deadline. Decisions
    /// are CPU-bound: measured on the standard workload, 4 in flight per compute thread serve as
    /// many per second as 16 with a third of the tail latency and less CPU each (requests
    /// interleaved on one core evict each other's model tables from cache).
    pub fn for_threads(compute_threads: usize) -> Self {
        let max_in_flight = compute_threads.max(1) * 4;
        Self {
            max_in_flight,
            reserved_for_priority: max_in_flight / 4,
            max_queue: max_in_flight * 4,
            max_wait: Duration::from_millis(5),
        }
    }
}

impl AdmissionConfig {
    /// Limits for model calls beside these decision limits: four times the calls in flight and
    /// in the queue (a call is one small batch; micro-batching needs many waiting together).
    pub fn for_model_calls(&self) -> Self {
        Self {
            max_in_flight: self.max_in_flight * 4,
            reserved_for_priority: 0,
            max_queue: self.max_queue * 4,
            max_wait: self.max_wait,
        }
    }
}

/// Whether a request may use the reserved capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Ordinary traffic.
    Normal,
    /// Live events and guaranteed deals.
    High,
}

/// The admission controller shared by the layers.
#[derive(Clone)]
pub struct Admission {
    config: AdmissionConfig,
    shared: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    shed: Arc<AtomicU64>,
    /// Moving average of how long an admitted request holds its slot, in µs (0 = none yet).
    service_us: Arc<AtomicU64>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The queue was full.
    QueueFull,
    /// No slot freed up within the wait allowed.
    WaitExceeded,
    /// The queue ahead would take longer than the wait allowed, going by recent service times.
    WaitTooLong,
}

impl ShedReason {
    fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "shed: overloaded (queue full)",
            ShedReason::WaitExceeded => "shed: overloaded (no capacity within the wait allowed)",
            ShedReason::WaitTooLong => {
                "shed: overloaded (the queue ahead would outlast the wait allowed)"
            }
        }
    }
}

impl Admission {
    /// A controller with these limits.
    pub fn new(config: AdmissionConfig) -> Self {
        let reserved = config
            .reserved_for_priority
            .min(config.max_in_flight.saturating_sub(1));
        Self {
            shared: Arc::new(Semaphore::new(config.max_in_flight - reserved)),
            reserved: Arc::new(Semaphore::new(reserved)),
            waiting: Arc::new(AtomicUsize::new(0)),
            shed: Arc::new(AtomicU64::new(0)),
            service_us: Arc::new(AtomicU64::new(0)),
            config,
        }
    }

    /// Requests shed so far.
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Records how long an admitted request held its slot; admission uses the moving average to
    /// shed at once a request that could only wait in vain.
    pub fn observe(&self, held: Duration) {
        let us = held.as_micros().min(u64::MAX as u128) as u64;
        let old = self.service_us.load(Ordering::Relaxed);
        // Lost updates under a race only make the average a little staler.
        let new = if old == 0 {
            us
        } else {
            old - old / 16 + us / 16
        };
        self.service_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Waits (bounded) for a slot. Priority traffic may take a reserved slot or a shared one,
    /// whichever frees first; ordinary traffic only a shared one.
    pub async fn admit(
        &self,
        priority: Priority,
        deadline: Duration,
    ) -> Result<OwnedSemaphorePermit, ShedReason> {
        if let Ok(p) = self.shared.clone().try_acquire_owned() {
            return Ok(p);
        }
        if priority == Priority::High {
            if let Ok(p) = self.reserved.clone().try_acquire_owned() {
                return Ok(p);
            }
        }
        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        if ahead >= self.config.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(ShedReason::QueueFull);
        }
        let wait = self.config.max_wait.min(deadline / 2);
        // Slots free at about one per (service time ÷ slots): a request that would reach the
        // head of the queue only after its wait runs out is better answered now.
        let service = self.service_us.load(Ordering::Relaxed);
        let slots = self.config.max_in_flight.max(1) as u64;
        let expected = Duration::from_micros(service.saturating_mul(ahead as u64 + 1) / slots);
        if service > 0 && expected > wait {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(ShedReason::WaitTooLong);
        }
        let acquire = async {
            match priority {
                Priority::Normal => self.shared.clone().acquire_owned().await,
                Priority::High => tokio::select! {
                    p = self.shared.clone().acquire_owned() => p,
                    p = self.reserved.clone().acquire_owned() => p,
                },
            }
        };
        let outcome = tokio::time::timeout(wait, acquire).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match outcome {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.shed.fetch_add(1, Ordering::Relaxed);
                Err(ShedReason::WaitExceeded)
            }
        }
    }
}

/// Just the fields admission needs from a decide request; everything else is the handler's.
#[derive(Deserialize, Default)]
struct Peek {
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    content: Option<PeekContent>,
    #[serde(default)]
    breaks: Option<Vec<PeekBreak>>,
    #[serde(default)]
    tmax_ms: Option<f64>,
    #[serde(default)]
    priority: Option<String>,
}

#[derive(Deserialize, Default)]
struct PeekContent {
    #[serde(default)]
    live: Option<bool>,
}

#[derive(Deserialize, Default)]
struct PeekBreak {
    #[serde(default)]
    id: Option<String>,
}

/// The decide layer: admits or answers "no ads" at once.
pub async fn admit_decide(
    State(state): State<(Admission, Duration)>,
    req: Request,
    next: Next,
) -> Response {
    let (admission, default_tmax) = state;
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await {
        Ok(b) => b,
        // Let the handler's own body limit answer with its 413.
        Err(_) => {
            return next
                .run(Request::from_parts(
                    parts,
                    Body::from(vec![0u8; crate::MAX_BODY_BYTES + 1]),
                ))
                .await
        }
    };
    // A body that does not parse is the handler's to refuse with a precise 400.
    let peek: Peek = serde_json::from_slice(&bytes).unwrap_or_default();
    let priority = if peek.content.as_ref().and_then(|c| c.live).unwrap_or(false)
        || peek.priority.as_deref() == Some("high")
    {
        Priority::High
    } else {
        Priority::Normal
    };
    let deadline = peek
        .tmax_ms
        .filter(|ms| ms.is_finite() && *ms > 0.0 && *ms <= 10_000.0)
        .map_or(default_tmax, |ms| {
            Duration::from_micros((ms * 1000.0) as u64)
        });
    match admission.admit(priority, deadline).await {
        Ok(permit) => {
            let started = std::time::Instant::now();
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            drop(permit);
            admission.observe(started.elapsed());
            response
        }
        Err(reason) => {
            // Each endpoint's own "no ad": an empty VAST document, an OpenRTB no-bid, or a
            // decision with empty breaks; all marked as shed.
            let shed = HeaderValue::from_static("1");
            match parts.uri.path() {
                "/v1/vast" => {
                    let mut response = (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/xml; charset=utf-8",
                        )],
                        podium_openrtb::empty_vast(None),
                    )
                        .into_response();
                    response.headers_mut().insert("x-podium-shed", shed);
                    return response;
                }
                "/openrtb2/auction" => {
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    response.headers_mut().insert("x-podium-shed", shed);
                    return response;
                }
                _ => {}
            }
            let breaks: Vec<_> = peek
                .breaks
                .unwrap_or_default()
                .into_iter()
                .map(|b| json!({"break_id": b.id.unwrap_or_default(), "ads": [], "duration_s": 0}))
                .collect();
            let mut response = Json(json!({
                "request_id": peek.request_id,
                "breaks": breaks,
                "model_versions": [],
                "timings_us": {"admit_us": 0, "hydrate_us": 0, "retrieve_us": 0, "rank_us": 0, "score_us": 0, "value_us": 0, "pod_us": 0, "total_us": 0},
                "eligible": 0,
                "degraded": [reason.as_str()],
            }))
            .into_response();
            response
                .headers_mut()
                .insert("x-podium-shed", HeaderValue::from_static("1"));
            response
        }
    }
}

/// The layer for model calls and admin reads: admits or answers 503.
pub async fn admit_or_503(
    State(state): State<(Admission, Duration)>,
    req: Request,
    next: Next,
) -> Response {
    let (admission, default_tmax) = state;
    match admission.admit(Priority::Normal, default_tmax).await {
        Ok(permit) => {
            let started = std::time::Instant::now();
            let response = next.run(req).await;
            drop(permit);
            admission.observe(started.elapsed());
            response
        }
        Err(reason) => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": reason.as_str()})),
            )
                .into_response();
            response
                .headers_mut()
                .insert("x-podium-shed", HeaderValue::from_static("1"));
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_in_flight: usize, reserved: usize, max_queue: usize) -> Admission {
        Admission::new(AdmissionConfig {
            max_in_flight,
            reserved_for_priority: reserved,
            max_queue,
            max_wait: Duration::from_millis(20),
        })
    }

    #[tokio::test]
    async fn sheds_when_the_queue_is_full_and_when_the_wait_runs_out() {
        let a = admission(1, 0, 1);
        let held = a
            .admit(Priority::Normal, Duration::from_secs(1))
            .await
            .unwrap();
        // One waiter fits the queue and times out; a second concurrent one is shed at once.
        let (first, second) =
            tokio::join!(a.admit(Priority::Normal, Duration::from_secs(1)), async {
                tokio::task::yield_now().await;
                a.admit(Priority::Normal, Duration::from_secs(1)).await
            });
        assert_eq!(first.unwrap_err(), ShedReason::WaitExceeded);
        assert_eq!(second.unwrap_err(), ShedReason::QueueFull);
        assert_eq!(a.shed_total(), 2);
        drop(held);
        assert!(a
            .admit(Priority::Normal, Duration::from_secs(1))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn priority_traffic_gets_the_reserved_capacity() {
        let a = admission(2, 1, 4);
        let _normal = a
            .admit(Priority::Normal, Duration::from_secs(1))
            .await
            .unwrap();
        // The only shared slot is taken: ordinary traffic waits and is shed, priority gets in.
        assert!(a
            .admit(Priority::Normal, Duration::from_millis(10))
            .await
            .is_err());
        assert!(a
            .admit(Priority::High, Duration::from_millis(10))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_request_that_would_wait_in_vain_is_shed_at_once() {
        let a = admission(1, 0, 100);
        let _held = a
            .admit(Priority::Normal, Duration::from_secs(1))
            .await
            .unwrap();
        // Requests have been holding their slot 30 ms: with 20 ms of wait allowed and one slot,
        // the next is shed without waiting.
        a.observe(Duration::from_millis(30));
        let t = std::time::Instant::now();
        assert_eq!(
            a.admit(Priority::Normal, Duration::from_secs(1))
                .await
                .unwrap_err(),
            ShedReason::WaitTooLong
        );
        assert!(t.elapsed() < Duration::from_millis(10));
    }
}
