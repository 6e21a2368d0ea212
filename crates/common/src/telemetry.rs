//! The operator's endpoints: `/metrics` (Prometheus text format), `/healthz` (the
//! process answers) and `/readyz` (the program says it can do its job).
//!
//! Metrics are recorded through the `metrics` facade and rendered by
//! `metrics-exporter-prometheus`, so no exposition text is formatted by hand. The
//! HTTP side is a small axum router bound before the program starts its work, so a
//! taken port is a start-up error with a one-line reason rather than a silent gap.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Answers `/readyz`: `Ok` when ready, otherwise the reason it is not.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Buckets (seconds) of every `*_duration_seconds` histogram: micro-batches take
/// milliseconds to seconds, and an outage can hold one for minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
///
/// Gauges not updated for `idle` disappear from `/metrics`: per-partition gauges of
/// a partition this process no longer owns must not keep reporting a stale lag.
pub fn install(idle: Duration) -> Result<PrometheusHandle, Error> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".into()),
            DURATION_BUCKETS,
        )
        .map_err(|e| Error::Telemetry(e.to_string()))?
        .idle_timeout(MetricKindMask::GAUGE, Some(idle))
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        // Another recorder won the race (tests running several pipelines in one
        // process): keep whichever handle was stored, or this one.
        return Ok(HANDLE.get().cloned().unwrap_or(handle));
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

#[derive(Clone)]
struct AppState {
    handle: PrometheusHandle,
    ready: ReadyCheck,
}

/// Binds `addr` and serves the three endpoints until `stop` is cancelled.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    ready: ReadyCheck,
    stop: CancellationToken,
) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Telemetry(format!("cannot listen on {addr} for metrics: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Telemetry(e.to_string()))?;
    // The exporter's histograms and idle gauges are maintained on render; an
    // upkeep tick keeps memory flat between scrapes too.
    let upkeep = handle.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = upkeep_stop.cancelled() => break,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { handle, ready });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(bound)
}

async fn render(State(state): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.handle.render(),
    )
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Records the `build_info` gauge of a binary: constant 1, labelled with versions.
pub fn build_info(prefix: &str, version: &'static str) {
    metrics::gauge!(format!("{prefix}_build_info"), "version" => version).set(1.0);
}
