//! `portway-cluster netd`: the local cluster's kindnet, a harness process in the root network
//! namespace (it needs no image and no pod network, which does not exist before it runs). Every
//! second it reads the Nodes and Services and
//! - writes a node's CNI conflist once its Node has `spec.podCIDRs` (from Portway's
//!   ClusterCIDR), which turns the node Ready;
//! - routes every other node's pod CIDRs via that node's address in each node's namespace;
//! - keeps the DNS stand-in's record file (`<service>.<namespace>.svc.cluster.local <ip>`).
//!
//! It ends when its cluster's state folder is gone, or on SIGTERM.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams};

use super::render::{self, CNI_CONFLIST};
use super::state::Record;
use super::{ClusterError, Result, net, up};

pub const INTERVAL: Duration = Duration::from_secs(1);

/// The pod CIDRs of every Node that has them.
fn pod_cidrs(nodes: &[Node]) -> BTreeMap<String, Vec<IpNet>> {
    nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let cidrs: Vec<IpNet> = n
                .spec
                .as_ref()?
                .pod_cidrs
                .as_ref()?
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect();
            (!cidrs.is_empty()).then_some((name, cidrs))
        })
        .collect()
}

struct Netd {
    record: Record,
    conflists: BTreeMap<String, String>,
    routes: BTreeMap<String, Vec<(IpNet, IpAddr)>>,
    records: String,
}

impl Netd {
    fn sync_nodes(&mut self, nodes: &[Node]) {
        let spec = &self.record.spec;
        let cidrs = pod_cidrs(nodes);
        for node in &spec.nodes {
            if let Some(c) = cidrs.get(&node.name) {
                let text = render::cni_conflist(spec, node, c).to_string();
                if self.conflists.get(&node.name) != Some(&text) {
                    let path = spec.cni_conf_dir(node).join(CNI_CONFLIST);
                    match render::write_atomic(&path, text.as_bytes()) {
                        Ok(()) => {
                            eprintln!("netd: {}: CNI config for {c:?}", node.name);
                            self.conflists.insert(node.name.clone(), text);
                        }
                        Err(e) => eprintln!("netd: write {}: {e}", path.display()),
                    }
                }
            }
        }
        let table: Vec<(&str, &[IpNet], &[IpAddr])> = spec
            .nodes
            .iter()
            .filter_map(|n| {
                Some((
                    n.name.as_str(),
                    cidrs.get(&n.name)?.as_slice(),
                    n.ips.as_slice(),
                ))
            })
            .collect();
        for node in &spec.nodes {
            let want = render::pod_routes(&node.name, table.iter().copied());
            let have = self.routes.get(&node.name).cloned().unwrap_or_default();
            if want == have {
                continue;
            }
            let mut ok = true;
            for (cidr, via) in &want {
                if let Err(e) = net::replace_route(node, &cidr.to_string(), &via.to_string()) {
                    eprintln!("netd: {}: {e}", node.name);
                    ok = false;
                }
            }
            for (cidr, _) in have.iter().filter(|r| !want.contains(r)) {
                if let Err(e) = net::delete_route(node, &cidr.to_string()) {
                    eprintln!("netd: {}: {e}", node.name);
                }
            }
            if ok {
                eprintln!("netd: {}: routes {want:?}", node.name);
                self.routes.insert(node.name.clone(), want);
            }
        }
    }

    fn sync_dns(&mut self, services: &[Service]) {
        let entries: Vec<(String, String, Vec<String>)> = services
            .iter()
            .filter_map(|s| {
                Some((
                    s.metadata.namespace.clone()?,
                    s.metadata.name.clone()?,
                    s.spec.as_ref()?.cluster_ips.clone().unwrap_or_default(),
                ))
            })
            .collect();
        let text = render::dns_records(
            entries
                .iter()
                .map(|(ns, n, ips)| (ns.as_str(), n.as_str(), ips.as_slice())),
        );
        if text != self.records {
            let path = self.record.spec.dns_dir().join("hosts");
            match render::write_atomic(&path, text.as_bytes()) {
                Ok(()) => self.records = text,
                Err(e) => eprintln!("netd: write {}: {e}", path.display()),
            }
        }
    }
}

/// Runs until the cluster's state folder is gone.
pub async fn run(record: Record) -> Result<()> {
    let client = up::admin_client(&record.spec).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client);
    let marker = record.spec.spec_file();
    let mut netd = Netd {
        record,
        conflists: BTreeMap::new(),
        routes: BTreeMap::new(),
        records: String::new(),
    };
    eprintln!(
        "netd: watching nodes and services of {}",
        netd.record.spec.name
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ClusterError::io("handle SIGTERM"))?;
    while marker.exists() {
        match nodes.list(&ListParams::default()).await {
            Ok(list) => netd.sync_nodes(&list.items),
            Err(e) => eprintln!("netd: list nodes: {e}"),
        }
        match services.list(&ListParams::default()).await {
            Ok(list) => netd.sync_dns(&list.items),
            Err(e) => eprintln!("netd: list services: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = term.recv() => break,
        }
    }
    eprintln!("netd: stopped");
    Ok(())
}
