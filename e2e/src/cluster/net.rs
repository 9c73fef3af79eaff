//! The node network: the bridge `pwc0` in the root namespace (the only address the root
//! namespace gets), and per node a network namespace (`/run/netns/pwc-<node>`) with one veth on
//! the bridge. Nodes have a device default route (`default dev eth0`) and no gateway: a packet to
//! anything off the node network finds no neighbour and is dropped, so nothing leaves the machine,
//! and nothing is masqueraded.

use std::path::Path;

use super::Result;
use super::spec::{
    BRIDGE, ClusterSpec, NODE_IFACE, NODE_NET_V4_PREFIX, NODE_NET_V6_PREFIX, NodeSpec,
};
use super::sys::{cmd, in_netns, run};

/// Sysctls of a node's namespace: forwarding (pods, Portway's DNAT), bridged pod traffic through
/// iptables (kube-proxy's hairpin), no duplicate address detection delay.
pub fn node_sysctls(spec: &ClusterSpec) -> Vec<(&'static str, &'static str)> {
    let mut s = vec![
        ("net.ipv4.ip_forward", "1"),
        ("net.bridge.bridge-nf-call-iptables", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
    ];
    if spec.has_v6() {
        s.extend([
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.bridge.bridge-nf-call-ip6tables", "1"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ]);
    }
    s
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates the bridge and its addresses in the root namespace.
pub fn create_bridge(spec: &ClusterSpec) -> Result<()> {
    run(&mut cmd("ip", ["link", "add", BRIDGE, "type", "bridge"]))?;
    for addr in spec.bridge_addrs() {
        let mut args = vec!["addr", "add", addr.as_str(), "dev", BRIDGE];
        if addr.contains(':') {
            args.push("nodad");
        }
        run(&mut cmd("ip", args))?;
    }
    run(&mut cmd("ip", ["link", "set", BRIDGE, "up"]))?;
    Ok(())
}

/// Creates a node's namespace, its veth on the bridge, its addresses and default routes.
pub fn create_node(spec: &ClusterSpec, node: &NodeSpec) -> Result<()> {
    let ns = node.netns();
    let nsp = node.netns_path();
    run(&mut cmd("ip", ["netns", "add", &ns]))?;
    let veth = node.host_veth();
    run(&mut cmd(
        "ip",
        [
            "link", "add", &veth, "type", "veth", "peer", "name", NODE_IFACE, "netns", &ns,
        ],
    ))?;
    run(&mut cmd(
        "ip",
        ["link", "set", &veth, "master", BRIDGE, "up"],
    ))?;
    for (k, v) in node_sysctls(spec) {
        run(&mut in_netns(
            &nsp,
            "sysctl",
            ["-q", "-w", &format!("{k}={v}")],
        ))?;
    }
    for ip in &node.ips {
        let addr = if ip.is_ipv4() {
            format!("{ip}/{NODE_NET_V4_PREFIX}")
        } else {
            format!("{ip}/{NODE_NET_V6_PREFIX}")
        };
        let mut args = vec![
            "-n",
            ns.as_str(),
            "addr",
            "add",
            addr.as_str(),
            "dev",
            NODE_IFACE,
        ];
        if ip.is_ipv6() {
            args.push("nodad");
        }
        run(&mut cmd("ip", args))?;
    }
    run(&mut cmd("ip", ["-n", &ns, "link", "set", "lo", "up"]))?;
    run(&mut cmd("ip", ["-n", &ns, "link", "set", NODE_IFACE, "up"]))?;
    if node.ips.iter().any(|ip| ip.is_ipv4()) {
        run(&mut cmd(
            "ip",
            [
                "-n", &ns, "-4", "route", "add", "default", "dev", NODE_IFACE,
            ],
        ))?;
    }
    if node.ips.iter().any(|ip| ip.is_ipv6()) {
        run(&mut cmd(
            "ip",
            [
                "-n", &ns, "-6", "route", "add", "default", "dev", NODE_IFACE,
            ],
        ))?;
    }
    Ok(())
}

/// Removes the node namespaces, veths and the bridge; what is already gone is skipped. Returns
/// what could not be removed.
pub fn remove(spec: &ClusterSpec) -> Vec<String> {
    let mut left = Vec::new();
    for node in &spec.nodes {
        if node.netns_path().exists()
            && let Err(e) = run(&mut cmd("ip", ["netns", "del", &node.netns()]))
        {
            left.push(e.to_string());
        }
        // The veth goes with its namespace, asynchronously: only one still there is a problem.
        let veth = node.host_veth();
        if link_exists(&veth)
            && let Err(e) = run(&mut cmd("ip", ["link", "del", &veth]))
            && link_exists(&veth)
        {
            left.push(e.to_string());
        }
    }
    if link_exists(BRIDGE)
        && let Err(e) = run(&mut cmd("ip", ["link", "del", BRIDGE]))
    {
        left.push(e.to_string());
    }
    left
}

/// Replaces the route to `cidr` via `via` in a node's namespace.
pub fn replace_route(node: &NodeSpec, cidr: &str, via: &str) -> Result<()> {
    run(&mut cmd(
        "ip",
        [
            "-n",
            &node.netns(),
            "route",
            "replace",
            cidr,
            "via",
            via,
            "dev",
            NODE_IFACE,
        ],
    ))?;
    Ok(())
}

/// Deletes the route to `cidr` in a node's namespace.
pub fn delete_route(node: &NodeSpec, cidr: &str) -> Result<()> {
    run(&mut cmd("ip", ["-n", &node.netns(), "route", "del", cidr]))?;
    Ok(())
}
