//! A ClusterCIDR spec checked and turned into per-family ranges. The API server's schema and CEL
//! rules reject bad specs already; this check repeats them so that objects stored before a rule
//! existed (or read from files by `portway plan`) are reported instead of misused.

use std::collections::BTreeMap;

use portway_crds::{ClusterCIDRSpec, NodeSelector};

use super::block::{Block, Family};

/// Smallest per-node host bits the API accepts.
pub const MIN_HOST_BITS: i32 = 4;

/// One family's range of a ClusterCIDR and the size of each Node's block in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyRange {
    /// The whole range, e.g. `10.42.0.0/16`.
    pub range: Block,
    /// Prefix length of each Node's block, e.g. 24.
    pub node_prefix: u8,
}

impl FamilyRange {
    /// Host bits of each Node's block.
    pub const fn node_host_bits(&self) -> u8 {
        self.range.family.bits() - self.node_prefix
    }

    /// Bits of the block index (`node_prefix - range prefix`); at most 124 since the API
    /// requires at least 4 host bits per Node.
    pub const fn index_bits(&self) -> u8 {
        self.node_prefix - self.range.prefix
    }

    /// Number of Node blocks in the range.
    pub fn capacity(&self) -> u128 {
        1u128 << self.index_bits()
    }

    /// Highest block index.
    pub fn last_index(&self) -> u128 {
        super::block::low_mask(self.index_bits())
    }

    /// The Node block with index `i`.
    pub fn block(&self, i: u128) -> Block {
        Block {
            family: self.range.family,
            start: self.range.start + (i << self.node_host_bits()),
            prefix: self.node_prefix,
        }
    }

    /// Indexes of the Node blocks that share an address with `b`, if any.
    pub fn index_span(&self, b: Block) -> Option<(u128, u128)> {
        if !self.range.overlaps(b) {
            return None;
        }
        let lo = b.start.max(self.range.start) - self.range.start;
        let hi = b.last().min(self.range.last()) - self.range.start;
        let shift = self.node_host_bits();
        Some((lo >> shift, hi >> shift))
    }

    /// True when `b` is exactly one of this range's Node blocks.
    pub fn is_node_block(&self, b: Block) -> bool {
        b.prefix == self.node_prefix && self.range.contains(b)
    }
}

/// A checked ClusterCIDR spec.
#[derive(Clone, Debug, PartialEq)]
pub struct CidrSpec {
    /// Ranges by [`Family::index`].
    pub families: [Option<FamilyRange>; 2],
    /// Higher wins.
    pub priority: i32,
    /// `None`: every Node.
    pub node_selector: Option<NodeSelector>,
}

impl CidrSpec {
    /// Checks `spec`; every problem is listed.
    pub fn parse(spec: &ClusterCIDRSpec) -> Result<CidrSpec, Vec<String>> {
        let mut problems = Vec::new();
        if spec.ipv4.is_none() && spec.ipv6.is_none() {
            problems.push("at least one of ipv4 and ipv6 must be set".to_owned());
        }
        let v4 = spec.ipv4.as_deref().and_then(|s| {
            family_range(Family::V4, "ipv4", s, spec.ipv4_host_bits(), &mut problems)
        });
        let v6 = spec.ipv6.as_deref().and_then(|s| {
            family_range(Family::V6, "ipv6", s, spec.ipv6_host_bits(), &mut problems)
        });
        if problems.is_empty() {
            Ok(CidrSpec {
                families: [v4, v6],
                priority: spec.priority,
                node_selector: spec.node_selector.clone(),
            })
        } else {
            Err(problems)
        }
    }

    /// The range of `family`, if configured.
    pub fn family(&self, family: Family) -> Option<&FamilyRange> {
        self.families[family.index()].as_ref()
    }

    /// Configured families, IPv4 first.
    pub fn ranges(&self) -> impl Iterator<Item = &FamilyRange> {
        self.families.iter().flatten()
    }

    /// Whether the Node `name` with `labels` is selected, and how specifically (the largest
    /// number of requirements of a matching term; 0 for an empty selector).
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<usize> {
        match &self.node_selector {
            None => Some(0),
            Some(sel) if sel.matches(name, labels) => Some(sel.specificity(name, labels)),
            Some(_) => None,
        }
    }

    /// Per-node host bits (IPv4, IPv6); an absent family counts as 0. Used to order candidates.
    pub fn host_bits_key(&self) -> (u8, u8) {
        (
            self.family(Family::V4)
                .map_or(0, FamilyRange::node_host_bits),
            self.family(Family::V6)
                .map_or(0, FamilyRange::node_host_bits),
        )
    }
}

fn family_range(
    family: Family,
    field: &str,
    cidr: &str,
    host_bits: i32,
    problems: &mut Vec<String>,
) -> Option<FamilyRange> {
    let range = match Block::parse_canonical(cidr) {
        Ok(b) if b.family == family => b,
        Ok(_) => {
            problems.push(format!("{field}: {cidr:?} is not an {family} CIDR"));
            return None;
        }
        Err(e) => {
            problems.push(format!("{field}: {e}"));
            return None;
        }
    };
    let max = i32::from(range.host_bits());
    if host_bits < MIN_HOST_BITS || host_bits > max {
        problems.push(format!(
            "{field}: {host_bits} per-node host bits do not fit {cidr} (allowed {MIN_HOST_BITS}..={max})"
        ));
        return None;
    }
    let node_prefix = u8::try_from(i32::from(family.bits()) - host_bits).ok()?;
    Some(FamilyRange { range, node_prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        v4: Option<&str>,
        v6: Option<&str>,
        bits: i32,
        v6_bits: Option<i32>,
    ) -> ClusterCIDRSpec {
        ClusterCIDRSpec {
            node_selector: None,
            per_node_host_bits: bits,
            ipv4_per_node_host_bits: None,
            ipv6_per_node_host_bits: v6_bits,
            ipv4: v4.map(str::to_owned),
            ipv6: v6.map(str::to_owned),
            priority: 0,
        }
    }

    #[test]
    fn dual_stack_ranges_and_indexes() {
        let s = CidrSpec::parse(&spec(
            Some("10.42.0.0/16"),
            Some("fd00:10:42::/48"),
            8,
            Some(64),
        ))
        .unwrap();
        let v4 = s.family(Family::V4).unwrap();
        assert_eq!((v4.node_prefix, v4.capacity()), (24, 256));
        assert_eq!(v4.block(1).to_string(), "10.42.1.0/24");
        let v6 = s.family(Family::V6).unwrap();
        assert_eq!((v6.node_prefix, v6.capacity()), (64, 65536));
        assert_eq!(v6.block(65535).to_string(), "fd00:10:42:ffff::/64");
        let wide = Block::parse_canonical("10.42.4.0/22").unwrap();
        assert_eq!(v4.index_span(wide), Some((4, 7)));
        let inner = Block::parse_canonical("10.42.9.64/26").unwrap();
        assert_eq!(v4.index_span(inner), Some((9, 9)));
        assert_eq!(
            v4.index_span(Block::parse_canonical("10.43.0.0/24").unwrap()),
            None
        );
    }

    #[test]
    fn bad_specs_are_listed() {
        let err =
            CidrSpec::parse(&spec(Some("10.42.1.0/16"), Some("10.0.0.0/8"), 8, None)).unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].contains("host bits set"), "{err:?}");
        assert!(err[1].contains("not an IPv6 CIDR"), "{err:?}");
        let err = CidrSpec::parse(&spec(Some("10.42.0.0/30"), None, 8, None)).unwrap_err();
        assert!(err[0].contains("do not fit"), "{err:?}");
        assert!(CidrSpec::parse(&spec(None, None, 8, None)).is_err());
    }
}
