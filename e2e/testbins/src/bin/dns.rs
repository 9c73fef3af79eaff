//! The cluster DNS stand-in of the local cluster (Deployment `coredns` in kube-system behind the
//! cluster DNS Service): answers `A`/`AAAA` of `<service>.<namespace>.svc.<domain>` over UDP and
//! TCP from a record file that the harness's `netd` keeps from the cluster's Services (mounted
//! from the host). See `portway_e2e_testbins::dns` for what it answers.
//!
//!   dns --records=/records/hosts [--domain=cluster.local] [--port=53]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use portway_e2e_testbins::dns::{self, Records};

const RELOAD_EVERY: Duration = Duration::from_secs(1);
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

struct Args {
    records: PathBuf,
    domain: String,
    port: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        records: PathBuf::new(),
        domain: "cluster.local".into(),
        port: 53,
    };
    for a in std::env::args().skip(1) {
        if let Some(v) = a.strip_prefix("--records=") {
            args.records = PathBuf::from(v);
        } else if let Some(v) = a.strip_prefix("--domain=") {
            args.domain = v.to_owned();
        } else if let Some(v) = a.strip_prefix("--port=") {
            args.port = v.parse().map_err(|e| format!("{a}: {e}"))?;
        } else {
            return Err(format!("unknown argument {a}"));
        }
    }
    if args.records.as_os_str().is_empty() {
        return Err("--records=<file> is required".into());
    }
    Ok(args)
}

/// Re-reads the record file whenever its modification time changes.
fn reload_loop(path: PathBuf, records: Arc<RwLock<Records>>) {
    let mut seen: Option<SystemTime> = None;
    loop {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified != seen {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let (new, bad) = Records::parse(&text);
                    for line in bad {
                        eprintln!("dns: {}: unreadable line {line:?}", path.display());
                    }
                    if let Ok(mut r) = records.write() {
                        *r = new;
                    }
                    seen = modified;
                }
                Err(e) => eprintln!("dns: {}: {e}", path.display()),
            }
        }
        std::thread::sleep(RELOAD_EVERY);
    }
}

fn reply(msg: &[u8], records: &RwLock<Records>, domain: &str) -> Option<Vec<u8>> {
    let r = records.read().ok()?;
    dns::answer(msg, &r, domain)
}

fn serve_tcp(mut s: TcpStream, records: &RwLock<Records>, domain: &str) -> std::io::Result<()> {
    s.set_read_timeout(Some(TCP_TIMEOUT))?;
    loop {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut msg)?;
        let Some(out) = reply(&msg, records, domain) else {
            return Ok(());
        };
        let n = u16::try_from(out.len()).unwrap_or(u16::MAX);
        s.write_all(&n.to_be_bytes())?;
        s.write_all(&out)?;
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dns: {e}");
            std::process::exit(2);
        }
    };
    let udp = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, args.port))
        .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, args.port)));
    let tcp = TcpListener::bind((Ipv6Addr::UNSPECIFIED, args.port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port)));
    let (udp, tcp) = match (udp, tcp) {
        (Ok(u), Ok(t)) => (u, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("dns: listen on port {}: {e}", args.port);
            std::process::exit(1);
        }
    };
    let records = Arc::new(RwLock::new(Records::default()));
    let domain: Arc<str> = Arc::from(args.domain.as_str());
    {
        let records = Arc::clone(&records);
        let path = args.records.clone();
        std::thread::spawn(move || reload_loop(path, records));
    }
    {
        let records = Arc::clone(&records);
        let domain = Arc::clone(&domain);
        std::thread::spawn(move || {
            for conn in tcp.incoming() {
                let Ok(s) = conn else { continue };
                let records = Arc::clone(&records);
                let domain = Arc::clone(&domain);
                std::thread::spawn(move || {
                    if let Err(e) = serve_tcp(s, &records, &domain) {
                        eprintln!("dns: tcp: {e}");
                    }
                });
            }
        });
    }
    eprintln!(
        "dns: serving {} on port {} from {}",
        args.domain,
        args.port,
        args.records.display()
    );
    let mut buf = [0u8; 4096];
    loop {
        let Ok((n, peer)) = udp.recv_from(&mut buf) else {
            continue;
        };
        if let Some(out) = reply(&buf[..n], &records, &domain) {
            let _ = udp.send_to(&out, peer);
        }
    }
}
