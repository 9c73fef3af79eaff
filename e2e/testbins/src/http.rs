//! The HTTP side of the agnhost `netexec` stand-in: the endpoints the end-to-end suite uses
//! (`/hostname`: the pod's name; `/clientip`: the peer's `ip:port`, `[ip]:port` for IPv6, as
//! agnhost prints Go's `RemoteAddr`), plus `/echo?msg=`, `/healthz` and `/`.

use std::net::{IpAddr, SocketAddr};

/// The request line's path, or `None` for something that is not an HTTP/1.x GET or HEAD.
pub fn request_path(head: &str) -> Option<&str> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !matches!(method, "GET" | "HEAD")
        || !version.starts_with("HTTP/1.")
        || !target.starts_with('/')
    {
        return None;
    }
    Some(target)
}

/// A peer address as Go prints it: IPv4-mapped IPv6 peers of a dual-stack socket as IPv4.
pub fn client_ip(peer: SocketAddr) -> String {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    SocketAddr::new(ip, peer.port()).to_string()
}

/// Status code and body for a path.
pub fn respond(target: &str, hostname: &str, peer: SocketAddr) -> (u16, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/hostname" => (200, hostname.to_owned()),
        "/clientip" => (200, client_ip(peer)),
        "/healthz" => (200, "ok".to_owned()),
        "/echo" => (
            200,
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("msg="))
                .unwrap_or_default()
                .to_owned(),
        ),
        "/" => (200, "NOW: portway-e2e netexec".to_owned()),
        _ => (404, "404 page not found".to_owned()),
    }
}

/// Whether the client wants the connection kept after this request, as Go's net/http decides:
/// HTTP/1.1 keeps it unless `Connection: close`; HTTP/1.0 closes it unless
/// `Connection: keep-alive`.
pub fn keep_alive(head: &str) -> bool {
    let mut lines = head.lines();
    let http11 = lines
        .next()
        .is_some_and(|l| l.trim_end().ends_with("HTTP/1.1"));
    let connection = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    match connection.as_deref() {
        Some("close") => false,
        Some("keep-alive") => true,
        _ => http11,
    }
}

/// A complete HTTP/1.1 response; `keep` leaves the connection open for the next request.
pub fn response(status: u16, body: &str, keep: bool) -> String {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let connection = if keep { "keep-alive" } else { "close" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clientip_is_printed_like_go() {
        let v4: SocketAddr = "10.111.0.1:40000".parse().expect("addr");
        assert_eq!(
            respond("/clientip", "h", v4),
            (200, "10.111.0.1:40000".to_owned())
        );
        let mapped: SocketAddr = "[::ffff:10.111.0.1]:40001".parse().expect("addr");
        assert_eq!(client_ip(mapped), "10.111.0.1:40001");
        let v6: SocketAddr = "[fd00:10:111::1]:40002".parse().expect("addr");
        let printed = client_ip(v6);
        assert_eq!(printed, "[fd00:10:111::1]:40002");
        assert_eq!(
            printed.parse::<SocketAddr>().ok(),
            Some(v6),
            "the suite parses it back"
        );
    }

    #[test]
    fn paths_and_request_lines() {
        let peer: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        assert_eq!(
            respond("/hostname", "backend-abc", peer),
            (200, "backend-abc".to_owned())
        );
        assert_eq!(
            respond("/echo?x=1&msg=hi", "h", peer),
            (200, "hi".to_owned())
        );
        assert_eq!(respond("/nope", "h", peer).0, 404);
        assert_eq!(
            request_path("GET /clientip HTTP/1.0\r\nHost: x\r\n"),
            Some("/clientip")
        );
        assert_eq!(request_path("POST / HTTP/1.1\r\n"), None);
        assert_eq!(request_path("GET / SMTP\r\n"), None);
        let r = response(200, "abc", false);
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nabc"),
            "{r}"
        );
        assert!(r.contains("Content-Length: 3\r\n"), "{r}");
    }

    /// Go's net/http keeps HTTP/1.1 connections unless asked to close them, and closes HTTP/1.0
    /// ones unless asked to keep them; the upgrade test holds a keep-alive connection open across
    /// an agent replacement.
    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        for (head, keep) in [
            ("GET / HTTP/1.1\r\nHost: x\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: close\r\n", false),
            ("GET / HTTP/1.1\r\nconnection: Close\r\n", false),
            ("GET / HTTP/1.0\r\nHost: x\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n", true),
        ] {
            assert_eq!(keep_alive(head), keep, "{head:?}");
        }
        assert!(response(200, "", true).contains("Connection: keep-alive\r\n"));
        assert!(response(200, "", false).contains("Connection: close\r\n"));
    }
}
