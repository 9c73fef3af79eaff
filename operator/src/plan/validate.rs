//! Which Services are Portway's, and turning a Service into the validated shape the rest of the
//! core works with. Bad data gives a message, never a panic.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use portway_crds::{IpFamily, LoadBalancerPort, Protocol, TrafficPolicy};

/// Most ports one Service may have (the ServiceLoadBalancer schema's limit).
pub const MAX_PORTS: usize = 100;

/// Whether Portway is responsible for a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Responsibility {
    /// `type: LoadBalancer` with no class or Portway's class, not being deleted.
    Serve,
    /// A LoadBalancer of another class: left alone.
    OtherClass(String),
    /// Not a LoadBalancer, or being deleted.
    NotLoadBalancer,
}

/// Decides whether `class` (the configured loadBalancerClass) covers `svc`.
pub fn responsibility(svc: &Service, class: &str) -> Responsibility {
    let Some(spec) = svc.spec.as_ref() else {
        return Responsibility::NotLoadBalancer;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") || svc.metadata.deletion_timestamp.is_some() {
        return Responsibility::NotLoadBalancer;
    }
    match spec.load_balancer_class.as_deref() {
        None | Some("") => Responsibility::Serve,
        Some(c) if c == class => Responsibility::Serve,
        Some(other) => Responsibility::OtherClass(other.to_owned()),
    }
}

/// A Service reduced to what Portway forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceShape {
    pub ports: Vec<LoadBalancerPort>,
    /// Cluster IPs, in `ip_families` order.
    pub cluster_ips: Vec<String>,
    pub ip_families: Vec<IpFamily>,
    pub external_traffic_policy: TrafficPolicy,
    pub source_ranges: Vec<String>,
}

impl ServiceShape {
    /// (protocol, hostPort) pairs this Service claims on a node, sorted.
    pub fn claims(&self) -> Vec<(Protocol, i32)> {
        let mut c: Vec<(Protocol, i32)> = self
            .ports
            .iter()
            .map(|p| (p.protocol, p.host_port))
            .collect();
        c.sort();
        c.dedup();
        c
    }
}

fn family_of(ip: &IpAddr) -> IpFamily {
    match ip {
        IpAddr::V4(_) => IpFamily::IPv4,
        IpAddr::V6(_) => IpFamily::IPv6,
    }
}

/// A DNS-1123 label (what Kubernetes requires of Service port names): 1-63 lower-case letters,
/// digits and `-`, starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether traffic can be forwarded to `ip` (the node agent's rule for cluster IPs).
fn is_forwardable(ip: &IpAddr) -> bool {
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

/// Validates `svc` and returns its shape, or a message saying what is wrong.
pub fn shape(svc: &Service) -> Result<ServiceShape, String> {
    // The API server guarantees both; `portway plan` input may break them, and the node agent
    // refuses a Service it cannot name in its rule comments.
    for (field, value) in [
        ("name", svc.metadata.name.as_deref().unwrap_or_default()),
        (
            "namespace",
            svc.metadata.namespace.as_deref().unwrap_or_default(),
        ),
    ] {
        if !is_dns_label(value) {
            let shown: String = value.chars().take(63).collect();
            let more = if shown.len() < value.len() { "..." } else { "" };
            return Err(format!(
                "the Service {field} {shown:?}{more} is not a DNS label (lower-case letters, digits and '-', at most 63 characters)"
            ));
        }
    }
    let spec = svc.spec.as_ref().ok_or("the Service has no spec")?;
    let svc_ports = spec.ports.as_deref().unwrap_or(&[]);
    if svc_ports.is_empty() {
        return Err("the Service has no ports".into());
    }
    if svc_ports.len() > MAX_PORTS {
        return Err(format!(
            "the Service has {} ports; Portway forwards at most {MAX_PORTS}",
            svc_ports.len()
        ));
    }
    let local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => return Err(format!("unknown externalTrafficPolicy {other:?}")),
    };
    let mut ports = Vec::with_capacity(svc_ports.len());
    let mut seen = BTreeSet::new();
    for (i, p) in svc_ports.iter().enumerate() {
        let raw_name = p.name.as_deref().unwrap_or_default();
        // Name the port by its name only when that is short and printable; hostile names (1 MiB,
        // control characters) are named by position.
        let what = if raw_name.is_empty() || !is_dns_label(raw_name) {
            format!("port #{}", i + 1)
        } else {
            format!("port {raw_name:?}")
        };
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::TCP,
            "UDP" => Protocol::UDP,
            "SCTP" => Protocol::SCTP,
            other => {
                return Err(format!(
                    "{what}: protocol {other:?} is not supported (TCP, UDP or SCTP)"
                ));
            }
        };
        if !(1..=65535).contains(&p.port) {
            return Err(format!("{what}: port {} is outside 1-65535", p.port));
        }
        if let Some(np) = p.node_port
            && !(1..=65535).contains(&np)
        {
            return Err(format!("{what}: nodePort {np} is outside 1-65535"));
        }
        if local == TrafficPolicy::Local && p.node_port.is_none() {
            return Err(format!(
                "{what}: externalTrafficPolicy Local needs a nodePort (allocateLoadBalancerNodePorts is false?)"
            ));
        }
        if !seen.insert((protocol, p.port)) {
            return Err(format!(
                "{what}: {} {} is listed twice",
                protocol.as_str(),
                p.port
            ));
        }
        let name = p.name.clone().unwrap_or_default();
        if name.len() > 63 {
            return Err(format!("{what}: name is longer than 63 characters"));
        }
        // The API server allows only DNS labels; the node agent refuses anything else (the name
        // reaches its rule comments), so a DaemonSet for such a Service could never forward.
        if !name.is_empty() && !is_dns_label(&name) {
            return Err(format!(
                "{what}: name {name:?} is not a DNS label (lower-case letters, digits and '-')"
            ));
        }
        ports.push(LoadBalancerPort {
            name,
            protocol,
            port: p.port,
            host_port: p.port,
            node_port: p.node_port,
        });
    }

    // Cluster IPs decide the families: the agent forwards to them.
    let raw_ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        _ => Vec::new(),
    };
    if raw_ips.is_empty() {
        return Err("the Service has no cluster IP yet".into());
    }
    let mut cluster_ips = Vec::new();
    let mut ip_families = Vec::new();
    for raw in &raw_ips {
        if raw == "None" {
            return Err("a headless Service (clusterIP None) cannot be a load balancer".into());
        }
        let ip: IpAddr = raw
            .parse()
            .map_err(|_| format!("cluster IP {raw:?} is not an IP address"))?;
        // Addresses the node agent cannot forward to (it refuses them, so agents would only
        // report an invalid spec); the API server never assigns them from a service CIDR.
        if !is_forwardable(&ip) {
            return Err(format!(
                "cluster IP {ip} cannot be forwarded to (unspecified, loopback, multicast, broadcast or link-local)"
            ));
        }
        let fam = family_of(&ip);
        if ip_families.contains(&fam) {
            return Err(format!("two cluster IPs of family {}", fam.as_str()));
        }
        ip_families.push(fam);
        cluster_ips.push(ip.to_string());
    }
    if cluster_ips.len() > 2 {
        return Err("more than two cluster IPs".into());
    }
    // Declared families must agree with the addresses (the API server guarantees it; YAML input
    // for `portway plan` may not).
    if let Some(declared) = spec.ip_families.as_ref().filter(|f| !f.is_empty()) {
        for (i, f) in declared.iter().enumerate() {
            let fam = match f.as_str() {
                "IPv4" => IpFamily::IPv4,
                "IPv6" => IpFamily::IPv6,
                other => return Err(format!("unknown ipFamily {other:?}")),
            };
            if ip_families.get(i).is_some_and(|got| *got != fam) {
                return Err(format!(
                    "ipFamilies[{i}] is {} but clusterIPs[{i}] is {}",
                    fam.as_str(),
                    ip_families[i].as_str()
                ));
            }
        }
    }

    let mut source_ranges = Vec::new();
    for r in spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]) {
        let trimmed = r.trim();
        let net: ipnet::IpNet = trimmed
            .parse()
            .map_err(|_| format!("loadBalancerSourceRanges: {r:?} is not a CIDR"))?;
        source_ranges.push(net.to_string());
    }
    if source_ranges.len() > 256 {
        return Err("loadBalancerSourceRanges has more than 256 entries".into());
    }

    Ok(ServiceShape {
        ports,
        cluster_ips,
        ip_families,
        external_traffic_policy: local,
        source_ranges,
    })
}
