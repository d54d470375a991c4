//! The control socket: the only local way to change what the agent does (restart a process,
//! arm motors, clear an e-stop, power-cycle a relay). It is a Unix socket in the data
//! directory (`run/fleetlet.sock`), mode 0660, owned by the agent's user, so only that user
//! and its group can act — never an unauthenticated TCP port (DESIGN.md, "Local surface").
//!
//! Protocol: the client sends one JSON line `{"op": "process.restart", "args": {...}}`; the
//! agent answers one JSON line `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`
//! and closes. Requests are capped at [`MAX_REQUEST_BYTES`]; each connection is served by a
//! tracked task with a timeout, so a slow client cannot pin the agent.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request line accepted.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long one request may take, reading included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or setting permissions failed.
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The client could not reach the agent.
    #[error("agent control socket {path} not reachable: {source} (is the agent running, and are you in its group?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The agent refused or failed the operation.
    #[error("agent refused `{op}`: {message}")]
    Refused {
        /// Operation.
        op: String,
        /// The agent's message.
        message: String,
    },
    /// The reply was not valid.
    #[error("malformed reply on control socket {path}")]
    Malformed {
        /// Socket path.
        path: PathBuf,
    },
}

/// One request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Operation name, `area.verb`.
    pub op: String,
    /// Arguments.
    #[serde(default)]
    pub args: serde_json::Value,
}

/// One reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// Success flag.
    pub ok: bool,
    /// Result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A boxed operation future.
pub type OpFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>;
type Handler = Arc<dyn Fn(serde_json::Value) -> OpFuture + Send + Sync>;

/// Operations registered by subsystems. Cheap to clone.
#[derive(Clone, Default)]
pub struct Ops {
    inner: Arc<Mutex<BTreeMap<String, Handler>>>,
}

impl Ops {
    /// Registers `op` (replacing an earlier handler of the same name).
    pub fn register<F, Fut>(&self, op: &str, f: F)
    where
        F: Fn(serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, String>> + Send + 'static,
    {
        let h: Handler = Arc::new(move |v| Box::pin(f(v)));
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(op.to_owned(), h);
    }

    /// Names of all registered operations.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Runs one request.
    pub async fn call(&self, req: Request) -> Reply {
        if req.op == "ops.list" {
            return Reply {
                ok: true,
                result: Some(serde_json::json!(self.names())),
                error: None,
            };
        }
        let handler = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&req.op)
            .cloned();
        let Some(handler) = handler else {
            return Reply {
                ok: false,
                result: None,
                error: Some(format!(
                    "unknown operation `{}`; known: {}",
                    req.op,
                    self.names().join(", ")
                )),
            };
        };
        match handler(req.args).await {
            Ok(v) => Reply {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Reply {
                ok: false,
                result: None,
                error: Some(e),
            },
        }
    }
}

/// Binds the socket (replacing a stale one: the caller holds the data-directory lock, so no
/// other agent can own it) with mode 0660, and returns the serving future.
///
/// # Errors
/// [`Error::Bind`] when the socket cannot be created.
pub fn bind(
    path: &Path,
    ops: Ops,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> Result<impl Future<Output = ()>, Error> {
    let bind_err = |source| Error::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    let path = path.to_owned();
    Ok(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let ops = ops.clone();
                        tracker.spawn(async move {
                            if tokio::time::timeout(REQUEST_TIMEOUT, serve_one(stream, ops)).await.is_err() {
                                tracing::warn!("control request timed out");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

async fn serve_one(stream: UnixStream, ops: Ops) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let reply = match BufReader::new(read.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await
    {
        Ok(_) if !line.ends_with('\n') => Reply {
            ok: false,
            result: None,
            error: Some(format!(
                "request must be one JSON line of at most {MAX_REQUEST_BYTES} bytes"
            )),
        },
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                tracing::info!(op = %req.op, "control request");
                ops.call(req).await
            }
            Err(e) => Reply {
                ok: false,
                result: None,
                error: Some(format!("malformed request: {e}")),
            },
        },
        Err(e) => Reply {
            ok: false,
            result: None,
            error: Some(format!("read error: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

/// Sends one request and waits for the reply (CLI side; blocking std I/O).
///
/// # Errors
/// [`Error::Connect`] when no agent listens, [`Error::Refused`] when it answered `ok: false`.
pub fn call(path: &Path, op: &str, args: serde_json::Value) -> Result<serde_json::Value, Error> {
    use std::io::{BufRead, Write};
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT + Duration::from_secs(5)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(&Request {
        op: op.to_owned(),
        args,
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(io)?;
    let reply: Reply = serde_json::from_str(&reply).map_err(|_| Error::Malformed {
        path: path.to_owned(),
    })?;
    if reply.ok {
        Ok(reply.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(Error::Refused {
            op: op.to_owned(),
            message: reply.error.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_reach_registered_ops_and_unknown_ops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let ops = Ops::default();
        ops.register("echo.upper", |v: serde_json::Value| async move {
            Ok(serde_json::json!(v["s"]
                .as_str()
                .unwrap_or_default()
                .to_uppercase()))
        });
        ops.register("always.fails", |_| async { Err("nope".to_owned()) });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let serving = bind(&path, ops, tracker.clone(), cancel.clone()).unwrap();
        let server = tokio::spawn(serving);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        let p = path.clone();
        let (ok, refused, unknown, list) = tokio::task::spawn_blocking(move || {
            (
                call(&p, "echo.upper", serde_json::json!({"s": "abc"})),
                call(&p, "always.fails", serde_json::Value::Null),
                call(&p, "no.such", serde_json::Value::Null),
                call(&p, "ops.list", serde_json::Value::Null),
            )
        })
        .await
        .unwrap();
        assert_eq!(ok.unwrap(), "ABC");
        assert!(matches!(refused, Err(Error::Refused { message, .. }) if message == "nope"));
        assert!(
            matches!(unknown, Err(Error::Refused { message, .. }) if message.contains("unknown operation `no.such`"))
        );
        assert_eq!(
            list.unwrap(),
            serde_json::json!(["always.fails", "echo.upper"])
        );

        // Garbage on the socket gets a clear error, not a crash.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{not json\n").await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.contains("malformed request"), "{reply}");

        cancel.cancel();
        server.await.unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
    }

    #[test]
    fn no_agent_is_a_connect_error() {
        let e = call(
            Path::new("/nonexistent/fleetlet.sock"),
            "x",
            serde_json::Value::Null,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e}");
    }
}
