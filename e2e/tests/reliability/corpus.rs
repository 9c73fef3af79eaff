//! The hostile corpus: one case per file in `e2e/testdata/hostile/` (YAML: `case`, `why`,
//! `expect`, `objects`, optionally `setup`), plus the cases whose objects are too large to keep as
//! files (1 MiB annotations and labels, thousands of ports), generated here with the same shape.
//!
//! `expect` says what must happen to the case's objects on each path; every part given must
//! hold, and at least one must be given:
//! - `input`: the `portway plan` reader (`portway_operator::input`) sets a document aside, with
//!   a reason containing this text (Portway kinds: the schema and CEL checks the API server runs;
//!   any kind: documents that do not deserialize).
//! - `core`: the operator's pure core, fed the objects directly as a cluster without the CRDs'
//!   rules would deliver them (`plan::desired_state` and `cidr::plan_for_nodes`): see
//!   [`CoreExpect`].
//! - `agent`: the node agent's rule builder (`rules::build_from_json`), fed the
//!   ServiceLoadBalancer of the case, or for a Service the ServiceLoadBalancer a careless writer
//!   would derive from it (values copied as they are): an error containing `error`, or, for
//!   objects that are valid but cannot be forwarded here, a rule set with no forwarding rule and
//!   the note `note`.
//! - `daemonset`: whether a node-agent DaemonSet is right for the case's Service (default false:
//!   a rejected Service must never get one).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

/// One hostile case.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    pub case: String,
    pub why: String,
    pub expect: Expect,
    /// The hostile objects.
    pub objects: Vec<Value>,
    #[serde(default)]
    pub setup: Setup,
}

/// Changes to the base environment (two IPv4 workers, a default pool, a default ClusterCIDR).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Setup {
    /// Leave out the base ClusterCIDR `default` (for allocation cases).
    #[serde(default)]
    pub no_default_cluster_cidr: bool,
    /// Leave out the base Nodes.
    #[serde(default)]
    pub no_base_nodes: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub core: Option<CoreExpect>,
    #[serde(default)]
    pub agent: Option<AgentExpect>,
    #[serde(default)]
    pub daemonset: bool,
}

/// What the operator's core must report.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CoreExpect {
    /// A document does not deserialize into its type: the text of the error (what the
    /// controller's watch would see).
    #[serde(default)]
    pub unreadable: Option<String>,
    /// The Service is `Invalid` (condition reason `InvalidService`) with this in the message.
    #[serde(default)]
    pub invalid: Option<String>,
    /// A condition of the case's Service plan.
    #[serde(default)]
    pub condition: Option<CondExpect>,
    /// A condition of a pool's planned status (`name` required).
    #[serde(default)]
    pub pool_condition: Option<CondExpect>,
    /// A ClusterCIDR outcome condition (`name` required).
    #[serde(default)]
    pub cidr_condition: Option<CondExpect>,
    /// A Node's pod-CIDR outcome.
    #[serde(default)]
    pub cidr_node: Option<NodeExpect>,
    /// `plan_for_nodes` refuses the input as a whole, with this in the error.
    #[serde(default)]
    pub cidr_error: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CondExpect {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeExpect {
    pub node: String,
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentExpect {
    /// The builder's error contains this.
    #[serde(default)]
    pub error: Option<String>,
    /// The builder succeeds with no forwarding rule and this note (`Note`'s `kind`).
    #[serde(default)]
    pub note: Option<String>,
    /// Dataplane of the derived ServiceLoadBalancer (default `Pod`).
    #[serde(default)]
    pub dataplane: Option<String>,
}

pub fn dir() -> PathBuf {
    portway_e2e::envtest::workspace_root().join("e2e/testdata/hostile")
}

/// Every case of `e2e/testdata/hostile/`, by file name, then the generated ones.
pub fn load() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("e2e/testdata/hostile")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut cases: Vec<Case> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read case");
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        })
        .collect();
    cases.extend(generated());
    cases
}

const MIB: usize = 1 << 20;

fn service(name: &str, spec: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name, "namespace": "hostile",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": annotations,
        },
        "spec": spec,
    })
}

fn ports(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": format!("p{i}"), "protocol": "TCP", "port": 10000 + i, "nodePort": 30000 + (i % 2000)}))
            .collect(),
    )
}

/// Cases whose objects are generated: too big, or too repetitive, for a file.
fn generated() -> Vec<Case> {
    let base_spec = |ports: Value| {
        json!({
            "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"], "ports": ports,
        })
    };
    let case = |name: &str, why: &str, expect: Value, objects: Vec<Value>| Case {
        case: name.to_owned(),
        why: why.to_owned(),
        expect: serde_json::from_value(expect).expect("expect"),
        objects,
        setup: Setup::default(),
    };
    let mut out = vec![
        case(
            "gen-svc-5000-ports",
            "a Service with 5000 ports (huge port list)",
            json!({"core": {"invalid": "has 5000 ports; Portway forwards at most 100"},
                   "agent": {"error": "spec.ports has 5000 entries; at most 100"}}),
            vec![service("huge", base_spec(ports(5000)), json!(null))],
        ),
        case(
            "gen-svc-101-ports",
            "one port more than a ServiceLoadBalancer can hold",
            json!({"core": {"invalid": "has 101 ports"},
                   "agent": {"error": "spec.ports has 101 entries"}}),
            vec![service("p101", base_spec(ports(101)), json!(null))],
        ),
    ];
    let mut spec = base_spec(json!([{"port": 80, "protocol": "TCP"}]));
    spec["loadBalancerSourceRanges"] = Value::Array(
        (0..257)
            .map(|i| json!(format!("10.{}.{}.0/24", i / 256, i % 256)))
            .collect(),
    );
    out.push(case(
        "gen-svc-257-source-ranges",
        "more source ranges than the schema allows",
        json!({"core": {"invalid": "loadBalancerSourceRanges has more than 256 entries"},
               "agent": {"error": "spec.sourceRanges has 257 entries"}}),
        vec![service("ranges", spec, json!(null))],
    ));
    out.push(case(
        "gen-svc-pool-annotation-1mib",
        "a 1 MiB portway.dev/pool annotation: PoolNotFound, and nothing is written that carries it (no ServiceLoadBalancer; the controller cuts Event notes to 1 KiB)",
        json!({"core": {"condition": {"type": "Ready", "status": "False", "reason": "PoolNotFound"}}}),
        vec![service(
            "big-annotation",
            base_spec(json!([{"port": 80, "protocol": "TCP"}])),
            json!({"portway.dev/pool": "p".repeat(MIB)}),
        )],
    ));
    out.push(case(
        "gen-svc-1mib-annotation-and-bad-port",
        "1 MiB of unrelated annotations on a Service that is invalid anyway: the error stays short",
        json!({"core": {"invalid": "port 0 is outside 1-65535"},
               "agent": {"error": "spec.ports[0].port is 0"}}),
        vec![service(
            "noisy",
            base_spec(json!([{"port": 0, "protocol": "TCP"}])),
            json!({"example.com/blob": "x".repeat(MIB)}),
        )],
    ));
    out.push(case(
        "gen-svc-port-name-1mib",
        "a 1 MiB port name",
        json!({"core": {"invalid": "name is longer than 63 characters"},
               "agent": {"error": "is not a valid port name"}}),
        vec![service(
            "long-port-name",
            base_spec(json!([{"name": "n".repeat(MIB), "port": 80, "protocol": "TCP"}])),
            json!(null),
        )],
    ));
    let pool = json!({
        "apiVersion": "portway.dev/v1alpha1", "kind": "LoadBalancerPool",
        "metadata": {"name": "huge-label"},
        "spec": {"nodeSelector": {"matchLabels": {"zone": "z".repeat(MIB)}}, "autoAssign": false},
    });
    out.push(case(
        "gen-pool-label-value-1mib",
        "a pool selecting on a 1 MiB label value (absurd label size)",
        json!({"input": "matchLabels",
               "core": {"poolCondition": {"name": "huge-label", "type": "Ready", "status": "False", "reason": "NoMatchingNodes"}}}),
        vec![pool],
    ));
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n".repeat(MIB), "labels": {"k".repeat(MIB): "v"}},
        "spec": {"podCIDRs": ["192.0.2.0/24"], "podCIDR": "192.0.2.0/24"},
    });
    out.push(case(
        "gen-node-name-and-label-1mib",
        "a Node with a 1 MiB name and a 1 MiB label key, holding a pod CIDR outside every ClusterCIDR",
        json!({"core": {"cidrNode": {"node": "n".repeat(MIB), "state": "Foreign", "reason": "outside every ClusterCIDR"}}}),
        vec![node],
    ));
    out
}
