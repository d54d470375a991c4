//! Routes of the local API.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::State as AxState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::liveness::Liveness;
use crate::status::Registry;

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} for the local API: {source}")]
    Bind {
        /// Address from `api.listen`.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the handlers read. Cheap to clone.
#[derive(Clone)]
pub struct State {
    /// Subsystem states.
    pub status: Registry,
    /// Event-loop liveness.
    pub liveness: Liveness,
    /// Agent start time.
    pub started: Instant,
    /// Device id.
    pub device_id: String,
    /// Boot id of this agent start.
    pub boot_id: String,
    /// Extra routes contributed by subsystems (for example `/v1/logs/{process}`).
    pub extra: Option<Router>,
}

/// Binds `addr` and serves until `cancel` fires. Returns once bound, with the serving
/// future to spawn, so a bind failure is reported before the agent declares itself ready.
///
/// # Errors
/// [`Error::Bind`] when the address is taken or not allowed.
pub async fn serve(
    addr: SocketAddr,
    state: State,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .with_state(state.clone());
    if let Some(extra) = state.extra {
        app = app.merge(extra);
    }
    let fut = async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "local API stopped");
        }
    };
    Ok((bound, fut))
}

async fn healthz(AxState(s): AxState<State>) -> Response {
    let since = s.liveness.since_last_tick();
    if s.liveness.is_live() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "event loop stalled: last tick {} ms ago\n",
                since.as_millis()
            ),
        )
            .into_response()
    }
}

async fn readyz(AxState(s): AxState<State>) -> Response {
    let snapshot = s.status.snapshot();
    let waiting: Vec<String> = snapshot
        .iter()
        .filter(|(_, r)| !r.state.is_ready())
        .map(|(n, r)| format!("{n}: {:?}", r.state))
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(AxState(s): AxState<State>) -> Response {
    let body = super::metrics::render(&s);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn status(AxState(s): AxState<State>) -> Json<serde_json::Value> {
    let subsystems: serde_json::Map<String, serde_json::Value> = s
        .status
        .snapshot()
        .into_iter()
        .map(|(name, r)| {
            (
                name.to_owned(),
                json!({ "state": r.state, "detail": r.detail }),
            )
        })
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "device_id": s.device_id,
        "boot_id": s.boot_id,
        "pid": std::process::id(),
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "rss_bytes": super::metrics::rss_bytes(),
        "live": s.liveness.is_live(),
        "ready": s.status.all_ready(),
        "subsystems": subsystems,
    }))
}
