//! EndpointSlices to backends (`Host` mode): ready endpoints with a usable address of the
//! slice's family, and the slice's ports by name and protocol.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use portway_crds::Protocol;

use super::{Note, family_of, is_usable};

/// One ready endpoint address with the ports its slice publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    /// `nodeName` of the endpoint (selects `Local` endpoints).
    pub node_name: Option<String>,
    /// `(port name, protocol, port)` from the slice.
    pub ports: Vec<(String, Protocol, u16)>,
}

impl Backend {
    /// The endpoint's socket address for a Service port (matched by name and protocol, as
    /// kube-proxy does), if the slice publishes it.
    pub fn port_for(&self, name: &str, protocol: Protocol) -> Option<SocketAddr> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| SocketAddr::new(self.address, *port))
    }
}

fn protocol(s: Option<&str>) -> Option<Protocol> {
    match s.unwrap_or("TCP") {
        "TCP" => Some(Protocol::TCP),
        "UDP" => Some(Protocol::UDP),
        "SCTP" => Some(Protocol::SCTP),
        _ => None,
    }
}

/// Ready backends of `slices`, and a note counting the endpoints that could not be used.
/// Not-ready endpoints are skipped silently (that is their normal state); a missing `ready`
/// condition counts as ready, as the EndpointSlice API asks consumers to do.
pub fn backends_for(slices: &[EndpointSlice]) -> (Vec<Backend>, Option<Note>) {
    let mut out = Vec::new();
    let mut ignored = 0usize;
    let mut example: Option<String> = None;
    let mut ignore = |what: String, ignored: &mut usize| {
        *ignored += 1;
        if example.as_ref().is_none_or(|e| what < *e) {
            example = Some(what);
        }
    };
    for slice in slices {
        let slice_name = slice.metadata.name.as_deref().unwrap_or("<unnamed>");
        let family = match slice.address_type.as_str() {
            "IPv4" => portway_crds::IpFamily::IPv4,
            "IPv6" => portway_crds::IpFamily::IPv6,
            other => {
                if !slice.endpoints.is_empty() {
                    ignore(
                        format!("slice {slice_name}: addressType {other:?}"),
                        &mut ignored,
                    );
                }
                continue;
            }
        };
        let mut ports = Vec::new();
        for p in slice.ports.iter().flatten() {
            let number = p
                .port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0);
            match (protocol(p.protocol.as_deref()), number) {
                (Some(proto), Some(n)) => {
                    ports.push((p.name.clone().unwrap_or_default(), proto, n));
                }
                _ => ignore(
                    format!("slice {slice_name}: port {:?}/{:?}", p.port, p.protocol),
                    &mut ignored,
                ),
            }
        }
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            // Consumers use the first address only (EndpointSlice API).
            let Some(raw) = ep.addresses.first() else {
                ignore(
                    format!("slice {slice_name}: endpoint without address"),
                    &mut ignored,
                );
                continue;
            };
            match raw.parse::<IpAddr>() {
                Ok(ip) if family_of(&ip) == family && is_usable(&ip) => out.push(Backend {
                    address: ip,
                    node_name: ep.node_name.clone(),
                    ports: ports.clone(),
                }),
                _ => {
                    let shown: String = raw.chars().take(64).collect();
                    ignore(
                        format!("slice {slice_name}: address {shown:?}"),
                        &mut ignored,
                    );
                }
            }
        }
    }
    let note = example
        .filter(|_| ignored > 0)
        .map(|example| Note::EndpointsIgnored {
            count: ignored,
            example,
        });
    (out, note)
}
