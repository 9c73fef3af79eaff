//! Where the agent learns its desired state: the Service's `ServiceLoadBalancer` and
//! EndpointSlices, from the API server ([`kube_source`], watches) or from files in local mode
//! ([`file_source`], re-read when they change and on SIGHUP). Both send [`Update`]s over a
//! channel; the agent folds them into an [`Observed`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use portway_crds::names::ENDPOINTSLICE_SERVICE_LABEL;
use portway_crds::{ServiceLoadBalancer, ServiceLoadBalancerSpec};
use tokio::sync::mpsc;

/// What is known about the `ServiceLoadBalancer`.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum SpecState {
    /// Not listed yet.
    #[default]
    Unknown,
    /// It does not exist (not created yet, or the Service was deleted).
    Missing,
    /// It exists but cannot be read (wrong shape); the agent reports `InvalidSpec`.
    Unreadable {
        generation: Option<i64>,
        error: String,
    },
    Present(Box<ServiceLoadBalancer>),
}

/// One change from a source.
#[derive(Clone, Debug)]
pub enum Update {
    Spec(SpecState),
    /// The complete current set of the Service's EndpointSlices.
    Slices(Vec<EndpointSlice>),
}

/// What the agent knows.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub spec: SpecState,
    pub slices: Vec<EndpointSlice>,
    /// The EndpointSlices have been listed at least once.
    pub slices_synced: bool,
}

impl Observed {
    pub fn update(&mut self, u: Update) {
        match u {
            Update::Spec(s) => self.spec = s,
            Update::Slices(s) => {
                self.slices = s;
                self.slices_synced = true;
            }
        }
    }
}

fn spec_state(obj: Option<DeserializeGuard<ServiceLoadBalancer>>) -> SpecState {
    match obj {
        None => SpecState::Missing,
        Some(DeserializeGuard(Ok(slb))) => SpecState::Present(Box::new(slb)),
        Some(DeserializeGuard(Err(invalid))) => SpecState::Unreadable {
            generation: invalid.metadata.generation,
            error: invalid.error,
        },
    }
}

/// Watches the `ServiceLoadBalancer` `namespace/name` and the EndpointSlices labelled
/// `kubernetes.io/service-name=name`, sending updates until `tx` closes. Watch errors are
/// logged and retried with kube-runtime's default backoff. Objects that fail to deserialize
/// do not break the watch (`DeserializeGuard`).
pub fn kube_source(client: kube::Client, namespace: &str, name: &str, tx: mpsc::Sender<Update>) {
    let slbs: Api<DeserializeGuard<ServiceLoadBalancer>> =
        Api::namespaced(client.clone(), namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let spec_tx = tx.clone();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(slbs, cfg).default_backoff().boxed();
        let mut buffer = None;
        while let Some(ev) = stream.next().await {
            let update = match ev {
                Ok(Event::Init) => {
                    buffer = None;
                    continue;
                }
                Ok(Event::InitApply(o)) => {
                    buffer = Some(o);
                    continue;
                }
                Ok(Event::InitDone) => spec_state(buffer.take()),
                Ok(Event::Apply(o)) => spec_state(Some(o)),
                Ok(Event::Delete(_)) => SpecState::Missing,
                Err(e) => {
                    tracing::warn!(error = %e, "ServiceLoadBalancer watch failed; retrying");
                    continue;
                }
            };
            if spec_tx.send(Update::Spec(update)).await.is_err() {
                return;
            }
        }
    });

    let slices: Api<DeserializeGuard<EndpointSlice>> = Api::namespaced(client, namespace);
    let cfg = watcher::Config::default().labels(&format!("{ENDPOINTSLICE_SERVICE_LABEL}={name}"));
    tokio::spawn(async move {
        let mut stream = watcher::watcher(slices, cfg).default_backoff().boxed();
        let mut current: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        let mut buffer: Option<BTreeMap<String, EndpointSlice>> = None;
        let keep = |map: &mut BTreeMap<String, EndpointSlice>,
                    o: DeserializeGuard<EndpointSlice>| {
            match o.0 {
                Ok(s) => {
                    map.insert(s.name_any(), s);
                }
                Err(invalid) => tracing::warn!(
                    slice = invalid.metadata.name.as_deref().unwrap_or(""),
                    error = %invalid.error,
                    "ignoring an EndpointSlice that cannot be read"
                ),
            }
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Init) => {
                    buffer = Some(BTreeMap::new());
                    continue;
                }
                Ok(Event::InitApply(o)) => {
                    if let Some(b) = buffer.as_mut() {
                        keep(b, o);
                    }
                    continue;
                }
                Ok(Event::InitDone) => current = buffer.take().unwrap_or_default(),
                Ok(Event::Apply(o)) => keep(&mut current, o),
                Ok(Event::Delete(o)) => {
                    let key = match &o.0 {
                        Ok(s) => s.name_any(),
                        Err(invalid) => invalid.metadata.name.clone().unwrap_or_default(),
                    };
                    current.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "EndpointSlice watch failed; retrying");
                    continue;
                }
            }
            if tx
                .send(Update::Slices(current.values().cloned().collect()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

/// Parses a local spec file: a `ServiceLoadBalancer` object or just its `spec`, in YAML or
/// JSON. `default_ns`/`default_name` name the object when the file does not.
pub fn parse_spec_file(text: &str, default_ns: &str, default_name: &str) -> SpecState {
    let value: serde_json::Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return SpecState::Unreadable {
                generation: None,
                error: format!("not YAML: {e}"),
            };
        }
    };
    let is_object = value.get("kind").is_some() || value.get("apiVersion").is_some();
    if is_object {
        match serde_json::from_value::<ServiceLoadBalancer>(value) {
            Ok(mut slb) => {
                if slb.metadata.namespace.is_none() {
                    slb.metadata.namespace = Some(default_ns.to_owned());
                }
                SpecState::Present(Box::new(slb))
            }
            Err(e) => SpecState::Unreadable {
                generation: None,
                error: e.to_string(),
            },
        }
    } else {
        match serde_json::from_value::<ServiceLoadBalancerSpec>(value) {
            Ok(spec) => {
                let mut slb = ServiceLoadBalancer::new(default_name, spec);
                slb.metadata.namespace = Some(default_ns.to_owned());
                SpecState::Present(Box::new(slb))
            }
            Err(e) => SpecState::Unreadable {
                generation: None,
                error: e.to_string(),
            },
        }
    }
}

/// Parses a local endpoints file: EndpointSlices as YAML documents, or `List`s of them.
pub fn parse_endpoints_file(text: &str) -> Result<Vec<EndpointSlice>, String> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("not YAML: {e}"))?;
    let mut out = Vec::new();
    for doc in docs {
        if doc.is_null() {
            continue;
        }
        let items = match doc.get("items").and_then(|i| i.as_array()) {
            Some(items) => items.clone(),
            None => vec![doc],
        };
        for item in items {
            out.push(serde_json::from_value(item).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// Local mode: reads the files now, then whenever their modification time or size changes
/// (checked every `poll`) or the process gets SIGHUP.
pub fn file_source(
    spec_path: PathBuf,
    endpoints_path: Option<PathBuf>,
    default_ns: String,
    default_name: String,
    poll: Duration,
    tx: mpsc::Sender<Update>,
) {
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut spec_stamp = None;
        let mut ep_stamp = None;
        let mut first = true;
        loop {
            let forced = first;
            first = false;
            let s = stamp(&spec_path);
            if forced || s != spec_stamp {
                spec_stamp = s;
                let state = match tokio::fs::read_to_string(&spec_path).await {
                    Ok(text) => parse_spec_file(&text, &default_ns, &default_name),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => SpecState::Missing,
                    Err(e) => SpecState::Unreadable {
                        generation: None,
                        error: format!("{}: {e}", spec_path.display()),
                    },
                };
                if tx.send(Update::Spec(state)).await.is_err() {
                    return;
                }
            }
            match &endpoints_path {
                Some(p) => {
                    let s = stamp(p);
                    if forced || s != ep_stamp {
                        ep_stamp = s;
                        let slices = match tokio::fs::read_to_string(p).await {
                            Ok(text) => match parse_endpoints_file(&text) {
                                Ok(s) => Some(s),
                                Err(e) => {
                                    tracing::warn!(file = %p.display(), error = %e, "cannot read endpoints; keeping the previous ones");
                                    None
                                }
                            },
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
                            Err(e) => {
                                tracing::warn!(file = %p.display(), error = %e, "cannot read endpoints; keeping the previous ones");
                                None
                            }
                        };
                        if let Some(slices) = slices
                            && tx.send(Update::Slices(slices)).await.is_err()
                        {
                            return;
                        }
                    }
                }
                None if forced && tx.send(Update::Slices(Vec::new())).await.is_err() => return,
                None => {}
            }
            let reload = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = reload => {
                    tracing::info!("SIGHUP: re-reading the local files");
                    first = true;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_file_as_object_or_bare_spec() {
        let obj = "apiVersion: portway.dev/v1alpha1\nkind: ServiceLoadBalancer\nmetadata:\n  name: web\n  namespace: shop\n  generation: 3\nspec:\n  pool: p\n  ports: [{protocol: TCP, port: 80, hostPort: 80}]\n  clusterIPs: [10.96.0.10]\n  ipFamilies: [IPv4]\n";
        match parse_spec_file(obj, "default", "x") {
            SpecState::Present(slb) => {
                assert_eq!(slb.metadata.name.as_deref(), Some("web"));
                assert_eq!(slb.metadata.namespace.as_deref(), Some("shop"));
                assert_eq!(slb.metadata.generation, Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
        let bare =
            "pool: p\nports: [{protocol: UDP, port: 53, hostPort: 53}]\nipFamilies: [IPv4]\n";
        match parse_spec_file(bare, "local", "dns") {
            SpecState::Present(slb) => {
                assert_eq!(slb.metadata.name.as_deref(), Some("dns"));
                assert_eq!(slb.metadata.namespace.as_deref(), Some("local"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let bad = "pool: p\nports: [{protocol: ICMP, port: 1, hostPort: 1}]\n";
        assert!(matches!(
            parse_spec_file(bad, "a", "b"),
            SpecState::Unreadable { .. }
        ));
        assert!(matches!(
            parse_spec_file(": : :\n\t-", "a", "b"),
            SpecState::Unreadable { .. }
        ));
    }

    #[test]
    fn endpoints_file_documents_and_lists() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4\nendpoints: [{addresses: [10.1.0.5], nodeName: n1}]\nports: [{name: http, port: 8080, protocol: TCP}]\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {name: b}\n  addressType: IPv6\n  endpoints: []\n";
        let slices = parse_endpoints_file(text).expect("parses");
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[1].address_type, "IPv6");
        assert!(parse_endpoints_file("addressType: [").is_err());
    }

    #[test]
    fn observed_folds_updates() {
        let mut o = Observed::default();
        assert!(!o.slices_synced);
        o.update(Update::Slices(Vec::new()));
        assert!(o.slices_synced);
        o.update(Update::Spec(SpecState::Missing));
        assert_eq!(o.spec, SpecState::Missing);
    }
}

/// The watch path against a mocked API server: list, then watch events, for both resources.
#[cfg(test)]
mod kube_tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    fn slb(generation: i64, protocol: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer",
            "metadata": {"name": "web", "namespace": "shop", "generation": generation,
                         "resourceVersion": format!("{generation}")},
            "spec": {"pool": "p", "ports": [{"protocol": protocol, "port": 80, "hostPort": 80}],
                     "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"]}
        })
    }

    fn slice() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop", "resourceVersion": "5",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-a"}],
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]
        })
    }

    fn ok(body: String) -> Response<Body> {
        Response::builder()
            .status(200)
            .body(Body::from(body.into_bytes()))
            .expect("response")
    }

    #[tokio::test]
    async fn watches_the_object_by_name_and_the_slices_by_label() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let (tx, mut rx) = mpsc::channel(16);
        kube_source(client, "shop", "web", tx);
        let server = tokio::spawn(async move {
            let mut parked = Vec::new();
            let mut watched = 0;
            while let Some((req, send)) = handle.next_request().await {
                let uri = req.uri().to_string();
                let watch = uri.contains("watch=true");
                if uri.contains("/serviceloadbalancers") {
                    assert!(
                        uri.starts_with(
                            "/apis/portway.dev/v1alpha1/namespaces/shop/serviceloadbalancers?"
                        ),
                        "{uri}"
                    );
                    assert!(uri.contains("fieldSelector=metadata.name%3Dweb"), "{uri}");
                    if !watch {
                        let list = serde_json::json!({"apiVersion": "portway.dev/v1alpha1",
                            "kind": "ServiceLoadBalancerList", "metadata": {"resourceVersion": "1"},
                            "items": [slb(1, "TCP")]});
                        send.send_response(ok(list.to_string()));
                    } else if watched == 0 {
                        watched += 1;
                        // A new generation, then one the agent cannot read.
                        let events = format!(
                            "{}\n{}\n",
                            serde_json::json!({"type": "MODIFIED", "object": slb(2, "TCP")}),
                            serde_json::json!({"type": "MODIFIED", "object": slb(3, "ICMP")})
                        );
                        send.send_response(ok(events));
                    } else {
                        parked.push(send);
                    }
                } else if uri.contains("/endpointslices") {
                    assert!(
                        uri.starts_with(
                            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?"
                        ),
                        "{uri}"
                    );
                    assert!(
                        uri.contains("labelSelector=kubernetes.io%2Fservice-name%3Dweb"),
                        "{uri}"
                    );
                    if !watch {
                        let list = serde_json::json!({"apiVersion": "discovery.k8s.io/v1",
                            "kind": "EndpointSliceList", "metadata": {"resourceVersion": "5"},
                            "items": [slice()]});
                        send.send_response(ok(list.to_string()));
                    } else {
                        parked.push(send);
                    }
                } else {
                    panic!("unexpected request {uri}");
                }
            }
        });
        let mut observed = Observed::default();
        let mut generations = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while generations.len() < 3 || !observed.slices_synced {
            let u = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("updates within 5 s")
                .expect("channel open");
            if let Update::Spec(s) = &u {
                generations.push(match s {
                    SpecState::Present(o) => (o.metadata.generation, "present"),
                    SpecState::Unreadable { generation, .. } => (*generation, "unreadable"),
                    other => panic!("unexpected {other:?}"),
                });
            }
            observed.update(u);
        }
        assert_eq!(
            generations,
            vec![
                (Some(1), "present"),
                (Some(2), "present"),
                (Some(3), "unreadable")
            ]
        );
        assert_eq!(observed.slices.len(), 1);
        assert_eq!(
            observed.slices[0].endpoints[0].addresses,
            vec!["10.244.1.5"]
        );
        server.abort();
    }
}
