//! The agent's rule builder on arbitrary JSON (a ServiceLoadBalancer, or its spec), in both
//! dataplanes, then the iptables renderer on what it builds. Properties: no panic; a rule set is
//! sane; the batch for an empty netns touches only Portway's own chains; rules in place need no
//! write (render/parse round trip). Seeds: JSON ServiceLoadBalancers (see docs/e2e.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portway_node_agent::rules;

fuzz_target!(|data: &[u8]| {
    if data.len() > 64 * 1024 {
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for dataplane in ["Pod", "Host"] {
        let mut v = value.clone();
        // Try the spec as given and in the other dataplane.
        if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
            spec.insert("dataplane".into(), dataplane.into());
        }
        let ctx = portway_fuzz::dual_context("shop", "web");
        if let Ok(rs) = rules::build_from_json(&v, &ctx) {
            portway_fuzz::check_rule_set(&rs);
            portway_fuzz::check_render(&rs, "shop/web");
            assert_eq!(
                rules::build_from_json(&v, &ctx).ok(),
                Some(rs),
                "not deterministic"
            );
        }
    }
});
