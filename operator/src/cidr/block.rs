//! CIDR blocks as aligned intervals of one 128-bit address space per family. IPv4 addresses are
//! their 32-bit value, IPv6 addresses their 128-bit value; a block is `start .. start + 2^host`.
//! Two CIDR blocks overlap exactly when one contains the other, which the allocator relies on.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Family {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    /// Both families, IPv4 first (the order of a dual-stack Node's `podCIDRs`).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// Address width in bits.
    pub const fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Position in per-family arrays.
    pub const fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// `IPv4` or `IPv6`.
    pub const fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Lower-case label value for metrics (`ipv4`, `ipv6`).
    pub const fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `2^host_bits - 1`: the offset of a block's last address from its first.
pub const fn low_mask(host_bits: u8) -> u128 {
    if host_bits == 0 {
        0
    } else if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// One CIDR. Ordered by family, then start address, then prefix length, so a range query over
/// starts finds every block that begins inside an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub family: Family,
    /// First address (host bits zero).
    pub start: u128,
    /// Prefix length.
    pub prefix: u8,
}

/// Why a string is not a usable CIDR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("{0:?} is not a CIDR (expected e.g. 10.42.0.0/16 or fd00:10:42::/48)")]
    Syntax(String),
    #[error("{given:?} has host bits set; the network is {network}")]
    HostBitsSet { given: String, network: String },
    #[error("{given:?} is not in canonical form; write {canonical}")]
    NotCanonical { given: String, canonical: String },
}

impl Block {
    /// The block holding `net`'s network (host bits are cleared).
    pub fn from_net(net: IpNet) -> Block {
        let net = net.trunc();
        match net {
            IpNet::V4(n) => Block {
                family: Family::V4,
                start: u128::from(u32::from(n.network())),
                prefix: n.prefix_len(),
            },
            IpNet::V6(n) => Block {
                family: Family::V6,
                start: u128::from(n.network()),
                prefix: n.prefix_len(),
            },
        }
    }

    /// Parses a CIDR leniently (as the API server accepts `spec.podCIDRs`): host bits are
    /// cleared.
    pub fn parse_lenient(s: &str) -> Result<Block, BlockError> {
        s.trim()
            .parse::<IpNet>()
            .map(Block::from_net)
            .map_err(|_| BlockError::Syntax(s.to_owned()))
    }

    /// Parses a CIDR that must have no host bits set and be written canonically (as a
    /// ClusterCIDR range must be).
    pub fn parse_canonical(s: &str) -> Result<Block, BlockError> {
        let net: IpNet = s.parse().map_err(|_| BlockError::Syntax(s.to_owned()))?;
        let block = Block::from_net(net);
        let canonical = block.to_string();
        if net.addr() != net.network() {
            return Err(BlockError::HostBitsSet {
                given: s.to_owned(),
                network: canonical,
            });
        }
        if canonical != s {
            return Err(BlockError::NotCanonical {
                given: s.to_owned(),
                canonical,
            });
        }
        Ok(block)
    }

    /// Host bits (`32 - prefix` or `128 - prefix`).
    pub const fn host_bits(self) -> u8 {
        self.family.bits() - self.prefix
    }

    /// Last address.
    pub const fn last(self) -> u128 {
        self.start | low_mask(self.host_bits())
    }

    /// True when `other` lies entirely inside `self`.
    pub fn contains(self, other: Block) -> bool {
        self.family == other.family
            && self.prefix <= other.prefix
            && other.start >= self.start
            && other.last() <= self.last()
    }

    /// True when the two blocks share an address.
    pub fn overlaps(self, other: Block) -> bool {
        self.family == other.family && self.start <= other.last() && other.start <= self.last()
    }

    /// The block of prefix length `prefix` (<= own prefix) that contains this one.
    pub fn supernet(self, prefix: u8) -> Block {
        let prefix = prefix.min(self.prefix);
        let host = self.family.bits() - prefix;
        Block {
            family: self.family,
            start: self.start & !low_mask(host),
            prefix,
        }
    }

    /// As an [`IpNet`].
    pub fn to_net(self) -> IpNet {
        match self.family {
            // Family::V4 blocks are built from 32-bit values, so the truncation is exact.
            Family::V4 => IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(self.start as u32), self.prefix.min(32))
                    .unwrap_or_default(),
            ),
            Family::V6 => IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(self.start), self.prefix.min(128)).unwrap_or_default(),
            ),
        }
    }

    /// First address as an [`IpAddr`].
    pub fn network(self) -> IpAddr {
        self.to_net().network()
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_net())
    }
}

impl Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_families() {
        let b = Block::parse_canonical("10.42.0.0/16").unwrap();
        assert_eq!((b.family, b.prefix, b.host_bits()), (Family::V4, 16, 16));
        assert_eq!(
            b.last(),
            u128::from(u32::from(Ipv4Addr::new(10, 42, 255, 255)))
        );
        assert_eq!(b.to_string(), "10.42.0.0/16");
        let b6 = Block::parse_canonical("fd00:10:42::/48").unwrap();
        assert_eq!((b6.family, b6.host_bits()), (Family::V6, 80));
        assert_eq!(b6.to_string(), "fd00:10:42::/48");
        let all = Block::parse_canonical("::/0").unwrap();
        assert_eq!(all.last(), u128::MAX);
    }

    #[test]
    fn canonical_parsing_names_the_problem() {
        assert!(matches!(
            Block::parse_canonical("10.42.1.0/16"),
            Err(BlockError::HostBitsSet { network, .. }) if network == "10.42.0.0/16"
        ));
        assert!(matches!(
            Block::parse_canonical("fd00:10:42:0::/48"),
            Err(BlockError::NotCanonical { canonical, .. }) if canonical == "fd00:10:42::/48"
        ));
        assert!(matches!(
            Block::parse_canonical("10.42.0.0"),
            Err(BlockError::Syntax(_))
        ));
        assert_eq!(
            Block::parse_lenient("10.42.1.7/24").unwrap().to_string(),
            "10.42.1.0/24"
        );
    }

    #[test]
    fn containment_and_overlap() {
        let big = Block::parse_canonical("10.0.0.0/8").unwrap();
        let small = Block::parse_canonical("10.1.2.0/24").unwrap();
        let other = Block::parse_canonical("11.0.0.0/8").unwrap();
        let v6 = Block::parse_canonical("::/0").unwrap();
        assert!(big.contains(small) && !small.contains(big));
        assert!(big.overlaps(small) && small.overlaps(big));
        assert!(!big.overlaps(other));
        assert!(!v6.overlaps(big), "families never overlap");
        assert_eq!(small.supernet(8), big);
    }
}
