//! The `/metrics` endpoint of `smr replica --metrics-addr`: a minimal HTTP/1.1 server for
//! Prometheus scrapes.
//!
//! Why not hyper: nothing in the dependency tree pulls it in (quinn and tokio do not), and a
//! scrape endpoint needs one route and no keep-alive, bodies or TLS. So this is tokio's TCP
//! listener and `httparse` (the parser hyper itself uses) for the request, with its own bounds:
//! at most [`Limits::max_connections`] connections at once (more are closed at once, unread),
//! at most [`Limits::max_request_bytes`] of request head (more is answered 431 and closed), and
//! [`Limits::request_timeout`] for the whole exchange, reading and writing (a slow or silent
//! client is dropped). One request per connection (`Connection: close`). Nothing in here
//! indexes or unwraps what a client sent: hostile bytes get a 4xx status or a closed socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The path that serves the metrics.
pub const METRICS_PATH: &str = "/metrics";

/// The bounds of the endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; a further one is closed without being read.
    pub max_connections: usize,
    /// Bytes of request line and headers; a longer head is answered 431.
    pub max_request_bytes: usize,
    /// Time for a whole exchange, from accept to the last byte written.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 8,
            max_request_bytes: 8 * 1024,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Renders the metrics text into the string it is given.
pub type Render = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Binds `addr` (exactly: no wildcard is substituted) for the endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` until the task is dropped, with `content_type` and the
/// text `render` produces at each scrape.
pub async fn serve(
    listener: TcpListener,
    limits: Limits,
    content_type: &'static str,
    render: Render,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: too many connections; closing one");
            drop(stream);
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let exchange = answer(stream, limits.max_request_bytes, content_type, &render);
            if tokio::time::timeout(limits.request_timeout, exchange)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "metrics endpoint: request timed out");
            }
            drop(slot);
        });
    }
}

/// What a request head asks for.
enum Verdict {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// Reads one request head (bounded) and answers it.
async fn answer(
    mut stream: TcpStream,
    max_request_bytes: usize,
    content_type: &str,
    render: &Render,
) {
    let mut head = vec![0u8; max_request_bytes.max(1)];
    let mut filled = 0;
    let verdict = loop {
        if filled == head.len() {
            break Verdict::TooLarge;
        }
        let Some(room) = head.get_mut(filled..) else {
            break Verdict::TooLarge;
        };
        match stream.read(room).await {
            // Closed before a whole head: nothing to answer.
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        let Some(received) = head.get(..filled) else {
            break Verdict::TooLarge;
        };
        if let Some(verdict) = parse(received) {
            break verdict;
        }
    };
    let (status, body, content_type, head_only) = match verdict {
        Verdict::Metrics { head_only } => {
            let mut body = String::new();
            render(&mut body);
            ("200 OK", body, content_type, head_only)
        }
        Verdict::NotFound => (
            "404 Not Found",
            "not found; try GET /metrics\n".to_string(),
            "text/plain",
            false,
        ),
        Verdict::MethodNotAllowed => (
            "405 Method Not Allowed",
            "only GET /metrics\n".to_string(),
            "text/plain",
            false,
        ),
        Verdict::BadRequest => (
            "400 Bad Request",
            "bad request\n".to_string(),
            "text/plain",
            false,
        ),
        Verdict::TooLarge => (
            "431 Request Header Fields Too Large",
            "request head too large\n".to_string(),
            "text/plain",
            false,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(&body);
    }
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The verdict on a request head, or `None` if it is not complete yet.
fn parse(received: &[u8]) -> Option<Verdict> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(received) {
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Verdict::TooLarge),
        Err(_) => Some(Verdict::BadRequest),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            // A query string (Prometheus adds none, but some tools do) is ignored.
            let path = path.split('?').next().unwrap_or("");
            let head_only = match request.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => return Some(Verdict::MethodNotAllowed),
            };
            Some(if path == METRICS_PATH {
                Verdict::Metrics { head_only }
            } else {
                Verdict::NotFound
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    async fn start(limits: Limits) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            limits,
            "text/plain",
            Arc::new(|out: &mut String| out.push_str("smr_up 1\n")),
        ));
        addr
    }

    #[tokio::test]
    async fn answers_get_metrics_and_refuses_the_rest() {
        let addr = start(Limits::default()).await;
        assert_eq!(
            exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nsmr_up 1\n"
        );
        assert!(exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            .await
            .ends_with("Content-Length: 9\r\nConnection: close\r\n\r\n"));
        assert!(exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(exchange(addr, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(exchange(addr, b"\x00\xff garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400 Bad Request\r\n"));
        let mut many_headers = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many_headers.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many_headers.extend_from_slice(b"\r\n");
        assert!(exchange(addr, &many_headers)
            .await
            .starts_with("HTTP/1.1 431 "));
    }

    #[tokio::test]
    async fn an_oversized_request_line_is_answered_431_without_reading_it_all() {
        let addr = start(Limits::default()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(1 << 20));
        // The server stops reading after its bound: the write may fail once it closed.
        let _ = stream.write_all(line.as_bytes()).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 431 "),
            "{response}"
        );
        // And the server still serves.
        assert!(exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[tokio::test]
    async fn slow_partial_requests_hold_a_bounded_number_of_slots_for_a_bounded_time() {
        let limits = Limits {
            max_connections: 4,
            max_request_bytes: 1024,
            request_timeout: Duration::from_millis(300),
        };
        let addr = start(limits).await;
        // Slowloris: many connections that send part of a head and then nothing.
        let mut idle = Vec::new();
        for _ in 0..20 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let _ = stream.write_all(b"GET /metr").await;
            idle.push(stream);
        }
        // Past the bound, connections are closed at once, unread: at most 4 remain open.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut open = 0;
        for stream in &mut idle {
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte)).await {
                Err(_) => open += 1,     // still waiting: holds a slot
                Ok(Ok(0) | Err(_)) => {} // closed by the server
                Ok(Ok(_)) => panic!("an unfinished request got an answer"),
            }
        }
        assert!(
            open <= limits.max_connections,
            "{open} connections held open"
        );
        // After the timeout every slot is free again and a scrape is served.
        tokio::time::sleep(limits.request_timeout * 2).await;
        assert!(exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200 OK\r\n"));
        for stream in &mut idle {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await;
            assert!(
                matches!(read, Ok(Ok(0) | Err(_))),
                "a slow connection outlived the request timeout"
            );
        }
    }
}
