//! The pure core of the agent: desired forwarding = f(spec, addresses, endpoints, mode).
//!
//! [`build`] turns a [`ServiceLoadBalancerSpec`] and a [`Context`] (the addresses the agent
//! found in its network namespace, the node's addresses from the downward API, the Service's
//! EndpointSlices) into a [`RuleSet`]: a backend-neutral description of what to forward. The
//! iptables backend ([`crate::dataplane::iptables`]) renders a `RuleSet` into chains; nothing in
//! this module touches the kernel, the clock, the environment or the API server.
//!
//! # Contract of [`build`]
//!
//! - **Total**: it never panics, for any spec and any context (checked by a proptest and by the
//!   hostile corpus of issue 8).
//! - **Deterministic**: equal inputs give equal outputs, independent of the order of
//!   `local_addresses`, `host_ips`, EndpointSlices and endpoints (everything is sorted).
//! - **All or nothing**: an invalid spec yields `Err(RuleError)` and no rules at all, never a
//!   partial rule set. Rejected: no ports or more than [`MAX_PORTS`]; a `port`, `hostPort` or
//!   `nodePort` outside 1..=65535; a repeated `(protocol, hostPort)`; a port name that is not a
//!   DNS label (lower-case letters, digits, `-`, at most 63 characters); no `ipFamilies`,
//!   more than two or a repeated one; `clusterIPs` that are not IP addresses, are unusable
//!   (unspecified, loopback, multicast), do not match `ipFamilies` position by position, or are
//!   missing where `Pod` mode with `externalTrafficPolicy: Cluster` needs them; a missing
//!   `nodePort` where `Pod` mode with `Local` needs it; more than [`MAX_SOURCE_RANGES`] source
//!   ranges or one that is not a CIDR; a namespace/name in the context that is not a DNS label.
//!   Unknown protocols cannot reach a typed spec: [`build_from_json`] reports them (and any
//!   other shape error) as [`RuleError::Malformed`].
//! - **Environment shortfalls are notes, not errors**: a family with no usable local address,
//!   a `Local` Service with no node address of a family, endpoints that cannot be used
//!   (bad address, wrong family, not ready) or that exceed [`MAX_TARGETS_PER_PORT`] are left
//!   out and described in [`RuleSet::notes`]. A port with no ready endpoint in `Host` mode is
//!   kept with no targets, which the backend turns into a reject rule (and the agent into
//!   `Forwarding=False`, reason `NoEndpoints`).
//! - **Bounded output**: at most `MAX_PORTS x 2 families x MAX_LOCAL_ADDRESSES` entry rules and
//!   `MAX_PORTS x 2 x MAX_TARGETS_PER_PORT` targets, whatever the input size.
//! - **Safe to render**: every string that reaches a rule (names in comments, addresses,
//!   CIDRs) is validated or re-printed from parsed values, so no input can inject iptables
//!   syntax.
//!
//! # Semantics
//!
//! - `Pod` mode (the agent in its pod's netns, klipper-lb's placement): each host port on the
//!   pod's addresses is DNATed, per family, to `clusterIP:port` (`externalTrafficPolicy:
//!   Cluster`) or to the node's address of that family (`HOST_IPS`) and the `nodePort`
//!   (`Local`), and masqueraded so replies come back through the pod. The client address is
//!   therefore not preserved in `Pod` mode.
//! - `Host` mode (the agent in the node's netns): each host port on the node's addresses is
//!   DNATed to ready endpoints, spread evenly. `Local`: only this node's endpoints, no SNAT, so
//!   the backend sees the client's address. `Cluster`: every ready endpoint, masqueraded so the
//!   reply returns through this node (kube-proxy's chains are not involved or touched).
//! - `sourceRanges`, when set, are enforced in both modes: packets from other sources to a
//!   forwarded port are dropped. A family with no range of its own admits nobody (deny by
//!   default; see [`Note::SourceRangesExcludeFamily`]).

mod endpoints;
mod validate;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portway_crds::{DataplaneMode, IpFamily, Protocol, ServiceLoadBalancerSpec, TrafficPolicy};
use serde::Serialize;

pub use endpoints::{Backend, backends_for};
pub use validate::{is_dns_label, is_port_name};

/// Most ports a spec may list (the CRD's `maxItems`).
pub const MAX_PORTS: usize = 100;
/// Most `sourceRanges` (the CRD's `maxItems`).
pub const MAX_SOURCE_RANGES: usize = 256;
/// Most local addresses forwarded from, per family (the status schema's `maxItems` is 16 in all).
pub const MAX_LOCAL_ADDRESSES: usize = 8;
/// Most DNAT targets per port and family; further endpoints are left out with a note.
pub const MAX_TARGETS_PER_PORT: usize = 256;

/// Everything besides the spec that the desired rules depend on. All fields are plain data so
/// tests and fuzzers can build any context.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    /// Namespace of the Service (a DNS label; used in rule comments).
    pub namespace: String,
    /// Name of the Service (a DNS label; used in rule comments).
    pub name: String,
    /// This node's name (selects `Local` endpoints in `Host` mode).
    pub node_name: String,
    /// Addresses found in the agent's netns that traffic arrives on: the pod's addresses in
    /// `Pod` mode, the node's in `Host` mode. Unusable ones (loopback, link-local, multicast,
    /// unspecified) are ignored.
    pub local_addresses: Vec<IpAddr>,
    /// The node's addresses (`HOST_IPS`): DNAT targets for `Local` in `Pod` mode.
    pub host_ips: Vec<IpAddr>,
    /// The Service's EndpointSlices (used in `Host` mode only).
    pub endpoint_slices: Vec<EndpointSlice>,
}

/// Why a spec (or context) was rejected. No rules are produced for an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("the spec could not be read: {0}")]
    Malformed(String),
    #[error("spec.ports is empty: nothing to forward")]
    NoPorts,
    #[error("spec.ports has {0} entries; at most {MAX_PORTS} are allowed")]
    TooManyPorts(usize),
    #[error("spec.ports[{index}].{field} is {value}; it must be between 1 and 65535")]
    InvalidPort {
        index: usize,
        field: &'static str,
        value: i64,
    },
    #[error(
        "spec.ports[{index}].name {name:?} is not a valid port name (a DNS label: lower-case letters, digits and '-', at most 63 characters)"
    )]
    InvalidPortName { index: usize, name: String },
    #[error("spec.ports[{index}] repeats {protocol} hostPort {host_port}")]
    DuplicatePort {
        index: usize,
        protocol: &'static str,
        host_port: u16,
    },
    #[error(
        "spec.ports[{index}] has no nodePort, which externalTrafficPolicy Local needs in Pod mode"
    )]
    MissingNodePort { index: usize },
    #[error("spec.ipFamilies is empty")]
    NoFamilies,
    #[error("spec.ipFamilies {0}")]
    InvalidFamilies(String),
    #[error("spec.clusterIPs[{index}] {value:?} is not a usable IP address")]
    InvalidClusterIp { index: usize, value: String },
    #[error("spec.clusterIPs and spec.ipFamilies do not match: {0}")]
    FamiliesMismatch(String),
    #[error(
        "spec.clusterIPs is empty, but Pod mode with externalTrafficPolicy Cluster forwards to the cluster IPs"
    )]
    MissingClusterIps,
    #[error("spec.sourceRanges has {0} entries; at most {MAX_SOURCE_RANGES} are allowed")]
    TooManySourceRanges(usize),
    #[error("spec.sourceRanges[{index}] {value:?} is not a CIDR such as 203.0.113.0/24")]
    InvalidSourceRange { index: usize, value: String },
    #[error("the Service {field} {value:?} is not a DNS label")]
    InvalidServiceName { field: &'static str, value: String },
}

/// Something [`build`] left out of the rules, for the status message and the logs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Note {
    /// The Service has this family, but the agent's netns has no usable address of it.
    NoLocalAddress { family: IpFamily },
    /// `Local` in `Pod` mode: no node address (`HOST_IPS`) of this family to send to.
    NoHostIp { family: IpFamily },
    /// `sourceRanges` are set but none is of this family, so nobody of it is admitted.
    SourceRangesExcludeFamily { family: IpFamily },
    /// `Host` mode: a port has no ready endpoint (of this node, for `Local`) in this family.
    NoEndpoints {
        family: IpFamily,
        protocol: Protocol,
        port: u16,
    },
    /// Endpoints that could not be used (bad address or port, wrong family, FQDN slices).
    EndpointsIgnored { count: usize, example: String },
    /// More endpoints than [`MAX_TARGETS_PER_PORT`]; the first ones (sorted) are used.
    TargetsTruncated {
        family: IpFamily,
        protocol: Protocol,
        port: u16,
        total: usize,
    },
    /// More local addresses than [`MAX_LOCAL_ADDRESSES`]; the first ones (sorted) are used.
    AddressesTruncated { family: IpFamily, total: usize },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLocalAddress { family } => {
                write!(f, "no {} address to forward from", family.as_str())
            }
            Self::NoHostIp { family } => write!(
                f,
                "no {} node address (HOST_IPS) to send Local traffic to",
                family.as_str()
            ),
            Self::SourceRangesExcludeFamily { family } => write!(
                f,
                "sourceRanges has no {} range, so no {} client is admitted",
                family.as_str(),
                family.as_str()
            ),
            Self::NoEndpoints {
                family,
                protocol,
                port,
            } => write!(
                f,
                "no ready {} endpoint for {} {}",
                family.as_str(),
                protocol.as_str(),
                port
            ),
            Self::EndpointsIgnored { count, example } => {
                write!(f, "{count} endpoint(s) ignored, e.g. {example}")
            }
            Self::TargetsTruncated {
                family,
                protocol,
                port,
                total,
            } => write!(
                f,
                "{} {} {} has {total} endpoints; only {MAX_TARGETS_PER_PORT} are used",
                family.as_str(),
                protocol.as_str(),
                port
            ),
            Self::AddressesTruncated { family, total } => write!(
                f,
                "{total} {} addresses found; only {MAX_LOCAL_ADDRESSES} are used",
                family.as_str()
            ),
        }
    }
}

/// The desired forwarding of one agent: what any backend must install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSet {
    /// `namespace/name` of the Service (rule comments, chain ids).
    pub service: String,
    /// Where the rules live.
    #[serde(serialize_with = "ser_mode")]
    pub mode: DataplaneMode,
    /// Per family, IPv4 first; families with nothing to install are absent.
    pub families: Vec<FamilyRules>,
    /// What was left out, sorted.
    pub notes: Vec<Note>,
}

fn ser_mode<S: serde::Serializer>(m: &DataplaneMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

/// The rules of one IP family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyRules {
    pub family: IpFamily,
    /// Forwarded ports, sorted by protocol then port.
    pub forwards: Vec<Forward>,
    /// `None`: every source is admitted. `Some(list)`: only these (possibly none) are.
    pub allowed_sources: Option<Vec<IpNet>>,
    /// The rules live in a network namespace shared with other programs (`Host` mode: the
    /// node's, beside kube-proxy and other agents). Then traffic the node itself sends to its
    /// addresses is forwarded too, and masquerading matches each forwarded address and port
    /// exactly. In the agent pod's own netns (`Pod` mode) nothing else DNATs, so one masquerade
    /// rule per address covers every port.
    pub shared_netns: bool,
}

/// One forwarded port of one family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    /// The Service port name ("" for unnamed ports).
    pub name: String,
    pub protocol: Protocol,
    /// The host port matched.
    pub port: u16,
    /// Local addresses matched as destination (sorted, deduplicated, non-empty).
    pub destinations: Vec<IpAddr>,
    /// DNAT targets, spread evenly (sorted). Empty: no endpoints, reject.
    pub targets: Vec<SocketAddr>,
    /// Masquerade the forwarded connections (everything but `Host` mode `Local`).
    pub masquerade: bool,
}

impl RuleSet {
    /// No rule at all (nothing to install).
    pub fn is_empty(&self) -> bool {
        self.families.iter().all(|f| f.forwards.is_empty())
    }

    /// Number of forwarded (family, protocol, port) entries.
    pub fn forward_count(&self) -> usize {
        self.families.iter().map(|f| f.forwards.len()).sum()
    }

    /// Local addresses forwarded from, sorted.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let set: BTreeSet<IpAddr> = self
            .families
            .iter()
            .flat_map(|f| f.forwards.iter().flat_map(|fw| fw.destinations.iter()))
            .copied()
            .collect();
        set.into_iter().collect()
    }

    /// Ports (per family) with no endpoint to send to.
    pub fn ports_without_endpoints(&self) -> Vec<(IpFamily, Protocol, u16)> {
        self.families
            .iter()
            .flat_map(|f| {
                f.forwards
                    .iter()
                    .filter(|fw| fw.targets.is_empty())
                    .map(move |fw| (f.family, fw.protocol, fw.port))
            })
            .collect()
    }

    /// The families that have rules.
    pub fn family_list(&self) -> Vec<IpFamily> {
        self.families
            .iter()
            .filter(|f| !f.forwards.is_empty())
            .map(|f| f.family)
            .collect()
    }
}

/// Address family of an IP address.
pub fn family_of(ip: &IpAddr) -> IpFamily {
    match ip {
        IpAddr::V4(_) => IpFamily::IPv4,
        IpAddr::V6(_) => IpFamily::IPv6,
    }
}

/// True for addresses traffic can be forwarded from or to: not unspecified, loopback,
/// multicast, broadcast or link-local.
pub fn is_usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_link_local())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_unicast_link_local()
                || a.to_ipv4_mapped().is_some())
        }
    }
}

/// Parses a spec given as JSON (a whole `ServiceLoadBalancer` object or its `spec`) and builds
/// its rules; shape errors (unknown protocol, wrong types, missing fields) are
/// [`RuleError::Malformed`]. Never panics.
pub fn build_from_json(value: &serde_json::Value, ctx: &Context) -> Result<RuleSet, RuleError> {
    let spec_value = match value.get("spec") {
        Some(spec) if value.get("kind").is_some() || value.get("apiVersion").is_some() => spec,
        _ => value,
    };
    let spec: ServiceLoadBalancerSpec = serde_json::from_value(spec_value.clone())
        .map_err(|e| RuleError::Malformed(e.to_string()))?;
    build(&spec, ctx)
}

/// Builds the desired rules of one agent. See the [module docs](self) for the contract: never
/// panics, deterministic, `Err` (and no rules) for every invalid spec.
pub fn build(spec: &ServiceLoadBalancerSpec, ctx: &Context) -> Result<RuleSet, RuleError> {
    validate::service_key(ctx)?;
    let ports = validate::ports(spec)?;
    let families = validate::families(spec)?;
    let ranges = validate::source_ranges(&spec.source_ranges)?;
    let mode = spec.dataplane;
    let policy = spec.external_traffic_policy;
    if mode == DataplaneMode::Pod {
        match policy {
            TrafficPolicy::Cluster => {
                if spec.cluster_ips.is_empty() {
                    return Err(RuleError::MissingClusterIps);
                }
            }
            TrafficPolicy::Local => {
                if let Some((index, _)) = ports
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.node_port.is_none())
                {
                    return Err(RuleError::MissingNodePort { index });
                }
            }
        }
    }

    let mut notes = BTreeSet::new();
    let backends = if mode == DataplaneMode::Host {
        let (b, ignored) = backends_for(&ctx.endpoint_slices);
        if let Some(n) = ignored {
            notes.insert(n);
        }
        b
    } else {
        Vec::new()
    };

    let mut out = Vec::new();
    for (family, cluster_ip) in families {
        let mut locals: Vec<IpAddr> = ctx
            .local_addresses
            .iter()
            .filter(|a| family_of(a) == family && is_usable(a))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if locals.is_empty() {
            notes.insert(Note::NoLocalAddress { family });
            continue;
        }
        if locals.len() > MAX_LOCAL_ADDRESSES {
            notes.insert(Note::AddressesTruncated {
                family,
                total: locals.len(),
            });
            locals.truncate(MAX_LOCAL_ADDRESSES);
        }
        let host_ip = ctx
            .host_ips
            .iter()
            .filter(|a| family_of(a) == family && is_usable(a))
            .min()
            .copied();
        if mode == DataplaneMode::Pod && policy == TrafficPolicy::Local && host_ip.is_none() {
            notes.insert(Note::NoHostIp { family });
            continue;
        }
        let allowed_sources = if ranges.is_empty() {
            None
        } else {
            let mine: Vec<IpNet> = ranges
                .iter()
                .filter(|n| {
                    matches!(
                        (n, family),
                        (IpNet::V4(_), IpFamily::IPv4) | (IpNet::V6(_), IpFamily::IPv6)
                    )
                })
                .copied()
                .collect();
            if mine.is_empty() {
                notes.insert(Note::SourceRangesExcludeFamily { family });
            }
            Some(mine)
        };

        let mut forwards = Vec::with_capacity(ports.len());
        for p in &ports {
            let (targets, masquerade) = match (mode, policy) {
                (DataplaneMode::Pod, TrafficPolicy::Cluster) => match cluster_ip {
                    Some(ip) => (vec![SocketAddr::new(ip, p.port)], true),
                    // validate::families guarantees a cluster IP per family when any is set,
                    // and Pod+Cluster without cluster IPs was rejected above.
                    None => continue,
                },
                (DataplaneMode::Pod, TrafficPolicy::Local) => match (host_ip, p.node_port) {
                    (Some(ip), Some(np)) => (vec![SocketAddr::new(ip, np)], true),
                    _ => continue,
                },
                (DataplaneMode::Host, policy) => {
                    let local_only = policy == TrafficPolicy::Local;
                    let mut t: Vec<SocketAddr> = backends
                        .iter()
                        .filter(|b| family_of(&b.address) == family)
                        .filter(|b| !local_only || b.node_name.as_deref() == Some(&ctx.node_name))
                        .filter_map(|b| b.port_for(&p.name, p.protocol))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    if t.is_empty() {
                        notes.insert(Note::NoEndpoints {
                            family,
                            protocol: p.protocol,
                            port: p.host_port,
                        });
                    }
                    if t.len() > MAX_TARGETS_PER_PORT {
                        notes.insert(Note::TargetsTruncated {
                            family,
                            protocol: p.protocol,
                            port: p.host_port,
                            total: t.len(),
                        });
                        t.truncate(MAX_TARGETS_PER_PORT);
                    }
                    (t, !local_only)
                }
            };
            forwards.push(Forward {
                name: p.name.clone(),
                protocol: p.protocol,
                port: p.host_port,
                destinations: locals.clone(),
                targets,
                masquerade,
            });
        }
        forwards.sort_by_key(|a| (a.protocol, a.port));
        out.push(FamilyRules {
            family,
            forwards,
            allowed_sources,
            shared_netns: mode == DataplaneMode::Host,
        });
    }
    out.sort_by_key(|f| f.family);

    Ok(RuleSet {
        service: format!("{}/{}", ctx.namespace, ctx.name),
        mode,
        families: out,
        notes: notes.into_iter().collect(),
    })
}

/// A validated port of the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub host_port: u16,
    pub node_port: Option<u16>,
}

#[cfg(test)]
mod tests;
