//! `portway plan` on arbitrary text: the YAML reader, the Portway schema/CEL checks, the ServiceLB
//! core and the pod-CIDR planner. Properties: no panic; the core does not depend on input order;
//! every ServiceLoadBalancer it plans is accepted by the agent's rule builder; persisted
//! condition messages fit the API; allocated pod CIDRs never overlap.
//! Seeds: `examples/` (and `examples/k3s/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A Kubernetes object is at most 1.5 MiB; beyond a few KiB the fuzzer only slows down.
    if data.len() > 64 * 1024 {
        return;
    }
    let text = String::from_utf8_lossy(data);
    portway_fuzz::check_plan_yaml(&text);
});
