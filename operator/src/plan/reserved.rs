//! Host ports no agent may take: ports something else holds on every node, such as kubelet's
//! API or the operator's own metrics listener when it runs on the host network.
//!
//! An agent DaemonSet asking for such a port would either never start (its pod cannot get the
//! port) or, worse, take it: agents run at `system-node-critical` priority, so the scheduler
//! preempts a lower-priority pod that holds the port — the operator itself when it runs with
//! `hostNetwork` — and the evicted pod then cannot come back. A Service asking for a reserved
//! port is in `PortConflict` (`PortReserved`) instead, with no DaemonSet.

use std::fmt;
use std::str::FromStr;

use portway_crds::Protocol;

/// Default of `--reserved-host-ports`: kubelet's API port, where the API server reaches every
/// node (`kubectl logs`, `exec`, `port-forward`).
pub const DEFAULT_RESERVED_HOST_PORTS: &str = "TCP/10250=kubelet";

/// One reserved `(protocol, port)` and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReservedPort {
    pub protocol: Protocol,
    pub port: i32,
    /// Who holds the port, for messages (e.g. `kubelet`, `portway-operator-metrics`).
    pub owner: String,
}

/// Why a `--reserved-host-ports` entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReservedPortError {
    #[error(
        "reserved host port {0:?}: expected PROTOCOL/PORT=OWNER, e.g. TCP/8080=portway-operator-metrics"
    )]
    Shape(String),
    #[error("reserved host port {entry:?}: protocol {protocol:?} is not TCP, UDP or SCTP")]
    Protocol { entry: String, protocol: String },
    #[error("reserved host port {0:?}: the port must be a number from 1 to 65535")]
    Port(String),
    #[error(
        "reserved host port {0:?}: the owner must be 1-63 lower-case letters, digits and '-' (it appears in Service conditions)"
    )]
    Owner(String),
}

impl FromStr for ReservedPort {
    type Err = ReservedPortError;

    /// `PROTOCOL/PORT=OWNER`, e.g. `TCP/8080=portway-operator-metrics`.
    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        let (spec, owner) = entry
            .split_once('=')
            .ok_or_else(|| ReservedPortError::Shape(entry.to_owned()))?;
        let (protocol, port) = spec
            .split_once('/')
            .ok_or_else(|| ReservedPortError::Shape(entry.to_owned()))?;
        let protocol = match protocol {
            "TCP" => Protocol::TCP,
            "UDP" => Protocol::UDP,
            "SCTP" => Protocol::SCTP,
            other => {
                return Err(ReservedPortError::Protocol {
                    entry: entry.to_owned(),
                    protocol: other.to_owned(),
                });
            }
        };
        let port = port
            .parse::<i32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| ReservedPortError::Port(entry.to_owned()))?;
        let owner_ok = !owner.is_empty()
            && owner.len() <= 63
            && owner
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !owner_ok {
            return Err(ReservedPortError::Owner(entry.to_owned()));
        }
        Ok(ReservedPort {
            protocol,
            port,
            owner: owner.to_owned(),
        })
    }
}

impl fmt::Display for ReservedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}={}", self.protocol.as_str(), self.port, self.owner)
    }
}

/// The value of `--reserved-host-ports`: a comma-separated list, sorted, one entry per
/// (protocol, port); the empty string reserves nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservedPorts(pub Vec<ReservedPort>);

impl FromStr for ReservedPorts {
    type Err = ReservedPortError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        parse_list(value).map(ReservedPorts)
    }
}

/// Parses a comma-separated `--reserved-host-ports` value (empty: none).
pub fn parse_list(value: &str) -> Result<Vec<ReservedPort>, ReservedPortError> {
    let mut out = value
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .map(ReservedPort::from_str)
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup_by(|a, b| a.protocol == b.protocol && a.port == b.port);
    Ok(out)
}

/// The default reservation ([`DEFAULT_RESERVED_HOST_PORTS`]): kubelet's API port.
pub fn defaults() -> Vec<ReservedPort> {
    vec![ReservedPort {
        protocol: Protocol::TCP,
        port: 10250,
        owner: "kubelet".to_owned(),
    }]
}

/// The reservation of `(protocol, port)`, if any.
pub fn find(reserved: &[ReservedPort], protocol: Protocol, port: i32) -> Option<&ReservedPort> {
    reserved
        .iter()
        .find(|r| r.protocol == protocol && r.port == port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_lists() {
        assert_eq!(
            parse_list("TCP/8080=portway-operator-metrics, UDP/53=dns,,").expect("list"),
            [
                ReservedPort {
                    protocol: Protocol::TCP,
                    port: 8080,
                    owner: "portway-operator-metrics".into()
                },
                ReservedPort {
                    protocol: Protocol::UDP,
                    port: 53,
                    owner: "dns".into()
                },
            ]
        );
        assert_eq!(parse_list("").expect("empty"), []);
        assert_eq!(
            parse_list(DEFAULT_RESERVED_HOST_PORTS).expect("default"),
            defaults()
        );
        // The same port twice is one reservation (the first owner in order is kept).
        assert_eq!(
            parse_list("TCP/80=b,TCP/80=a").expect("dup").len(),
            1,
            "duplicates collapse"
        );
    }

    #[test]
    fn refuses_malformed_entries_with_the_entry_named() {
        for (entry, want) in [
            ("8080", ReservedPortError::Shape("8080".into())),
            ("TCP/8080", ReservedPortError::Shape("TCP/8080".into())),
            (
                "tcp/8080=x",
                ReservedPortError::Protocol {
                    entry: "tcp/8080=x".into(),
                    protocol: "tcp".into(),
                },
            ),
            ("TCP/0=x", ReservedPortError::Port("TCP/0=x".into())),
            ("TCP/65536=x", ReservedPortError::Port("TCP/65536=x".into())),
            ("TCP/http=x", ReservedPortError::Port("TCP/http=x".into())),
            ("TCP/80=", ReservedPortError::Owner("TCP/80=".into())),
            (
                "TCP/80=Kubelet",
                ReservedPortError::Owner("TCP/80=Kubelet".into()),
            ),
        ] {
            assert_eq!(entry.parse::<ReservedPort>(), Err(want), "{entry}");
        }
        let e = parse_list("TCP/80=a,bad").expect_err("bad entry");
        assert!(e.to_string().contains("\"bad\""), "{e}");
    }

    #[test]
    fn display_round_trips() {
        for p in defaults() {
            assert_eq!(p.to_string().parse::<ReservedPort>(), Ok(p));
        }
    }
}
