//! A demo real-time signal service, speaking both of Podium's signal contracts (HTTP with JSON,
//! and gRPC `podium.signals.v1.SignalSource/Fetch`), for trying signal sources out
//! (`podium signals demo`), for benchmarks and for tests. Its answers are deterministic functions
//! of the request fields it is sent ([`demo_values`]); its latency and failures can be set and
//! changed while it runs ([`Control`]), to play a slow, failing or flapping source.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podium_features::signals::proto::{FetchRequest, FetchResponse};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

/// Every signal the demo service answers, computed from the fields it is sent.
pub const DEMO_SIGNALS: [&str; 5] = [
    "session_depth",
    "brand_safety",
    "fraud_score",
    "event_minute",
    "fields_seen",
];

/// The demo's answer to a request with these fields (text values, as gRPC sends them; HTTP
/// sends JSON, whose strings count as their text and other values as their JSON).
pub fn demo_values(fields: &BTreeMap<String, String>) -> BTreeMap<String, f64> {
    let h = |s: &str| {
        // FNV-1a: stable across runs and platforms, unlike the std hasher.
        let mut x: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            x = (x ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        x
    };
    let get = |k: &str| fields.get(k).map_or("", String::as_str);
    let user = get("user.id");
    let content = get("content.id");
    let live = get("content.live") == "true";
    let event = fields
        .get("content.event_id")
        .map_or(content, String::as_str);
    let mut out = BTreeMap::new();
    out.insert("session_depth".into(), (h(user) % 20) as f64);
    out.insert("brand_safety".into(), (h(content) % 1000) as f64 / 1000.0);
    out.insert(
        "fraud_score".into(),
        (h(&format!("{user}/{}", get("user.device"))) % 1000) as f64 / 1000.0,
    );
    out.insert(
        "event_minute".into(),
        if live { (h(event) % 90) as f64 } else { 0.0 },
    );
    out.insert("fields_seen".into(), fields.len() as f64);
    out
}

/// How the demo service behaves; every setting may change while it runs.
#[derive(Debug, Default)]
pub struct Control {
    delay_us: AtomicU64,
    failing: AtomicBool,
    flapping: AtomicBool,
    /// Answers claim to be this many ms old (`as_of_ms` = now − lag).
    as_of_lag_ms: AtomicI64,
    /// Only the first call in every `slow_every` is delayed (0: all are), for tail latency.
    slow_every: AtomicU64,
    calls: AtomicU64,
}

impl Control {
    /// Answers after `d`.
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Delays only one call in `n` (0 or 1: every call).
    pub fn set_slow_every(&self, n: u64) {
        self.slow_every.store(n, Ordering::Relaxed);
    }

    /// Fails every call (HTTP 503, gRPC UNAVAILABLE) while `on`.
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::Relaxed);
    }

    /// Fails every other call while `on`.
    pub fn set_flapping(&self, on: bool) {
        self.flapping.store(on, Ordering::Relaxed);
    }

    /// Answers claim to be `lag` old.
    pub fn set_as_of_lag(&self, lag: Duration) {
        self.as_of_lag_ms
            .store(lag.as_millis() as i64, Ordering::Relaxed);
    }

    /// Calls received so far (both protocols).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Counts the call, waits its delay, and says whether it fails.
    async fn serve(&self) -> bool {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let delay = self.delay_us.load(Ordering::Relaxed);
        let every = self.slow_every.load(Ordering::Relaxed).max(1);
        if delay > 0 && n.is_multiple_of(every) {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        self.failing.load(Ordering::Relaxed)
            || (self.flapping.load(Ordering::Relaxed) && n % 2 == 1)
    }

    fn as_of_ms(&self) -> i64 {
        podium_features::now_ms() - self.as_of_lag_ms.load(Ordering::Relaxed)
    }
}

/// A running demo service.
pub struct DemoSignalServer {
    /// Its HTTP address: sources use `http://<http>/signals`.
    pub http: SocketAddr,
    /// Its gRPC address: sources use `http://<grpc>`.
    pub grpc: SocketAddr,
    /// Its behaviour.
    pub control: Arc<Control>,
}

impl DemoSignalServer {
    /// Starts both listeners (port 0 picks free ones) on the current runtime.
    pub async fn start(http: SocketAddr, grpc: SocketAddr) -> std::io::Result<Self> {
        let control = Arc::new(Control::default());
        let http_listener = TcpListener::bind(http).await?;
        let grpc_listener = TcpListener::bind(grpc).await?;
        let addrs = (http_listener.local_addr()?, grpc_listener.local_addr()?);
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(http_fetch))
            .with_state(control.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, app).await {
                tracing::error!(error = %e, "demo signal service (HTTP) stopped");
            }
        });
        let svc = GrpcService(control.clone());
        tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(error = %e, "demo signal service (gRPC) stopped");
            }
        });
        Ok(Self {
            http: addrs.0,
            grpc: addrs.1,
            control,
        })
    }
}

async fn http_fetch(
    State(control): State<Arc<Control>>,
    body: Result<
        Json<serde_json::Map<String, serde_json::Value>>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    if control.serve().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "demo source failing").into_response();
    }
    let fields: BTreeMap<String, String> = body
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect();
    let mut answer: serde_json::Map<String, serde_json::Value> = demo_values(&fields)
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::from(v)))
        .collect();
    answer.insert("as_of_ms".into(), control.as_of_ms().into());
    Json(answer).into_response()
}

/// The gRPC side: what generated tonic code would be for the one unary method.
#[derive(Clone)]
struct GrpcService(Arc<Control>);

impl tonic::server::NamedService for GrpcService {
    const NAME: &'static str = "podium.signals.v1.SignalSource";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

struct Fetch(Arc<Control>);

impl tonic::server::UnaryService<FetchRequest> for Fetch {
    type Response = FetchResponse;
    type Future = BoxFuture<Result<tonic::Response<FetchResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<FetchRequest>) -> Self::Future {
        let control = self.0.clone();
        Box::pin(async move {
            if control.serve().await {
                return Err(tonic::Status::unavailable("demo source failing"));
            }
            let fields: BTreeMap<String, String> =
                request.into_inner().fields.into_iter().collect();
            let values: HashMap<String, f64> = demo_values(&fields).into_iter().collect();
            Ok(tonic::Response::new(FetchResponse {
                values,
                as_of_ms: control.as_of_ms(),
            }))
        })
    }
}

impl<B> tower::Service<http::Request<B>> for GrpcService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != podium_features::signals::proto::FETCH_PATH {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("no such method").into_http())
            });
        }
        let fetch = Fetch(self.0.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<FetchResponse, FetchRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(fetch, req).await)
        })
    }
}
