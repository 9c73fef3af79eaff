//! The per-Service half of the core: ServiceLoadBalancer, DaemonSet, ingress, conditions and
//! Events of one Service, from its assignment, its agents' reports and its EndpointSlices.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::LoadBalancerIngress;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference};
use portway_crds::condition::{self, reasons, types};
use portway_crds::names as n;
use portway_crds::{
    IpFamily, NodeAddressType, ServiceLoadBalancer, ServiceLoadBalancerSpec,
    ServiceLoadBalancerStatus, TrafficPolicy,
};

use super::assign::NodeSet;

/// Ingress lists already built in this planning pass, by (address types, families, published
/// nodes): Services published on the same nodes share one list.
#[derive(Default)]
pub struct IngressCache {
    lists: HashMap<IngressKey, Arc<Vec<LoadBalancerIngress>>>,
}

/// (address types, families, published nodes).
type IngressKey = (Vec<NodeAddressType>, Vec<IpFamily>, NodeSet);

/// Most addresses named in a Ready message.
const MAX_LISTED: usize = 4;

use super::assign::{Assignment, NodeInfo, Placed, Placement, ServiceAssignment};
use super::{
    Config, FinalizerAction, Key, ServicePlan, ServiceState, conditions, daemonset, ingress, stale,
};

fn cond(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    config: &Config,
) -> Condition {
    condition::new(type_, ok, reason, message, generation, &config.now)
}

/// The ServiceLoadBalancer spec of a placed Service.
pub fn slb_spec(placed: &Placed, assignment: &Assignment) -> ServiceLoadBalancerSpec {
    let dataplane = assignment
        .pools
        .get(&placed.pool)
        .map(|p| p.pool.spec.dataplane)
        .unwrap_or_default();
    ServiceLoadBalancerSpec {
        pool: placed.pool.clone(),
        dataplane,
        ports: placed.shape.ports.clone(),
        cluster_ips: placed.shape.cluster_ips.clone(),
        ip_families: placed.shape.ip_families.clone(),
        external_traffic_policy: placed.shape.external_traffic_policy,
        source_ranges: placed.shape.source_ranges.clone(),
    }
}

fn describe_blocks(placed: &Placed) -> String {
    placed
        .blocks
        .iter()
        .map(|b| {
            if let Some(owner) = &b.reserved_by {
                return format!(
                    "{}/{} is reserved on every node for {owner} (--reserved-host-ports)",
                    b.protocol.as_str(),
                    b.port,
                );
            }
            let holders: Vec<String> = b.holders.iter().map(Key::to_string).collect();
            format!(
                "{}/{} is held by Service {} on {} of {} eligible nodes",
                b.protocol.as_str(),
                b.port,
                holders.join(", "),
                b.nodes_blocked,
                placed.eligible.len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Plans one Service.
pub fn plan_service(
    a: &ServiceAssignment,
    assignment: &Assignment,
    slb: Option<&ServiceLoadBalancer>,
    slices: &[Arc<EndpointSlice>],
    config: &Config,
) -> ServicePlan {
    plan_service_cached(
        a,
        assignment,
        slb,
        slices,
        config,
        &mut IngressCache::default(),
    )
}

/// [`plan_service`] sharing ingress lists through `cache`.
pub fn plan_service_cached(
    a: &ServiceAssignment,
    assignment: &Assignment,
    slb: Option<&ServiceLoadBalancer>,
    slices: &[Arc<EndpointSlice>],
    config: &Config,
    cache: &mut IngressCache,
) -> ServicePlan {
    let mut plan = ServicePlan {
        service: a.key.clone(),
        state: ServiceState::CleaningUp,
        finalizer: if a.has_finalizer {
            FinalizerAction::Remove
        } else {
            FinalizerAction::None
        },
        pool: None,
        service_load_balancer: None,
        daemonset: None,
        ingress: Arc::new(Vec::new()),
        conditions: Vec::new(),
        service_condition: None,
        events: Vec::new(),
        stale_node_entries: Vec::new(),
    };
    let unplaced = |plan: &mut ServicePlan, state, reason: &str, message: String| {
        plan.state = state;
        let ready = cond(types::READY, false, reason, message, None, config);
        plan.events.push(conditions::unplaced_event(&ready));
        if state == ServiceState::NoPool {
            let selected = cond(
                types::POOL_SELECTED,
                false,
                reason,
                ready.message.clone(),
                None,
                config,
            );
            plan.conditions.push(selected);
        }
        plan.conditions.push(ready);
    };
    match &a.placement {
        Placement::Released => {}
        Placement::Invalid(message) => unplaced(
            &mut plan,
            ServiceState::Invalid,
            reasons::INVALID_SERVICE,
            format!("Portway cannot serve this Service: {message}"),
        ),
        Placement::NoPool { annotated: Some(pool) } => unplaced(
            &mut plan,
            ServiceState::NoPool,
            reasons::POOL_NOT_FOUND,
            format!(
                "the {} annotation names LoadBalancerPool {pool:?}, which does not exist",
                n::POOL_ANNOTATION
            ),
        ),
        Placement::NoPool { annotated: None } => unplaced(
            &mut plan,
            ServiceState::NoPool,
            reasons::NO_MATCHING_POOL,
            "no LoadBalancerPool with autoAssign selects this Service (check the pools' serviceSelector and namespaceSelector, or set the portway.dev/pool annotation)".to_owned(),
        ),
        Placement::Placed(placed) => {
            plan_placed(&mut plan, a, placed, assignment, slb, slices, config, cache)
        }
    }
    plan.service_condition = conditions::service_condition(&plan, &a.service, &config.now);
    plan
}

#[allow(clippy::too_many_arguments)]
fn plan_placed(
    plan: &mut ServicePlan,
    a: &ServiceAssignment,
    placed: &Placed,
    assignment: &Assignment,
    slb: Option<&ServiceLoadBalancer>,
    slices: &[Arc<EndpointSlice>],
    config: &Config,
    cache: &mut IngressCache,
) {
    plan.finalizer = FinalizerAction::Ensure;
    plan.pool = Some(placed.pool.clone());
    plan.stale_node_entries = stale::stale_node_entries(placed, assignment, slb);
    let Some(pool) = assignment.pools.get(&placed.pool) else {
        return;
    };
    let spec = slb_spec(placed, assignment);
    // The generation the API server gives the ServiceLoadBalancer once this spec is applied.
    let generation = match slb.map(|s| (&s.spec, s.metadata.generation)) {
        Some((old, Some(g))) if *old == spec => Some(g),
        Some((_, Some(g))) => Some(g + 1),
        _ => Some(1),
    };
    let c = |type_: &str, ok: bool, reason: &str, message: String| {
        cond(type_, ok, reason, message, generation, config)
    };

    let eligible = placed.eligible.len();
    let usable_count = placed.usable.len();
    let local = placed.shape.external_traffic_policy == TrafficPolicy::Local;
    // Everything below is set algebra on node bitsets: cheap even with 1000s of nodes.
    let to_set = |names: &std::collections::BTreeSet<String>| {
        let mut set = NodeSet::empty(assignment.nodes.len());
        for name in names {
            if let Some(i) = assignment.node_index.get(name) {
                set.insert(*i);
            }
        }
        set
    };
    let endpoint_set = to_set(&ingress::ready_endpoint_nodes(slices));
    let reported = if config.assume_agents_forwarding {
        placed.usable.clone()
    } else {
        to_set(&ingress::forwarding_nodes(slb))
    };
    let forwarding = placed.usable.and(&reported).and(&assignment.ready);
    let usable_with_endpoints = placed.usable.and(&endpoint_set).len();
    let published = if local {
        forwarding.and(&endpoint_set)
    } else {
        forwarding
    };
    let publish_count = published.len();

    let mut conds = Vec::new();
    conds.push(c(
        types::POOL_SELECTED,
        true,
        if placed.annotated {
            reasons::POOL_ANNOTATED
        } else {
            reasons::POOL_MATCHED
        },
        if placed.annotated {
            format!(
                "LoadBalancerPool {} (named by the {} annotation)",
                placed.pool,
                n::POOL_ANNOTATION
            )
        } else {
            format!(
                "LoadBalancerPool {} (priority {}) selects this Service",
                placed.pool, pool.pool.spec.priority
            )
        },
    ));

    let conflict = placed.port_conflict();
    // A reserved port blocks every node, so it alone decides the reason.
    let conflict_reason = if placed.blocks.iter().any(|b| b.reserved_by.is_some()) {
        reasons::PORT_RESERVED
    } else {
        reasons::PORT_IN_USE
    };
    conds.push(if conflict {
        c(
            types::PORT_CONFLICT,
            true,
            conflict_reason,
            format!("no eligible node is free: {}", describe_blocks(placed)),
        )
    } else if placed.blocks.is_empty() {
        c(
            types::PORT_CONFLICT,
            false,
            reasons::NO_CONFLICT,
            "every port is free on every eligible node".to_owned(),
        )
    } else {
        c(
            types::PORT_CONFLICT,
            false,
            reasons::NO_CONFLICT,
            format!(
                "{} of {eligible} eligible nodes are usable ({}); the others are left out",
                usable_count,
                describe_blocks(placed)
            ),
        )
    });

    let endpoints_ok = if local {
        usable_with_endpoints > 0
    } else {
        ingress::any_ready_endpoint(slices)
    };
    conds.push(if endpoints_ok {
        c(
            types::ENDPOINTS_READY,
            true,
            reasons::ENDPOINTS_AVAILABLE,
            if local {
                format!(
                    "{usable_with_endpoints} of {} usable nodes have a ready endpoint",
                    usable_count
                )
            } else {
                "the Service has ready endpoints".to_owned()
            },
        )
    } else {
        c(
            types::ENDPOINTS_READY,
            false,
            reasons::NO_READY_ENDPOINTS,
            if local {
                "externalTrafficPolicy is Local and no usable node has a ready endpoint".to_owned()
            } else {
                "the Service has no ready endpoint".to_owned()
            },
        )
    });

    let types_ = &pool.pool.spec.address_types;
    let cache_key = (types_.clone(), placed.shape.ip_families.clone(), published);
    plan.ingress = match cache.lists.get(&cache_key) {
        Some(list) => list.clone(),
        None => {
            let publish: Vec<&NodeInfo> = cache_key
                .2
                .iter()
                .filter_map(|i| assignment.nodes.get(i))
                .collect();
            let list = Arc::new(ingress::ingress(
                &publish,
                types_,
                &placed.shape.ip_families,
            ));
            cache.lists.insert(cache_key, list.clone());
            list
        }
    };

    let (state, ready) = if eligible == 0 {
        (
            ServiceState::NoNodes,
            c(
                types::READY,
                false,
                reasons::POOL_HAS_NO_NODES,
                format!("LoadBalancerPool {} selects no Node", placed.pool),
            ),
        )
    } else if conflict {
        (
            ServiceState::PortConflict,
            c(
                types::READY,
                false,
                conflict_reason,
                format!("no eligible node is free: {}", describe_blocks(placed)),
            ),
        )
    } else if local && usable_with_endpoints == 0 {
        (
            ServiceState::NoEndpoints,
            c(
                types::READY,
                false,
                reasons::NO_READY_ENDPOINTS,
                "externalTrafficPolicy is Local and no usable node has a ready endpoint, so no node is published".to_owned(),
            ),
        )
    } else if publish_count == 0 {
        (
            ServiceState::Waiting,
            c(
                types::READY,
                false,
                reasons::AGENTS_NOT_FORWARDING,
                format!(
                    "waiting for node agents: 0 of {} {}nodes report Forwarding=True",
                    if local {
                        usable_with_endpoints
                    } else {
                        usable_count
                    },
                    if local {
                        "usable nodes with endpoints "
                    } else {
                        "usable "
                    }
                ),
            ),
        )
    } else if plan.ingress.is_empty() {
        let wanted: Vec<&str> = types_.iter().map(|t| t.as_str()).collect();
        let fams: Vec<&str> = placed
            .shape
            .ip_families
            .iter()
            .map(|f| f.as_str())
            .collect();
        (
            ServiceState::Waiting,
            c(
                types::READY,
                false,
                reasons::NO_NODE_ADDRESSES,
                format!(
                    "{} nodes forward but none has a {} address of family {}",
                    publish_count,
                    wanted.join(" or "),
                    fams.join("/")
                ),
            ),
        )
    } else {
        let total = plan.ingress.len();
        let mut addrs: Vec<&str> = plan
            .ingress
            .iter()
            .take(MAX_LISTED)
            .filter_map(|i| i.ip.as_deref())
            .collect();
        let more = format!("and {} more", total.saturating_sub(MAX_LISTED));
        if total > MAX_LISTED {
            addrs.push(&more);
        }
        (
            ServiceState::Serving,
            c(
                types::READY,
                true,
                reasons::AGENTS_FORWARDING,
                format!(
                    "published {} on {} of {} usable nodes",
                    addrs.join(", "),
                    publish_count,
                    usable_count
                ),
            ),
        )
    };
    conds.push(ready);
    plan.state = state;

    let old_conditions: &[Condition] = slb
        .and_then(|s| s.status.as_ref())
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    plan.events = conditions::transition_events(old_conditions, &conds);
    let merged = condition::merge(old_conditions, conds);
    plan.conditions = merged.clone();

    let owner = a
        .service
        .metadata
        .uid
        .as_ref()
        .filter(|u| !u.is_empty())
        .map(|uid| {
            vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Service".to_owned(),
                name: a.key.name.clone(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: None,
            }]
        });
    if !config.build_objects {
        return;
    }
    plan.service_load_balancer = Some(ServiceLoadBalancer {
        metadata: ObjectMeta {
            name: Some(a.key.name.clone()),
            namespace: Some(a.key.namespace.clone()),
            labels: Some(BTreeMap::from([
                (n::LABEL_MANAGED_BY.to_owned(), n::MANAGED_BY.to_owned()),
                (
                    n::LABEL_POOL.to_owned(),
                    super::names::label_value(&placed.pool),
                ),
                (
                    n::LABEL_AGENT_DAEMONSET.to_owned(),
                    a.daemonset_name.clone(),
                ),
            ])),
            owner_references: owner,
            ..Default::default()
        },
        spec,
        status: Some(ServiceLoadBalancerStatus {
            observed_generation: generation,
            conditions: merged,
            // What the DaemonSet's node affinity selects: a stopping agent reads it to tell a
            // replacement (its node is listed) from a removal.
            target_nodes: assignment.node_names(&placed.usable),
            nodes: Vec::new(),
        }),
    });

    if !placed.usable.is_empty() {
        let excluded = assignment.node_names(&placed.eligible.minus(&placed.usable));
        plan.daemonset = Some(daemonset::build(
            &a.key,
            &pool.pool,
            &placed.pool,
            &placed.shape,
            &excluded,
            config,
        ));
    }
}
