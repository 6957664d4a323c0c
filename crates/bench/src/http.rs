//! A minimal HTTP/1.1 client for the node's API (one request per
//! connection, `Content-Length` bodies): all the `fanout` scenario needs,
//! without another HTTP stack in the generator.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BenchError;

/// Sends `POST path` with a JSON body and a bearer key; returns status and body.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    api_key: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), BenchError> {
    request_json(addr, "POST", path, api_key, body).await
}

/// Sends `method path` with a JSON body and a bearer key; returns status and body.
pub async fn request_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    api_key: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), BenchError> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::with_capacity(4096);
    // Bounded: a response over 64 MiB is refused.
    loop {
        let n = s.read_buf(&mut buf).await?;
        if n == 0 || buf.len() > 64 << 20 {
            break;
        }
        if let Some((status, body)) = parse_response(&buf) {
            return Ok((status, body));
        }
    }
    parse_response(&buf)
        .ok_or_else(|| BenchError::Http(format!("incomplete response to {method} {path}")))
}

/// Status and body once the whole response (by Content-Length, or to EOF) is in `buf`.
fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = &buf[end + 4..];
    match len {
        Some(n) if body.len() >= n => Some((status, body[..n].to_vec())),
        Some(_) => None,
        None => Some((status, body.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(r), Some((200, b"{}".to_vec())));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}"),
            None
        );
    }
}
