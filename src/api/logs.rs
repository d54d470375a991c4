//! `/v1/logs/{process}`: the captured output of a supervised process, as plain text lines
//! (`<rfc3339 time> <stdout|stderr|supervisor> <text>`). `?lines=N` (default 100) picks the
//! tail; `?follow=true` keeps the response open and streams new lines (a follower that
//! falls behind loses lines and is told how many).

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::supervisor::Handle;
use crate::supervisor::{LogLine, LogStream};

/// Default number of lines returned.
pub const DEFAULT_LINES: usize = 100;

#[derive(Debug, Deserialize)]
struct Params {
    lines: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// The logs router, to merge into the API.
pub fn router(sup: Handle) -> Router {
    Router::new()
        .route("/v1/logs/{process}", get(logs))
        .with_state(sup)
}

/// One line of text for a captured line.
pub fn format_line(l: &LogLine) -> String {
    let ts = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(l.ts_ms));
    let stream = match l.stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
        LogStream::Supervisor => "supervisor",
    };
    format!("{ts} {stream} {}\n", l.text)
}

async fn logs(
    State(sup): State<Handle>,
    Path(process): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    let lines = p.lines.unwrap_or(DEFAULT_LINES);
    let tail = match sup.logs(&process, lines) {
        Ok(t) => t,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    let head: String = tail.iter().map(format_line).collect();
    if !p.follow {
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], head).into_response();
    }
    let rx = match sup.follow(&process) {
        Ok(rx) => rx,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    let first = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(head) });
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        use tokio::sync::broadcast::error::RecvError;
        let text = match rx.recv().await {
            Ok(l) => format_line(&l),
            Err(RecvError::Lagged(n)) => {
                format!("-- {n} lines lost: this follower fell behind --\n")
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(text), rx))
    });
    use futures::StreamExt;
    let body = Body::from_stream(first.chain(rest));
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}
