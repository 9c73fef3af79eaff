//! Validation of the parts of a spec and context that reach rules. Each function either returns
//! clean, typed values or the first error found, in spec order.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use portway_crds::{IpFamily, ServiceLoadBalancerSpec};

use super::{Context, MAX_PORTS, MAX_SOURCE_RANGES, RuleError, ValidPort, family_of, is_usable};

/// A DNS-1123 label: 1-63 lower-case letters, digits and `-`, starting and ending with a letter
/// or digit (Kubernetes namespace, Service and Service port names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Service port name: empty (single-port Services) or a DNS label.
pub fn is_port_name(s: &str) -> bool {
    s.is_empty() || is_dns_label(s)
}

pub(super) fn service_key(ctx: &Context) -> Result<(), RuleError> {
    if !is_dns_label(&ctx.namespace) {
        return Err(RuleError::InvalidServiceName {
            field: "namespace",
            value: truncate(&ctx.namespace),
        });
    }
    if !is_dns_label(&ctx.name) {
        return Err(RuleError::InvalidServiceName {
            field: "name",
            value: truncate(&ctx.name),
        });
    }
    Ok(())
}

fn port_value(index: usize, field: &'static str, value: i32) -> Result<u16, RuleError> {
    match u16::try_from(value) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(RuleError::InvalidPort {
            index,
            field,
            value: i64::from(value),
        }),
    }
}

pub(super) fn ports(spec: &ServiceLoadBalancerSpec) -> Result<Vec<ValidPort>, RuleError> {
    if spec.ports.is_empty() {
        return Err(RuleError::NoPorts);
    }
    if spec.ports.len() > MAX_PORTS {
        return Err(RuleError::TooManyPorts(spec.ports.len()));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(spec.ports.len());
    for (index, p) in spec.ports.iter().enumerate() {
        if !is_port_name(&p.name) {
            return Err(RuleError::InvalidPortName {
                index,
                name: truncate(&p.name),
            });
        }
        let port = port_value(index, "port", p.port)?;
        let host_port = port_value(index, "hostPort", p.host_port)?;
        let node_port = match p.node_port {
            Some(np) => Some(port_value(index, "nodePort", np)?),
            None => None,
        };
        if !seen.insert((p.protocol, host_port)) {
            return Err(RuleError::DuplicatePort {
                index,
                protocol: p.protocol.as_str(),
                host_port,
            });
        }
        out.push(ValidPort {
            name: p.name.clone(),
            protocol: p.protocol,
            port,
            host_port,
            node_port,
        });
    }
    Ok(out)
}

/// The Service's families in spec order, each with its cluster IP when cluster IPs are set.
pub(super) fn families(
    spec: &ServiceLoadBalancerSpec,
) -> Result<Vec<(IpFamily, Option<IpAddr>)>, RuleError> {
    if spec.ip_families.is_empty() {
        return Err(RuleError::NoFamilies);
    }
    if spec.ip_families.len() > 2 {
        return Err(RuleError::InvalidFamilies(format!(
            "has {} entries; at most 2 are allowed",
            spec.ip_families.len()
        )));
    }
    if spec.ip_families.len() == 2 && spec.ip_families[0] == spec.ip_families[1] {
        return Err(RuleError::InvalidFamilies(format!(
            "repeats {}",
            spec.ip_families[0].as_str()
        )));
    }
    if spec.cluster_ips.len() > 2 {
        return Err(RuleError::FamiliesMismatch(format!(
            "{} cluster IPs; at most 2 are allowed",
            spec.cluster_ips.len()
        )));
    }
    let mut ips = Vec::with_capacity(spec.cluster_ips.len());
    for (index, raw) in spec.cluster_ips.iter().enumerate() {
        match raw.parse::<IpAddr>() {
            Ok(ip) if is_usable(&ip) => ips.push(ip),
            _ => {
                return Err(RuleError::InvalidClusterIp {
                    index,
                    value: truncate(raw),
                });
            }
        }
    }
    if !ips.is_empty() && ips.len() != spec.ip_families.len() {
        return Err(RuleError::FamiliesMismatch(format!(
            "{} cluster IPs for {} families",
            ips.len(),
            spec.ip_families.len()
        )));
    }
    let mut out = Vec::with_capacity(spec.ip_families.len());
    for (i, family) in spec.ip_families.iter().enumerate() {
        let ip = ips.get(i).copied();
        if let Some(ip) = ip
            && family_of(&ip) != *family
        {
            return Err(RuleError::FamiliesMismatch(format!(
                "clusterIPs[{i}] {ip} is not {}",
                family.as_str()
            )));
        }
        out.push((*family, ip));
    }
    Ok(out)
}

/// Parses `sourceRanges`: CIDRs with a prefix length (host bits are cleared, as iptables does).
pub(super) fn source_ranges(ranges: &[String]) -> Result<Vec<IpNet>, RuleError> {
    if ranges.len() > MAX_SOURCE_RANGES {
        return Err(RuleError::TooManySourceRanges(ranges.len()));
    }
    let mut out = BTreeSet::new();
    for (index, raw) in ranges.iter().enumerate() {
        let net = raw
            .trim()
            .parse::<IpNet>()
            .ok()
            .filter(|n| match n {
                IpNet::V6(v6) => v6.addr().to_ipv4_mapped().is_none(),
                IpNet::V4(_) => true,
            })
            .ok_or_else(|| RuleError::InvalidSourceRange {
                index,
                value: truncate(raw),
            })?;
        out.insert(net.trunc());
    }
    Ok(out.into_iter().collect())
}

/// Cuts user input quoted in an error to a readable length (never inside a character).
fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}
