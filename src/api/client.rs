//! A minimal HTTP/1.1 GET client for the CLI (`fleetlet status`, `fleetlet logs`): the API
//! is loopback-only and plain, so a dependency-free client keeps the binary small.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Errors talking to the local API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens there.
    #[error("agent not running at {addr}: start it with `fleetlet run --config …` or pass --addr")]
    NotRunning {
        /// The address tried.
        addr: SocketAddr,
        /// The connect error.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("talking to the agent at {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The reply was not HTTP.
    #[error("malformed reply from the agent at {addr}")]
    Malformed {
        /// The address.
        addr: SocketAddr,
    },
}

/// A reply: status code and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

/// GETs `path` from the API at `addr`.
///
/// # Errors
/// [`Error::NotRunning`] when nothing accepts the connection.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply, Error> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| Error::NotRunning { addr, source })?;
    let io = |source| Error::Io { addr, source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse(&raw).ok_or(Error::Malformed { addr })
}

/// GETs `path` and hands each piece of the body, with the HTTP status, to `sink` as it arrives (for streamed
/// responses such as `?follow=true`). Returns the HTTP status once the body ends.
///
/// # Errors
/// [`Error::NotRunning`] when nothing accepts the connection.
pub fn stream(
    addr: SocketAddr,
    path: &str,
    mut sink: impl FnMut(u16, &[u8]),
) -> Result<u16, Error> {
    use std::io::BufRead;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|source| Error::NotRunning { addr, source })?;
    let io = |source| Error::Io { addr, source };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut r = std::io::BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).map_err(io)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Error::Malformed { addr })?;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(io)? == 0 {
            return Err(Error::Malformed { addr });
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    if !chunked {
        let mut body = Vec::new();
        r.read_to_end(&mut body).map_err(io)?;
        sink(status, &body);
        return Ok(status);
    }
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(io)? == 0 {
            return Ok(status);
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| Error::Malformed { addr })?;
        if size == 0 {
            return Ok(status);
        }
        let mut chunk = vec![0u8; size + 2];
        r.read_exact(&mut chunk).map_err(io)?;
        sink(status, &chunk[..size]);
    }
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Reply { status, body })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_replies() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let r = parse(
            b"HTTP/1.1 503 X\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"abcde"[..]));
        assert!(parse(b"garbage").is_none());
    }

    #[test]
    fn nothing_listening_is_not_running() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = get(addr, "/healthz", Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("agent not running at"), "{e}");
    }
}
