//! The admin endpoint's HTTP/1.1, sans-IO: request heads in, whole
//! responses out. The shell ([`threaded`], on plain threads) reads
//! bytes until [`parse_head`] decides, renders the daemon's [`Pages`],
//! writes the response and closes the connection. Both daemons serve their
//! admin endpoint through it: each implements [`Pages`].
//!
//! What it serves: `GET /metrics` (and `HEAD`), the Prometheus text format.
//! Everything else gets a plain-text 4xx naming the problem: unknown paths
//! 404, other methods 405, a malformed head 400, a head over
//! [`REQUEST_HEAD_MAX`] bytes 431, a head slower than [`READ_DEADLINE`] 408,
//! another HTTP version 505. Every response closes the connection
//! (`Connection: close`), so no request body or pipelined request is ever
//! read.
//!
//! What it never does: touch sockets, block, or panic on input.
//!
//! ```
//! use palisade_host::admin::{parse_head, Head, Route};
//! assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
//!            Head::Complete(Route::Metrics { head_only: false }));
//! assert_eq!(parse_head(b"GET /metr"), Head::Incomplete);
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

pub mod threaded;

/// What a daemon serves on its admin endpoint. A new page is a new route in
/// [`parse_head`] and a method here.
pub trait Pages {
    /// The Prometheus text exposition for `GET /metrics`, rendered at
    /// `now_ms` (monotonic). Called once per scrape, on the admin queue.
    fn metrics(&self, now_ms: u64) -> String;
}

impl<F: Fn(u64) -> String> Pages for F {
    fn metrics(&self, now_ms: u64) -> String {
        self(now_ms)
    }
}

/// The whole response to `route`: the page rendered at `now_ms`, or the
/// error it names. Both shells answer through it.
pub fn answer(pages: &impl Pages, route: Route, now_ms: u64) -> Vec<u8> {
    match route {
        Route::Metrics { head_only } => {
            let body = pages.metrics(now_ms);
            response(Status::Ok, METRICS_CONTENT_TYPE, &body, head_only)
        }
        Route::Error(status, why) => {
            tracing::debug!(code = status.line().0, why, "admin request refused");
            error_response(status, why)
        }
    }
}

/// Largest request head read (request line and headers).
pub const REQUEST_HEAD_MAX: usize = 8192;
/// Time a client has to send its whole request head.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Time a client has to take the whole response.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Admin connections served at once; more are answered 503 at once.
pub const CONNECTIONS_MAX: usize = 16;

/// Pending connections the admin listener queues.
const BACKLOG: i32 = 64;

/// Binds and listens on `addr` for the admin endpoint, non-blocking.
/// Returns the socket and the bound address (port 0 resolved). No
/// `SO_REUSEPORT`: a second daemon configured with the same admin port
/// fails to start rather than sharing the scrapes.
///
/// # Errors
///
/// Creating, binding or listening on the socket.
pub fn bind_listener(addr: SocketAddr) -> io::Result<(Socket, SocketAddr)> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP socket address"))?;
    Ok((sock, local))
}
/// The Prometheus text exposition format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An HTTP status this endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 400: the head is not HTTP.
    BadRequest,
    /// 404: not `/metrics`.
    NotFound,
    /// 405: not GET or HEAD.
    MethodNotAllowed,
    /// 408: the head did not arrive within [`READ_DEADLINE`].
    RequestTimeout,
    /// 431: the head exceeds [`REQUEST_HEAD_MAX`].
    HeadTooLarge,
    /// 503: too many admin connections.
    Unavailable,
    /// 505: not HTTP/1.0 or HTTP/1.1.
    VersionNotSupported,
}

impl Status {
    /// Code and reason phrase.
    #[must_use]
    pub const fn line(self) -> (u16, &'static str) {
        match self {
            Status::Ok => (200, "OK"),
            Status::BadRequest => (400, "Bad Request"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::RequestTimeout => (408, "Request Timeout"),
            Status::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Status::Unavailable => (503, "Service Unavailable"),
            Status::VersionNotSupported => (505, "HTTP Version Not Supported"),
        }
    }
}

/// What a complete request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The metrics page; `head_only` for `HEAD`.
    Metrics {
        /// Send the headers only.
        head_only: bool,
    },
    /// An error answer, with a one-line explanation.
    Error(Status, &'static str),
}

/// The result of looking at the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// No end of head yet, and still room for it: read more.
    Incomplete,
    /// Decided: answer this.
    Complete(Route),
}

/// Looks at the bytes received so far on an admin connection.
#[must_use]
pub fn parse_head(buf: &[u8]) -> Head {
    let Some(end) = head_end(buf) else {
        if buf.len() >= REQUEST_HEAD_MAX {
            return Head::Complete(Route::Error(
                Status::HeadTooLarge,
                "request head exceeds 8192 bytes",
            ));
        }
        // A request line that is already wrong need not wait for the rest.
        if let Some(line_end) = buf.iter().position(|&b| b == b'\n') {
            if let Route::Error(status, why) = route(&buf[..line_end]) {
                return Head::Complete(Route::Error(status, why));
            }
        }
        return Head::Incomplete;
    };
    if end > REQUEST_HEAD_MAX {
        return Head::Complete(Route::Error(
            Status::HeadTooLarge,
            "request head exceeds 8192 bytes",
        ));
    }
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(end);
    let head = &buf[..end];
    if head.iter().any(|&b| b == 0 || (b >= 0x80)) {
        return Head::Complete(Route::Error(
            Status::BadRequest,
            "request head must be ASCII text",
        ));
    }
    Head::Complete(route(&buf[..line_end]))
}

/// Index just past the blank line ending the head (CRLF CRLF, or bare LFs,
/// which RFC 9112 lets a server accept).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut previous_newline: Option<usize> = None;
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        if let Some(p) = previous_newline {
            let between = &buf[p + 1..i];
            if between.is_empty() || between == b"\r" {
                return Some(i + 1);
            }
        }
        previous_newline = Some(i);
    }
    None
}

/// Routes one request line (without its line end).
fn route(line: &[u8]) -> Route {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::Error(Status::BadRequest, "request line must be ASCII text");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Error(
            Status::BadRequest,
            "request line must be METHOD SP TARGET SP HTTP-VERSION",
        );
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/') && target != "*"
    {
        return Route::Error(Status::BadRequest, "malformed request line");
    }
    if !version.starts_with("HTTP/") {
        return Route::Error(Status::BadRequest, "malformed HTTP version");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Route::Error(
            Status::VersionNotSupported,
            "only HTTP/1.0 and HTTP/1.1 are spoken here",
        );
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Route::Error(
                Status::MethodNotAllowed,
                "only GET (and HEAD) are allowed here",
            )
        }
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::Error(Status::NotFound, "not found; the metrics are at /metrics")
    }
}

/// A whole response: status line, headers, and `body` unless `head_only`.
#[must_use]
pub fn response(status: Status, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let (code, reason) = status.line();
    let allow = if status == Status::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The response to an error route: the explanation as the body.
#[must_use]
pub fn error_response(status: Status, why: &str) -> Vec<u8> {
    response(
        status,
        "text/plain; charset=utf-8",
        &format!("{why}\n"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(head: &[u8]) -> Route {
        match parse_head(head) {
            Head::Complete(route) => route,
            Head::Incomplete => panic!("incomplete: {:?}", String::from_utf8_lossy(head)),
        }
    }

    fn status(head: &[u8]) -> Status {
        match routed(head) {
            Route::Error(status, _) => status,
            Route::Metrics { .. } => Status::Ok,
        }
    }

    #[test]
    fn metrics_is_found_with_or_without_a_query_and_headers() {
        assert_eq!(
            routed(b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            routed(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(parse_head(b""), Head::Incomplete);
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\n"), Head::Incomplete);
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"),
            Head::Incomplete
        );
    }

    #[test]
    fn everything_else_gets_a_clear_4xx() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), Status::NotFound);
        assert_eq!(status(b"GET /metricsx HTTP/1.1\r\n\r\n"), Status::NotFound);
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Status::MethodNotAllowed
        );
        assert_eq!(
            status(b"DELETE /metrics HTTP/1.1\r\n"),
            Status::MethodNotAllowed,
            "decided on the line"
        );
        assert_eq!(
            status(b"GET /metrics HTTP/2.0\r\n\r\n"),
            Status::VersionNotSupported
        );
        assert_eq!(status(b"GET /metrics\r\n\r\n"), Status::BadRequest);
        assert_eq!(
            status(b"GET  /metrics HTTP/1.1\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(status(b"get /metrics HTTP/1.1\r\n\r\n"), Status::BadRequest);
        assert_eq!(
            status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n"),
            Status::BadRequest,
            "TLS hello"
        );
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nX: \xff\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nX: \0\r\n\r\n"),
            Status::BadRequest
        );
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(REQUEST_HEAD_MAX, b'a');
        assert_eq!(status(&long), Status::HeadTooLarge);
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&long), Status::HeadTooLarge);
        assert_eq!(parse_head(&long[..REQUEST_HEAD_MAX - 1]), Head::Incomplete);
    }

    #[test]
    fn responses_close_and_carry_their_length() {
        let text = String::from_utf8(response(Status::Ok, METRICS_CONTENT_TYPE, "a 1\n", false))
            .expect("ascii");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.contains("\r\nContent-Length: 4\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\na 1\n"));
        let head = response(Status::Ok, METRICS_CONTENT_TYPE, "a 1\n", true);
        assert!(head.ends_with(
            b"Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        ));
        let refused =
            String::from_utf8(error_response(Status::MethodNotAllowed, "no")).expect("ascii");
        assert!(refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(refused.contains("\r\nAllow: GET, HEAD\r\n"));
    }
}
