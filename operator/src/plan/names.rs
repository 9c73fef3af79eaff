//! Names and labels of the objects the operator creates (BRIEF contract 2).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use portway_crds::names as n;

use super::Key;

/// Longest Kubernetes object name that is also a DNS label (DaemonSet pods derive from it).
pub const MAX_NAME: usize = 63;

/// Name of the agent RoleBinding in each namespace with a served Service.
pub const AGENT_ROLE_BINDING: &str = "portway-agent-status";

/// Stable 32-bit FNV-1a: the same in every process and every Rust version.
pub fn fnv1a(data: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in data.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Shortens `s` to at most `max` characters, replacing the tail with `-<8 hex digits>` of a hash
/// of the whole string, so distinct long inputs stay distinct.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let suffix = format!("{:08x}", fnv1a(s));
    let keep = max.saturating_sub(suffix.len() + 1);
    let mut head: String = s.chars().take(keep).collect();
    while head.ends_with(['-', '.', '_']) {
        head.pop();
    }
    if head.is_empty() {
        return suffix;
    }
    format!("{head}-{suffix}")
}

/// Longest DaemonSet name: the API server names a DaemonSet's pods from `generateName`
/// `<name>-`, keeping at most 58 characters of it before the 5 random ones, so only names of up to
/// 57 characters give pods named exactly `<name>-xxxxx`. The admission policy relies on that to
/// tie an agent's Pod to its DaemonSet, hence its Service.
pub const MAX_DAEMONSET_NAME: usize = 57;

/// `portway-<svc-namespace>-<svc-name>`, shortened with a hash suffix when over
/// [`MAX_DAEMONSET_NAME`] characters.
pub fn daemonset_name(service: &Key) -> String {
    shorten(
        &format!("portway-{}-{}", service.namespace, service.name),
        MAX_DAEMONSET_NAME,
    )
}

/// A label value (at most 63 characters; longer values get a hash suffix).
pub fn label_value(s: &str) -> String {
    shorten(s, MAX_NAME)
}

/// Labels that select the pods of a Service's DaemonSet (`spec.selector`, immutable).
pub fn selector_labels(service: &Key) -> BTreeMap<String, String> {
    BTreeMap::from([
        (n::LABEL_MANAGED_BY.to_owned(), n::MANAGED_BY.to_owned()),
        (
            n::LABEL_COMPONENT.to_owned(),
            n::COMPONENT_NODE_AGENT.to_owned(),
        ),
        (
            n::LABEL_SERVICE_NAMESPACE.to_owned(),
            label_value(&service.namespace),
        ),
        (n::LABEL_SERVICE_NAME.to_owned(), label_value(&service.name)),
    ])
}

/// All labels of a Service's DaemonSet and its pods.
pub fn daemonset_labels(service: &Key, pool: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(service);
    labels.insert(n::LABEL_POOL.to_owned(), label_value(pool));
    labels
}

/// Label selector string finding every node-agent DaemonSet Portway manages.
pub fn managed_daemonsets_selector() -> String {
    format!(
        "{}={},{}={}",
        n::LABEL_MANAGED_BY,
        n::MANAGED_BY,
        n::LABEL_COMPONENT,
        n::COMPONENT_NODE_AGENT
    )
}

/// Label selector string finding the agent RoleBindings Portway manages.
pub fn managed_role_bindings_selector() -> String {
    managed_daemonsets_selector()
}

/// The Service a managed DaemonSet serves, from its labels; `None` when it is not Portway's.
pub fn daemonset_target(ds: &DaemonSet) -> Option<Key> {
    let labels = ds.metadata.labels.as_ref()?;
    if labels.get(n::LABEL_MANAGED_BY).map(String::as_str) != Some(n::MANAGED_BY)
        || labels.get(n::LABEL_COMPONENT).map(String::as_str) != Some(n::COMPONENT_NODE_AGENT)
    {
        return None;
    }
    Some(Key::new(
        labels.get(n::LABEL_SERVICE_NAMESPACE)?.clone(),
        labels.get(n::LABEL_SERVICE_NAME)?.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_get_a_stable_hash_suffix() {
        let short = Key::new("shop", "storefront");
        assert_eq!(daemonset_name(&short), "portway-shop-storefront");
        let long = Key::new("n".repeat(40), "s".repeat(40));
        let name = daemonset_name(&long);
        assert_eq!(name.len(), MAX_DAEMONSET_NAME);
        assert_eq!(name, daemonset_name(&long), "deterministic");
        let other = Key::new("n".repeat(40), format!("{}x", "s".repeat(39)));
        assert_ne!(name, daemonset_name(&other));
        assert!(!name.contains("--"));
    }

    #[test]
    fn daemonset_pods_keep_the_whole_daemonset_name() {
        // generateName keeps 58 characters of `<name>-`; the name and its dash must fit.
        for (ns, svc) in [
            ("a", "b"),
            ("n".repeat(20).as_str(), "s".repeat(28).as_str()),
        ] {
            let key = Key::new(ns, svc);
            assert!(daemonset_name(&key).len() < 58, "{key:?}");
        }
        for len in 1..120 {
            let key = Key::new("ns", "s".repeat(len));
            let name = daemonset_name(&key);
            assert!(name.len() <= MAX_DAEMONSET_NAME, "{len}: {name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
        }
    }
}
