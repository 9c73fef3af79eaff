//! A stand-in for agnhost `netexec` (`registry.k8s.io/e2e-test-images/agnhost`), which cannot be
//! pulled where no registry is reachable: `agnhost netexec --http-port=8080 [--udp-port=-1]`
//! serves `/hostname`, `/clientip`, `/echo?msg=`, `/healthz` and `/` over HTTP/1.x (see
//! `portway_e2e_testbins::http`). UDP and agnhost's other commands are not implemented.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use portway_e2e_testbins::http;

const DEFAULT_HTTP_PORT: u16 = 8080;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 * 1024;

fn parse_args(args: &[String]) -> Result<u16, String> {
    let Some((cmd, flags)) = args.split_first() else {
        return Err("usage: agnhost netexec --http-port=PORT [--udp-port=-1]".into());
    };
    if cmd != "netexec" {
        return Err(format!("agnhost {cmd}: only netexec is implemented"));
    }
    let mut port = DEFAULT_HTTP_PORT;
    for flag in flags {
        if let Some(v) = flag.strip_prefix("--http-port=") {
            port = v.parse().map_err(|e| format!("{flag}: {e}"))?;
        } else if flag == "--udp-port=-1" {
            // no UDP server, as asked
        } else if flag.starts_with("--udp-port=") || flag.starts_with("--sctp-port=") {
            return Err(format!("{flag}: UDP and SCTP are not implemented"));
        } else {
            return Err(format!("unknown flag {flag}"));
        }
    }
    Ok(port)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Requests one connection may carry (a bound; keep-alive clients reconnect after it).
const MAX_REQUESTS_PER_CONNECTION: usize = 100_000;

/// Serves requests on one connection until the client closes it, asks to close it, or stays
/// idle for [`READ_TIMEOUT`]. GET and HEAD carry no body, so bytes after a request's head
/// belong to the next request.
fn serve(mut stream: TcpStream, peer: SocketAddr, host: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 2048];
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i + 4);
            }
            if buf.len() >= MAX_HEAD {
                break None;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(()); // the client is done
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let Some(end) = end else {
            stream.write_all(http::response(404, "request head too large", false).as_bytes())?;
            return stream.flush();
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let keep = http::keep_alive(&head);
        let (status, body) = match http::request_path(&head) {
            Some(target) => http::respond(target, host, peer),
            None => (404, "bad request".to_owned()),
        };
        stream.write_all(http::response(status, &body, keep).as_bytes())?;
        stream.flush()?;
        if !keep {
            return Ok(());
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = match parse_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("agnhost: {e}");
            std::process::exit(2);
        }
    };
    // A dual-stack socket where the pod has IPv6, IPv4 only otherwise.
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)));
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            eprintln!("agnhost: listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    let host = hostname();
    eprintln!("agnhost netexec: serving HTTP on port {port} as {host}");
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let host = host.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(stream, peer, &host) {
                eprintln!("agnhost: {peer}: {e}");
            }
        });
    }
}
