//! The node-agent DaemonSet of one Service (BRIEF contract 2).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ExecAction, HostPathVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecurityContext, Sysctl, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portway_crds::selector::LabelSelectorOperator;
use portway_crds::{DataplaneMode, IpFamily, LoadBalancerPool};

use super::assign::EXCLUDE_LABEL;
use super::names;
use super::validate::ServiceShape;
use super::{Config, Key};

/// Annotation holding a hash of everything the operator sets on the DaemonSet: equal hash means
/// nothing to write (the API server adds defaults, so the objects themselves never compare equal).
pub const DESIRED_HASH_ANNOTATION: &str = "portway.dev/desired-hash";
/// Port of the agent's metrics listener in `Pod` dataplane.
pub const AGENT_METRICS_PORT: i32 = 9464;
/// Name of the agent container.
pub const AGENT_CONTAINER: &str = "agent";

/// Tolerations used when a pool sets none (K3s ServiceLB's).
pub fn default_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: Option<&str>| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: effect.map(str::to_owned),
        ..Default::default()
    };
    vec![
        t("CriticalAddonsOnly", None),
        t("node-role.kubernetes.io/control-plane", Some("NoSchedule")),
        t("node-role.kubernetes.io/master", Some("NoSchedule")),
    ]
}

/// A node affinity term from the pool's label selector, minus Nodes labelled [`EXCLUDE_LABEL`]
/// (never pool members, so their agent pod would hold the host port on a node that must not
/// serve) and minus `excluded` Nodes.
pub fn node_affinity(pool: &LoadBalancerPool, excluded: &[String]) -> Affinity {
    let sel = &pool.spec.node_selector;
    let mut exprs: Vec<NodeSelectorRequirement> = sel
        .match_labels
        .iter()
        .map(|(k, v)| NodeSelectorRequirement {
            key: k.clone(),
            operator: "In".to_owned(),
            values: Some(vec![v.clone()]),
        })
        .collect();
    exprs.extend(sel.match_expressions.iter().map(|r| {
        let op = match r.operator {
            LabelSelectorOperator::In => "In",
            LabelSelectorOperator::NotIn => "NotIn",
            LabelSelectorOperator::Exists => "Exists",
            LabelSelectorOperator::DoesNotExist => "DoesNotExist",
        };
        NodeSelectorRequirement {
            key: r.key.clone(),
            operator: op.to_owned(),
            values: (!r.values.is_empty()).then(|| r.values.clone()),
        }
    }));
    exprs.push(NodeSelectorRequirement {
        key: EXCLUDE_LABEL.to_owned(),
        operator: "DoesNotExist".to_owned(),
        values: None,
    });
    let fields = if excluded.is_empty() {
        Vec::new()
    } else {
        vec![NodeSelectorRequirement {
            key: "metadata.name".to_owned(),
            operator: "NotIn".to_owned(),
            values: Some(excluded.to_vec()),
        }]
    };
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(exprs),
                    match_fields: (!fields.is_empty()).then_some(fields),
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn exec_probe(what: &str, period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "portway-agent".to_owned(),
                "probe".to_owned(),
                what.to_owned(),
            ]),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// Builds the DaemonSet for `service`, served by `pool`, leaving out `excluded` Nodes.
pub fn build(
    service: &Key,
    pool: &LoadBalancerPool,
    pool_name: &str,
    shape: &ServiceShape,
    excluded: &[String],
    config: &Config,
) -> DaemonSet {
    let dataplane = pool.spec.dataplane;
    let host = dataplane == DataplaneMode::Host;
    let labels = names::daemonset_labels(service, pool_name);

    // `--dataplane`: the agent learns which network namespace it runs in, so that at SIGTERM it
    // leaves its rules to a successor only when the successor runs in the same one.
    let mut args = vec![
        "run".to_owned(),
        "--namespace".to_owned(),
        service.namespace.clone(),
        "--service".to_owned(),
        service.name.clone(),
        "--dataplane".to_owned(),
        if host { "host" } else { "pod" }.to_owned(),
    ];
    let mut ports: Vec<ContainerPort> = shape
        .ports
        .iter()
        .map(|p| ContainerPort {
            name: Some(format!("p-{}-{}", p.protocol.as_str(), p.host_port).to_lowercase()),
            container_port: p.host_port,
            host_port: Some(p.host_port),
            protocol: Some(p.protocol.as_str().to_owned()),
            ..Default::default()
        })
        .collect();
    if !host {
        // Both families: a probe or a scrape of an IPv6-only pod must reach it too.
        args.extend(["--metrics-addr".to_owned(), "[::]:9464".to_owned()]);
        ports.push(ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: AGENT_METRICS_PORT,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        });
    }

    let (volumes, mounts) = if host {
        (
            vec![
                Volume {
                    name: "portway-run".to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
                Volume {
                    name: "xtables-lock".to_owned(),
                    host_path: Some(HostPathVolumeSource {
                        path: "/run/xtables.lock".to_owned(),
                        type_: Some("FileOrCreate".to_owned()),
                    }),
                    ..Default::default()
                },
            ],
            vec![
                VolumeMount {
                    name: "portway-run".to_owned(),
                    mount_path: "/run/portway".to_owned(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "xtables-lock".to_owned(),
                    mount_path: "/run/xtables.lock".to_owned(),
                    ..Default::default()
                },
            ],
        )
    } else {
        (
            vec![Volume {
                name: "run".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }],
            vec![VolumeMount {
                name: "run".to_owned(),
                mount_path: "/run".to_owned(),
                ..Default::default()
            }],
        )
    };

    // Namespaced sysctls cannot be set on host-network pods; the Host dataplane relies on the
    // node's own forwarding settings.
    let sysctls = (config.agent_forwarding_sysctls && !host).then(|| {
        let mut s = vec![Sysctl {
            name: "net.ipv4.ip_forward".to_owned(),
            value: "1".to_owned(),
        }];
        if shape.ip_families.contains(&IpFamily::IPv6) {
            s.push(Sysctl {
                name: "net.ipv6.conf.all.forwarding".to_owned(),
                value: "1".to_owned(),
            });
        }
        s
    });

    let container = Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(config.agent_image.clone()),
        args: Some(args),
        env: Some(vec![
            env_field("NODE_NAME", "spec.nodeName"),
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
            env_field("POD_IPS", "status.podIPs"),
            env_field("HOST_IPS", "status.hostIPs"),
        ]),
        ports: Some(ports),
        readiness_probe: Some(exec_probe("ready", 5, 3)),
        liveness_probe: Some(exec_probe("live", 10, 6)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("10m".to_owned())),
                ("memory".to_owned(), Quantity("16Mi".to_owned())),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(0),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let excluded_sorted = {
        let mut e = excluded.to_vec();
        e.sort();
        e
    };
    let pod = PodSpec {
        containers: vec![container],
        affinity: Some(node_affinity(pool, &excluded_sorted)),
        tolerations: Some(
            pool.spec
                .tolerations
                .clone()
                .unwrap_or_else(default_tolerations),
        ),
        priority_class_name: Some("system-node-critical".to_owned()),
        termination_grace_period_seconds: Some(30),
        service_account_name: Some(config.agent_service_account.clone()),
        automount_service_account_token: Some(true),
        host_network: host.then_some(true),
        dns_policy: host.then(|| "ClusterFirstWithHostNet".to_owned()),
        security_context: sysctls.map(|s| PodSecurityContext {
            sysctls: Some(s),
            ..Default::default()
        }),
        volumes: Some(volumes),
        ..Default::default()
    };

    let mut ds = DaemonSet {
        metadata: ObjectMeta {
            name: Some(names::daemonset_name(service)),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(names::selector_labels(service)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            update_strategy: Some(update_strategy()),
            ..Default::default()
        }),
        status: None,
    };
    let hash = desired_hash(&ds);
    ds.metadata.annotations = Some(BTreeMap::from([(DESIRED_HASH_ANNOTATION.to_owned(), hash)]));
    ds
}

/// Rolling updates one node at a time, the old pod first (the API server's defaults, written out
/// because they are a decision): a surge pod could not start while the old one holds the node's
/// host ports (the scheduler's NodePorts filter, both dataplanes), so `maxSurge` must stay 0. In
/// the Host dataplane the rules stay in the node's namespace through the replacement
/// (docs/node-agent.md, "Upgrades and restarts"); in the Pod dataplane each node stops
/// forwarding while its pod is replaced, one node at a time.
pub fn update_strategy() -> DaemonSetUpdateStrategy {
    DaemonSetUpdateStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDaemonSet {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::Int(1)),
        }),
    }
}

/// Hash of what the operator sets on a DaemonSet (labels and spec).
pub fn desired_hash(ds: &DaemonSet) -> String {
    let body = serde_json::to_string(&(&ds.metadata.labels, &ds.spec)).unwrap_or_default();
    format!("{:08x}", names::fnv1a(&body))
}
