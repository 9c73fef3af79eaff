//! Packet forwarding in the agent's netns. DNAT to another host only works if the kernel
//! forwards: for IPv4 that is decided per input interface (`net.ipv4.conf.<if>.forwarding`),
//! for IPv6 by `net.ipv6.conf.all.forwarding`.
//!
//! In `Pod` mode the agent turns forwarding on where it can without privileges beyond
//! NET_ADMIN: IPv4 per interface over rtnetlink (works although containers mount `/proc/sys`
//! read-only), IPv6 by writing `/proc/sys` (works only where it is writable: with the operator's
//! `--agent-forwarding-sysctls`, the kubelet sets it before the container starts). In `Host`
//! mode it never changes the node's settings. Whatever stays off is reported per family and
//! ends up in the `Forwarding` condition (reason `ForwardingDisabled`, naming the sysctl).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use portway_crds::IpFamily;

use crate::net::{Netlink, Snapshot};
use crate::rules::family_of;

/// Forwarding state of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FamilyState {
    /// Already on.
    On,
    /// Turned on by the agent, and how.
    TurnedOn { how: String },
    /// Off, and why the agent could not turn it on.
    Off { sysctl: String, detail: String },
}

/// Forwarding of the families that have rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardingReport {
    pub families: BTreeMap<IpFamily, FamilyState>,
}

impl ForwardingReport {
    /// Families that cannot forward: `(family, sysctl, detail)`.
    pub fn disabled(&self) -> Vec<(IpFamily, &str, &str)> {
        self.families
            .iter()
            .filter_map(|(f, s)| match s {
                FamilyState::Off { sysctl, detail } => Some((*f, sysctl.as_str(), detail.as_str())),
                _ => None,
            })
            .collect()
    }
}

/// The IPv4 interfaces whose forwarding is known to be off and matters. IPv4 decides per input
/// interface, and replies to forwarded connections may come in on another interface than the
/// requests, so with `all_links` (Pod mode: the netns is the pod's own) every non-loopback
/// interface counts; otherwise (Host mode, checked only) those carrying a served address. Pure.
pub fn ipv4_links_to_enable(
    snap: &Snapshot,
    served: &[IpAddr],
    all_links: bool,
) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = if all_links {
        snap.links
            .iter()
            .filter(|l| !l.loopback && l.ipv4_forwarding == Some(false))
            .map(|l| (l.index, l.name.clone()))
            .collect()
    } else {
        served
            .iter()
            .filter(|ip| family_of(ip) == IpFamily::IPv4)
            .filter_map(|ip| snap.link_of(ip))
            .filter(|l| l.ipv4_forwarding == Some(false))
            .map(|l| (l.index, l.name.clone()))
            .collect()
    };
    out.sort();
    out.dedup();
    out
}

/// Checks (and, with `may_change`, turns on) forwarding for `families`.
pub async fn ensure(
    net: &Netlink,
    snap: &Snapshot,
    served: &[IpAddr],
    families: &[IpFamily],
    may_change: bool,
    proc_sys: &Path,
) -> ForwardingReport {
    let mut report = ForwardingReport::default();
    if families.contains(&IpFamily::IPv4) {
        let mut state = FamilyState::On;
        let mut turned = Vec::new();
        for (index, name) in ipv4_links_to_enable(snap, served, may_change) {
            let sysctl = format!("net.ipv4.conf.{name}.forwarding");
            if !may_change {
                state = FamilyState::Off {
                    sysctl,
                    detail: "is 0 and the agent does not change the node's settings in Host mode"
                        .into(),
                };
                break;
            }
            match net.enable_ipv4_forwarding(index).await {
                Ok(()) => turned.push(sysctl),
                Err(e) => {
                    state = FamilyState::Off {
                        sysctl,
                        detail: format!("is 0 and could not be set over rtnetlink: {e}"),
                    };
                    break;
                }
            }
        }
        if state == FamilyState::On && !turned.is_empty() {
            state = FamilyState::TurnedOn {
                how: format!("{} = 1 over rtnetlink", turned.join(", ")),
            };
        }
        report.families.insert(IpFamily::IPv4, state);
    }
    if families.contains(&IpFamily::IPv6) {
        report
            .families
            .insert(IpFamily::IPv6, ipv6(may_change, proc_sys));
    }
    report
}

fn ipv6(may_change: bool, proc_sys: &Path) -> FamilyState {
    const SYSCTL: &str = "net.ipv6.conf.all.forwarding";
    let path = proc_sys.join("net/ipv6/conf/all/forwarding");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => FamilyState::On,
        Ok(_) if !may_change => FamilyState::Off {
            sysctl: SYSCTL.into(),
            detail: "is 0 and the agent does not change the node's settings in Host mode".into(),
        },
        Ok(_) => match std::fs::write(&path, "1") {
            Ok(()) => FamilyState::TurnedOn {
                how: format!("{SYSCTL} = 1 through {}", path.display()),
            },
            Err(e) => FamilyState::Off {
                sysctl: SYSCTL.into(),
                detail: format!(
                    "is 0 and cannot be changed from this container ({e}); IPv6 forwarding has no \
                     per-interface netlink switch, so the pod needs the sysctl set at creation \
                     (operator flag --agent-forwarding-sysctls, on kubelets that allow it)"
                ),
            },
        },
        Err(e) => FamilyState::Off {
            sysctl: SYSCTL.into(),
            detail: format!("cannot be read ({e}); is IPv6 disabled in this kernel?"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Address, Link};

    #[test]
    fn links_whose_ipv4_forwarding_must_be_on() {
        let snap = Snapshot {
            links: vec![
                Link {
                    index: 2,
                    name: "eth0".into(),
                    loopback: false,
                    ipv4_forwarding: Some(false),
                },
                Link {
                    index: 3,
                    name: "eth1".into(),
                    loopback: false,
                    ipv4_forwarding: Some(false),
                },
                Link {
                    index: 4,
                    name: "eth2".into(),
                    loopback: false,
                    ipv4_forwarding: Some(true),
                },
            ],
            addresses: vec![
                Address {
                    index: 2,
                    ip: "10.0.0.2".parse().expect("ip"),
                    prefix_len: 24,
                    global: true,
                },
                Address {
                    index: 2,
                    ip: "10.0.0.3".parse().expect("ip"),
                    prefix_len: 24,
                    global: true,
                },
                Address {
                    index: 4,
                    ip: "10.0.1.2".parse().expect("ip"),
                    prefix_len: 24,
                    global: true,
                },
            ],
        };
        let served = ["10.0.0.2", "10.0.0.3", "10.0.1.2"].map(|s| s.parse().expect("ip"));
        assert_eq!(
            ipv4_links_to_enable(&snap, &served, false),
            vec![(2, "eth0".to_owned())]
        );
        assert_eq!(
            ipv4_links_to_enable(&snap, &served, true),
            vec![(2, "eth0".to_owned()), (3, "eth1".to_owned())],
            "in a pod every interface may carry forwarded packets"
        );
    }

    #[test]
    fn ipv6_state_from_a_proc_sys_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("net/ipv6/conf/all");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(conf.join("forwarding"), "0\n").expect("write");
        assert!(matches!(ipv6(false, dir.path()), FamilyState::Off { .. }));
        assert!(matches!(
            ipv6(true, dir.path()),
            FamilyState::TurnedOn { .. }
        ));
        assert_eq!(ipv6(false, dir.path()), FamilyState::On);
        let missing = ipv6(true, &dir.path().join("nope"));
        assert!(
            matches!(missing, FamilyState::Off { ref sysctl, .. } if sysctl == "net.ipv6.conf.all.forwarding")
        );
    }
}
