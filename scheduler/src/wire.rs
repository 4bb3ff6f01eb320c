//! The listener the API is served on: TCP, with one change to what goes out. When hyper cannot
//! read a request at all (a URI over its 64 KiB limit: 414; headers too large: 431; a request
//! line that is not HTTP: 400) it answers by itself, before any handler or middleware, with no
//! body. Those answers are rewritten here into the API's JSON error shape with the same status,
//! so that every error a client can get has one shape. Everything else passes through untouched.

use axum::serve::Listener;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP listener whose connections answer hyper's own errors in JSON.
pub struct JsonErrors(pub TcpListener);

impl Listener for JsonErrors {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = Listener::accept(&mut self.0).await;
        (
            Conn {
                io,
                pending: Vec::new(),
                sent: 0,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// One connection; `pending[sent..]` is a rewritten answer still to be written.
pub struct Conn {
    io: TcpStream,
    pending: Vec<u8>,
    sent: usize,
}

/// The JSON answer for a bodiless error answer `head` of hyper's own, if it is one: a status of
/// 400 or more, `content-length: 0`, nothing after the head.
pub fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    // Cheap tests first: this runs on every write.
    let error_head = head.len() < 4096
        && (head.starts_with(b"HTTP/1.1 4") || head.starts_with(b"HTTP/1.1 5"))
        && head.ends_with(b"\r\n\r\n");
    if !error_head {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    if status < 400 || !text.ends_with("\r\n\r\n") {
        return None;
    }
    let lines: Vec<&str> = text.trim_end().split("\r\n").collect();
    let empty = lines
        .iter()
        .any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    if !empty {
        return None;
    }
    let (code, message) = match status {
        414 => ("uri_too_long", "the request URI is too long"),
        431 => ("headers_too_large", "the request's headers are too large"),
        400 => ("invalid", "the request is not valid HTTP"),
        _ => ("error", "the request could not be read"),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut out = String::with_capacity(head.len() + body.len() + 256);
    out.push_str(lines[0]);
    out.push_str("\r\n");
    for l in &lines[1..] {
        if !l.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("content-type: application/json\r\n");
    out.push_str("x-content-type-options: nosniff\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    Some(out.into_bytes())
}

impl Conn {
    /// Writes what is left of a rewritten answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as a rewritten answer when it is one of hyper's bodiless errors.
    fn take(&mut self, buf: &[u8]) -> bool {
        match rewrite(buf) {
            Some(out) => {
                self.pending = out;
                self.sent = 0;
                true
            }
            None => false,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if self.take(buf) {
            // The original is consumed; the rewrite goes out on the next write or flush.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if bufs.len() == 1 && self.take(&bufs[0]) {
            return Poll::Ready(Ok(bufs[0].len()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bodiless_errors_become_json() {
        let head = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 04:21:48 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(
            head.contains("connection: close") && head.contains("content-type: application/json")
        );
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "uri_too_long");
    }

    #[test]
    fn everything_else_passes() {
        for head in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"some\": \"body bytes\"}",
        ] {
            assert!(rewrite(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
