//! What the agent needs to know about its network namespace, over rtnetlink: links, their IPv4
//! forwarding switch, and addresses; plus change notifications (`ip monitor`), so losing or
//! regaining an address triggers a reconcile at once.
//!
//! The choice of addresses to forward from ([`served_addresses`]) is pure.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::link::{AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute, LinkFlags};
use portway_crds::DataplaneMode;
use rtnetlink::{Handle, LinkUnspec, MulticastGroup};

use crate::rules::{family_of, is_usable};

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub loopback: bool,
    /// `net.ipv4.conf.<name>.forwarding`, when the kernel reported it.
    pub ipv4_forwarding: Option<bool>,
}

/// An address on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// Scope `global` (not host or link).
    pub global: bool,
}

/// Links and addresses of the netns at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
}

impl Snapshot {
    pub fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// The interface carrying `ip`.
    pub fn link_of(&self, ip: &IpAddr) -> Option<&Link> {
        self.addresses
            .iter()
            .find(|a| a.ip == *ip)
            .and_then(|a| self.link(a.index))
    }
}

/// Addresses chosen to forward from, and configured ones that are missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub addresses: Vec<IpAddr>,
    /// Addresses from `POD_IPS`/`HOST_IPS` not present in the netns.
    pub missing: Vec<IpAddr>,
}

/// Chooses the local addresses to forward from:
/// - with configured addresses (`POD_IPS` in `Pod` mode, `HOST_IPS` in `Host` mode): those
///   that are present; in `Host` mode also the other global addresses of the interfaces that
///   carry them (an ExternalIP configured next to the InternalIP), but never addresses of other
///   interfaces (CNI bridges, `kube-ipvs0`'s Service addresses);
/// - without: every usable global address outside the loopback interface.
pub fn served_addresses(snap: &Snapshot, configured: &[IpAddr], mode: DataplaneMode) -> Served {
    let candidates: Vec<&Address> = snap
        .addresses
        .iter()
        .filter(|a| a.global && is_usable(&a.ip))
        .filter(|a| snap.link(a.index).is_none_or(|l| !l.loopback))
        .collect();
    let mut out = BTreeSet::new();
    let mut missing = BTreeSet::new();
    if configured.is_empty() {
        out.extend(candidates.iter().map(|a| a.ip));
    } else {
        let mut links = BTreeSet::new();
        for ip in configured {
            match candidates.iter().find(|a| a.ip == *ip) {
                Some(a) => {
                    out.insert(a.ip);
                    links.insert((a.index, family_of(&a.ip)));
                }
                None => {
                    missing.insert(*ip);
                }
            }
        }
        if mode == DataplaneMode::Host {
            out.extend(
                candidates
                    .iter()
                    .filter(|a| links.contains(&(a.index, family_of(&a.ip))))
                    .map(|a| a.ip),
            );
        }
    }
    Served {
        addresses: out.into_iter().collect(),
        missing: missing.into_iter().collect(),
    }
}

/// Errors of netlink requests.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink {what}: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// A netlink connection (its I/O task runs on the current tokio runtime).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

impl Netlink {
    /// Opens a connection in the current netns. Must be called inside a tokio runtime.
    pub fn connect() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Reads links (with IPv4 forwarding) and addresses.
    pub async fn snapshot(&self) -> Result<Snapshot, NetError> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Request {
                what: "listing links",
                source,
            })?;
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Request {
                what: "listing addresses",
                source,
            })?;
        let mut snap = Snapshot::default();
        for l in links {
            let mut name = String::new();
            let mut fwd = None;
            for attr in &l.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::AfSpecUnspec(specs) => {
                        for s in specs {
                            if let AfSpecUnspec::Inet(inet) = s {
                                for i in inet {
                                    if let AfSpecInet::DevConf(conf) = i {
                                        fwd = Some(conf.forwarding != 0);
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            snap.links.push(Link {
                index: l.header.index,
                name,
                loopback: l.header.flags.contains(LinkFlags::Loopback),
                ipv4_forwarding: fwd,
            });
        }
        for a in addrs {
            if !matches!(a.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
                continue;
            }
            // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
            // otherwise.
            let mut ip = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(x) => ip = Some(*x),
                    AddressAttribute::Address(x) if ip.is_none() => ip = Some(*x),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                snap.addresses.push(Address {
                    index: a.header.index,
                    ip,
                    prefix_len: a.header.prefix_len,
                    global: a.header.scope == AddressScope::Universe,
                });
            }
        }
        snap.links.sort_by_key(|l| l.index);
        snap.addresses.sort_by_key(|a| (a.index, a.ip));
        Ok(snap)
    }

    /// Turns on `net.ipv4.conf.<link>.forwarding` with an `RTM_SETLINK` carrying
    /// `IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF` (the kernel's `inet_set_link_af`). This needs only
    /// CAP_NET_ADMIN in the netns, not a writable `/proc/sys`, so it works in a pod whose
    /// kubelet rejects the unsafe sysctl `net.ipv4.ip_forward`. IPv4 forwarding is decided
    /// per input device, so this is enough for traffic arriving on that link.
    pub async fn enable_ipv4_forwarding(&self, index: u32) -> Result<(), NetError> {
        let mut conf = InetDevConf::default();
        conf.forwarding = 1;
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]))
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| NetError::Request {
                what: "setting IPv4 forwarding",
                source,
            })
    }
}

/// Subscribes to link and address changes. Each received message means "something changed";
/// the agent then re-reads a [`Snapshot`].
pub fn monitor() -> Result<UnboundedReceiver<()>, NetError> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])
    .map_err(NetError::Socket)?;
    tokio::spawn(conn);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        use futures::StreamExt;
        while messages.next().await.is_some() {
            if tx.unbounded_send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let link = |index, name: &str, loopback| Link {
            index,
            name: name.into(),
            loopback,
            ipv4_forwarding: Some(false),
        };
        let addr = |index, ip: &str, global| Address {
            index,
            ip: ip.parse().expect("ip"),
            prefix_len: 24,
            global,
        };
        Snapshot {
            links: vec![
                link(1, "lo", true),
                link(2, "eth0", false),
                link(3, "cni0", false),
            ],
            addresses: vec![
                addr(1, "127.0.0.1", false),
                addr(2, "192.0.2.10", true),
                addr(2, "198.51.100.7", true),
                addr(2, "fe80::1", false),
                addr(2, "2001:db8::10", true),
                addr(3, "10.244.0.1", true),
            ],
        }
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn host_mode_adds_addresses_of_the_configured_interface_only() {
        let s = served_addresses(&snap(), &ips(&["192.0.2.10"]), DataplaneMode::Host);
        assert_eq!(s.addresses, ips(&["192.0.2.10", "198.51.100.7"]));
        assert!(s.missing.is_empty());
    }

    #[test]
    fn pod_mode_uses_exactly_the_configured_addresses() {
        let s = served_addresses(
            &snap(),
            &ips(&["192.0.2.10", "2001:db8::10", "203.0.113.1"]),
            DataplaneMode::Pod,
        );
        assert_eq!(s.addresses, ips(&["192.0.2.10", "2001:db8::10"]));
        assert_eq!(s.missing, ips(&["203.0.113.1"]));
    }

    #[test]
    fn without_configuration_every_global_address_but_loopback() {
        let s = served_addresses(&snap(), &[], DataplaneMode::Pod);
        assert_eq!(
            s.addresses,
            ips(&["10.244.0.1", "192.0.2.10", "198.51.100.7", "2001:db8::10"])
        );
    }
}
