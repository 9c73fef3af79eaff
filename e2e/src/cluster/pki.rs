//! The local cluster's certificates, made in-process with `rcgen` (ECDSA P-256): one CA, the API
//! server's serving certificate, a client certificate per identity (admin, controller manager,
//! scheduler, kube-proxy, each kubelet, the API server towards kubelets), kubelet serving
//! certificates, and the service-account signing key. Pure: returns file names and contents.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};

use super::spec::{CLUSTER_DOMAIN, ClusterSpec};
use crate::envtest::pki::{CertPair, issue, name as dn, self_signed_ca};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const APISERVER: &str = "apiserver";
pub const SA_KEY: &str = "sa.key";
pub const SA_PUB: &str = "sa.pub";
/// The API server's client certificate towards kubelets (logs, exec).
pub const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";

/// A client identity: file stem, user (CN) and group (O).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub stem: String,
    pub user: String,
    pub group: Option<String>,
}

impl Identity {
    fn new(stem: &str, user: &str, group: Option<&str>) -> Self {
        Self {
            stem: stem.to_owned(),
            user: user.to_owned(),
            group: group.map(str::to_owned),
        }
    }
}

/// Identity stems of the components (kubeconfig files are named after them).
pub const ADMIN: &str = "admin";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";
pub const PROXY: &str = "kube-proxy";

/// The stem of a kubelet's client certificate and kubeconfig.
pub fn kubelet_stem(node: &str) -> String {
    format!("kubelet-{node}")
}

/// The stem of a kubelet's serving certificate.
pub fn kubelet_serving_stem(node: &str) -> String {
    format!("kubelet-serving-{node}")
}

/// Every client identity of the cluster. Users and groups are the ones Kubernetes' bootstrap
/// RBAC policy and the Node authorizer know (`system:kube-controller-manager`,
/// `system:node:<name>` in `system:nodes`, ...).
pub fn identities(spec: &ClusterSpec) -> Vec<Identity> {
    let mut ids = vec![
        Identity::new(ADMIN, "portway-cluster-admin", Some("system:masters")),
        Identity::new(CONTROLLER_MANAGER, "system:kube-controller-manager", None),
        Identity::new(SCHEDULER, "system:kube-scheduler", None),
        Identity::new(PROXY, "system:kube-proxy", None),
        // kubeadm binds this user to system:kubelet-api-admin; system:masters is the short way.
        Identity::new(
            APISERVER_KUBELET_CLIENT,
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        ),
    ];
    for n in &spec.nodes {
        ids.push(Identity::new(
            &kubelet_stem(&n.name),
            &format!("system:node:{}", n.name),
            Some("system:nodes"),
        ));
    }
    ids
}

/// The names the API server's certificate is valid for.
pub fn apiserver_sans(spec: &ClusterSpec) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        format!("kubernetes.default.svc.{CLUSTER_DOMAIN}"),
    ];
    dns.push(spec.control_plane().name.clone());
    let mut ips: Vec<IpAddr> = spec.control_plane().ips.clone();
    ips.extend(spec.kubernetes_service_ips());
    ips.push(IpAddr::from([127, 0, 0, 1]));
    ips.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    (dns, ips)
}

/// Every file of the PKI folder: `(name, contents)`. Keys are PKCS#8 PEM.
pub fn generate(spec: &ClusterSpec) -> Result<Vec<(String, String)>, rcgen::Error> {
    let mut files = Vec::new();
    let ca = self_signed_ca(&format!("portway-cluster-ca-{}", spec.name))?;
    files.push((CA_KEY.to_owned(), ca.key().serialize_pem()));
    files.push((CA_CERT.to_owned(), ca.pem()));

    let (dns, ips) = apiserver_sans(spec);
    files.extend(serving(&ca, APISERVER, "kube-apiserver", dns, ips)?);
    for n in &spec.nodes {
        files.extend(serving(
            &ca,
            &kubelet_serving_stem(&n.name),
            &n.name,
            vec![n.name.clone()],
            n.ips.clone(),
        )?);
    }
    for id in identities(spec) {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&id.user, id.group.as_deref());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        files.extend(pair_files(&id.stem, issue(&params, &ca)?));
    }
    let sa = KeyPair::generate()?;
    files.push((SA_KEY.to_owned(), sa.serialize_pem()));
    files.push((SA_PUB.to_owned(), sa.public_key_pem()));
    Ok(files)
}

fn serving(
    ca: &CertifiedIssuer<'static, KeyPair>,
    stem: &str,
    cn: &str,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
) -> Result<[(String, String); 2], rcgen::Error> {
    let mut params = CertificateParams::new(dns)?;
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    params.distinguished_name = dn(cn, None);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(pair_files(stem, issue(&params, ca)?))
}

/// The certificate file of an identity or serving stem (`<stem>.crt`).
pub fn cert_file(stem: &str) -> String {
    format!("{stem}.crt")
}

/// The key file of an identity or serving stem (`<stem>.key`).
pub fn key_file(stem: &str) -> String {
    format!("{stem}.key")
}

fn pair_files(stem: &str, pair: CertPair) -> [(String, String); 2] {
    [
        (cert_file(stem), pair.cert_pem),
        (key_file(stem), pair.key_pem),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::tests_support::spec;

    #[test]
    fn every_component_gets_its_identity_and_files() {
        let s = spec(crate::kind::Variant::DualStack);
        let ids = identities(&s);
        let user = |stem: &str| {
            ids.iter()
                .find(|i| i.stem == stem)
                .map(|i| (i.user.as_str(), i.group.as_deref()))
        };
        assert_eq!(
            user(ADMIN),
            Some(("portway-cluster-admin", Some("system:masters")))
        );
        assert_eq!(
            user(CONTROLLER_MANAGER),
            Some(("system:kube-controller-manager", None))
        );
        assert_eq!(
            user("kubelet-t-worker2"),
            Some(("system:node:t-worker2", Some("system:nodes"))),
            "the Node authorizer's user and group"
        );
        let files = generate(&s).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "ca.crt",
            "ca.key",
            "apiserver.crt",
            "apiserver.key",
            "sa.key",
            "sa.pub",
            "kube-proxy.crt",
            "kubelet-t-worker.key",
            "kubelet-serving-t-control-plane.crt",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for (name, pem) in &files {
            let kind = if name.ends_with(".crt") {
                "CERTIFICATE"
            } else if name == SA_PUB {
                "PUBLIC KEY"
            } else {
                "PRIVATE KEY"
            };
            assert!(
                pem.starts_with(&format!("-----BEGIN {kind}-----")),
                "{name}: {pem:.40}"
            );
        }
    }

    #[test]
    fn the_api_server_certificate_covers_node_and_service_addresses() {
        let s = spec(crate::kind::Variant::DualStack);
        let (dns, ips) = apiserver_sans(&s);
        assert!(dns.contains(&"kubernetes.default.svc.cluster.local".to_owned()));
        for ip in [
            "10.111.0.2",
            "fd00:10:111::2",
            "10.96.0.1",
            "fd00:10:96::1",
            "127.0.0.1",
        ] {
            assert!(
                ips.contains(&ip.parse().expect("ip")),
                "{ip} not in {ips:?}"
            );
        }
    }
}
