//! Objects a cluster's kubelets and controllers would make, built and created by the tests
//! themselves: Nodes (with addresses and a Ready condition, written through `/status`),
//! EndpointSlices, LoadBalancer Services, ServiceAccounts and Pods bound to a node (marked Ready
//! through `/status`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Node, NodeAddress, NodeCondition, NodeStatus, Pod, PodCondition,
    PodIP, PodSpec, PodStatus, Service, ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::envtest::FIELD_MANAGER;

/// Image of test pods; nothing ever pulls it (there is no kubelet).
pub const TEST_POD_IMAGE: &str = "registry.k8s.io/pause:3.10";

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    })
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// A Ready Node with `labels` and `addresses` (`(type, address)`, e.g. `("InternalIP", "10.0.0.1")`).
pub fn node(name: &str, node_labels: &[(&str, &str)], addresses: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: labels(node_labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(type_, address)| NodeAddress {
                        type_: (*type_).to_owned(),
                        address: (*address).to_owned(),
                    })
                    .collect(),
            ),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                reason: Some("KubeletReady".to_owned()),
                last_transition_time: Some(now()),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    }
}

/// Creates `node`, then writes its status through `/status` (a create drops the status).
pub async fn create_node(client: &Client, node: &Node) -> kube::Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), node).await?;
    match &node.status {
        Some(status) => {
            api.patch_status(
                &created.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        }
        None => Ok(created),
    }
}

/// One endpoint of an [`endpoint_slice`].
#[derive(Clone, Debug)]
pub struct TestEndpoint<'a> {
    pub address: &'a str,
    pub node: &'a str,
    pub ready: bool,
}

/// An EndpointSlice of Service `namespace/service` (`kubernetes.io/service-name` label), with
/// `ports` as `(name, protocol, port)`.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    address_type: &str,
    ports: &[(&str, &str, i32)],
    endpoints: &[TestEndpoint<'_>],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: labels(&[(portway_crds::names::ENDPOINTSLICE_SERVICE_LABEL, service)]),
            ..ObjectMeta::default()
        },
        address_type: address_type.to_owned(),
        ports: Some(
            ports
                .iter()
                .map(|(name, protocol, port)| EndpointPort {
                    name: Some((*name).to_owned()),
                    protocol: Some((*protocol).to_owned()),
                    port: Some(*port),
                    app_protocol: None,
                })
                .collect(),
        ),
        endpoints: endpoints
            .iter()
            .map(|e| Endpoint {
                addresses: vec![e.address.to_owned()],
                node_name: Some(e.node.to_owned()),
                conditions: Some(EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.ready),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// A `type: LoadBalancer` Service selecting `app=<name>`, ports `(name, protocol, port)`.
pub fn load_balancer_service(namespace: &str, name: &str, ports: &[(&str, &str, i32)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            selector: labels(&[("app", name)]),
            ports: Some(
                ports
                    .iter()
                    .map(|(port_name, protocol, port)| ServicePort {
                        name: Some((*port_name).to_owned()),
                        protocol: Some((*protocol).to_owned()),
                        port: *port,
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Creates ServiceAccount `namespace/name` unless it exists (there is no controller-manager to
/// make `default`).
pub async fn ensure_service_account(
    client: &Client,
    namespace: &str,
    name: &str,
) -> kube::Result<ServiceAccount> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&sa),
    )
    .await
}

/// A Pod already bound to `node` (`spec.nodeName` set, as the scheduler would), running as
/// ServiceAccount `service_account`.
pub fn pod_on_node(
    namespace: &str,
    name: &str,
    node: &str,
    service_account: &str,
    pod_labels: &[(&str, &str)],
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: labels(pod_labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            service_account_name: Some(service_account.to_owned()),
            containers: vec![Container {
                name: "main".to_owned(),
                image: Some(TEST_POD_IMAGE.to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// Creates the ServiceAccount (if missing) and a Pod bound to `node` running as it.
pub async fn create_pod_on_node(
    client: &Client,
    namespace: &str,
    name: &str,
    node: &str,
    service_account: &str,
) -> kube::Result<Pod> {
    ensure_service_account(client, namespace, service_account).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    api.create(
        &PostParams::default(),
        &pod_on_node(namespace, name, node, service_account, &[]),
    )
    .await
}

/// Marks Pod `namespace/name` Running and Ready with `pod_ips` and `host_ips`, through `/status`
/// (what its kubelet would report).
pub async fn mark_pod_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    pod_ips: &[&str],
    host_ips: &[&str],
) -> kube::Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let ips = |list: &[&str]| -> Vec<PodIP> {
        list.iter()
            .map(|ip| PodIP {
                ip: (*ip).to_owned(),
            })
            .collect()
    };
    let ready = |type_: &str| PodCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        last_transition_time: Some(now()),
        ..PodCondition::default()
    };
    let status = PodStatus {
        phase: Some("Running".to_owned()),
        pod_ip: pod_ips.first().map(|s| (*s).to_owned()),
        pod_ips: Some(ips(pod_ips)),
        host_ip: host_ips.first().map(|s| (*s).to_owned()),
        host_ips: Some(
            host_ips
                .iter()
                .map(|ip| k8s_openapi::api::core::v1::HostIP {
                    ip: (*ip).to_owned(),
                })
                .collect(),
        ),
        conditions: Some(vec![
            ready("PodScheduled"),
            ready("Initialized"),
            ready("ContainersReady"),
            ready("Ready"),
        ]),
        container_statuses: Some(vec![ContainerStatus {
            name: "main".to_owned(),
            image: TEST_POD_IMAGE.to_owned(),
            image_id: String::new(),
            ready: true,
            restart_count: 0,
            started: Some(true),
            ..ContainerStatus::default()
        }]),
        start_time: Some(now()),
        ..PodStatus::default()
    };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
}

/// Creates Namespace `name` (exactly that name, e.g. the operator's `portway-system`) unless it
/// exists.
pub async fn ensure_namespace(client: &Client, name: &str) -> kube::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A LoadBalancerPool selecting the Nodes labelled `node_labels` (all Services, priority 0,
/// default address types ExternalIP then InternalIP, Pod dataplane): the API's own defaults.
pub fn pool(
    name: &str,
    node_labels: &[(&str, &str)],
) -> Result<portway_crds::LoadBalancerPool, serde_json::Error> {
    let match_labels: BTreeMap<String, String> = node_labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let value = json!({
        "apiVersion": portway_crds::names::API_VERSION,
        "kind": "LoadBalancerPool",
        "metadata": { "name": name },
        "spec": { "nodeSelector": { "matchLabels": match_labels } },
    });
    serde_json::from_value(value)
}

/// Creates `pool`.
pub async fn create_pool(
    client: &Client,
    pool: &portway_crds::LoadBalancerPool,
) -> kube::Result<portway_crds::LoadBalancerPool> {
    Api::<portway_crds::LoadBalancerPool>::all(client.clone())
        .create(&PostParams::default(), pool)
        .await
}

/// A ClusterCIDR for every Node with an IPv4 range and `host_bits` per Node.
pub fn cluster_cidr(name: &str, ipv4: &str, host_bits: i32) -> portway_crds::ClusterCIDR {
    portway_crds::ClusterCIDR::new(
        name,
        portway_crds::ClusterCIDRSpec {
            node_selector: None,
            per_node_host_bits: host_bits,
            ipv4_per_node_host_bits: None,
            ipv6_per_node_host_bits: None,
            ipv4: Some(ipv4.to_owned()),
            ipv6: None,
            priority: 0,
        },
    )
}
