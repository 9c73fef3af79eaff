//! The cluster's registry mirror, the way kind's local-registry recipe and air-gapped clusters get
//! images to their nodes: Debian's `docker-registry` (distribution 2.8) as one more harness
//! process, in the root namespace, listening on the bridge's address only (`10.111.0.1:5001`, or
//! `[fd00:10:111::1]:5001` on IPv6), plain HTTP, its storage in the cluster's state folder
//! (`registry/data`, deleted by `down`). Every node's containerd has it as the mirror of
//! `docker.io` and of `registry.k8s.io` (under the path `registry.k8s.io/`), so `image: nginx`
//! resolves and pulls although nothing on the node network can reach outside this machine, with or
//! without internet. `up` fills it from the seed store of `portway-cluster images --seed`
//! ([`super::seed`]).
//!
//! Port 5001, not distribution's 5000: Debian's package enables a `docker-registry` service on
//! `:5000` (every address) where systemd runs it; kind's recipe uses 5001 as well.
//!
//! Pure: [`addr`], [`mirrors`], [`mirror_path`], [`config`], [`is_ok_response`]. The rest runs
//! tools or talks to the registry.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::spec::ClusterSpec;
use super::sys::{self, cmd, run};
use super::{ClusterError, Result};

/// The mirror's port on the bridge address.
pub const PORT: u16 = 5001;
/// The registry program (Debian's package `docker-registry`, distribution 2.8).
pub const PROGRAM: &str = "docker-registry";
/// The upstream registries the nodes' containerd mirrors, each with the path prefix under which
/// the mirror keeps its repositories: docker.io at the top (`library/nginx`), registry.k8s.io
/// under `registry.k8s.io/` (`registry.k8s.io/pause`), so the two never share a name.
pub const MIRRORED: [(&str, &str); 2] = [("docker.io", ""), ("registry.k8s.io", "registry.k8s.io")];

/// One `registry.mirrors` entry of containerd's CRI config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The upstream registry host, as containerd names it (`docker.io`).
    pub host: String,
    /// The mirror's URL for it (`http://10.111.0.1:5001`, with `/v2/<prefix>` when prefixed).
    pub endpoint: String,
}

/// Where the mirror listens: the bridge's address of the primary family, port [`PORT`].
pub fn addr(spec: &ClusterSpec) -> Result<SocketAddr> {
    spec.bridge_ips()
        .first()
        .map(|ip| SocketAddr::new(*ip, PORT))
        .ok_or_else(|| ClusterError::State("the node network has no bridge address".into()))
}

/// `http://<addr>` (IPv6 in brackets).
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The `registry.mirrors` entries for a mirror at `addr`.
pub fn mirrors(addr: SocketAddr) -> Vec<Mirror> {
    MIRRORED
        .iter()
        .map(|(host, prefix)| Mirror {
            host: (*host).to_owned(),
            endpoint: if prefix.is_empty() {
                base_url(addr)
            } else {
                // containerd 1.6 takes the endpoint's path as the API root ("/v2" when empty).
                format!("{}/v2/{prefix}", base_url(addr))
            },
        })
        .collect()
}

/// Where an upstream image lives in the mirror (`repository:tag`), from a fully qualified
/// reference (`docker.io/library/nginx:latest` → `library/nginx:latest`); `None` for a registry
/// the nodes do not mirror or a reference without a registry host.
pub fn mirror_path(upstream: &str) -> Option<String> {
    let (host, rest) = upstream.split_once('/')?;
    let (_, prefix) = MIRRORED.iter().find(|(h, _)| *h == host)?;
    if rest.is_empty() {
        return None;
    }
    Some(if prefix.is_empty() {
        rest.to_owned()
    } else {
        format!("{prefix}/{rest}")
    })
}

/// distribution's configuration (JSON is YAML): filesystem storage under `root`, plain HTTP on
/// `addr` only, no authentication, no storage health check (nothing to restart it).
pub fn config(root: &Path, addr: SocketAddr) -> Value {
    json!({
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "portway-cluster-registry"}},
        "storage": {
            "filesystem": {"rootdirectory": root},
            "maintenance": {"uploadpurging": {"enabled": false}},
        },
        "http": {"addr": addr.to_string()},
        "health": {"storagedriver": {"enabled": false}},
    })
}

/// The mirror's config file of a cluster.
pub fn config_path(spec: &ClusterSpec) -> PathBuf {
    spec.registry_dir().join("config.yml")
}

/// The mirror's storage folder of a cluster.
pub fn data_dir(spec: &ClusterSpec) -> PathBuf {
    spec.registry_dir().join("data")
}

/// Whether an HTTP response starts with a 200 status line.
pub fn is_ok_response(response: &str) -> bool {
    response
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("200")
}

/// Whether the registry at `addr` answers `GET /v2/` with 200 (the API version check).
pub fn answers(addr: SocketAddr) -> bool {
    let timeout = Duration::from_secs(2);
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap_or(0);
    is_ok_response(&String::from_utf8_lossy(&head[..n]))
}

/// Copies the seed store's registry storage into `data` (merging), when there is one; whether
/// there was.
pub fn fill_from(seed_registry: &Path, data: &Path) -> Result<bool> {
    sys::mkdir(data)?;
    if !seed_registry.is_dir() {
        return Ok(false);
    }
    let mut from = seed_registry.as_os_str().to_owned();
    from.push("/.");
    run(cmd("cp", ["-a", "--reflink=auto"]).arg(from).arg(data))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::tests_support::spec;
    use crate::kind::Variant;

    #[test]
    fn the_mirror_listens_on_the_bridge_only() {
        assert_eq!(
            addr(&spec(Variant::Ipv4)).ok(),
            "10.111.0.1:5001".parse().ok()
        );
        assert_eq!(
            addr(&spec(Variant::DualStack)).ok(),
            "10.111.0.1:5001".parse().ok()
        );
        let v6 = addr(&spec(Variant::Ipv6)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v6.to_string(), "[fd00:10:111::1]:5001");
        let c = config(Path::new("/state/t/registry/data"), v6);
        assert_eq!(c["http"]["addr"], "[fd00:10:111::1]:5001");
        assert_eq!(
            c["storage"]["filesystem"]["rootdirectory"],
            "/state/t/registry/data"
        );
        assert!(c["http"].get("tls").is_none(), "plain HTTP: {c}");
        assert!(c.get("auth").is_none(), "no authentication: {c}");
        assert_eq!(
            config_path(&spec(Variant::Ipv4)),
            Path::new("/state/t/registry/config.yml")
        );
    }

    #[test]
    fn docker_io_at_the_top_registry_k8s_io_under_its_name() {
        let m = mirrors("10.111.0.1:5001".parse().expect("addr"));
        assert_eq!(
            m,
            vec![
                Mirror {
                    host: "docker.io".into(),
                    endpoint: "http://10.111.0.1:5001".into()
                },
                Mirror {
                    host: "registry.k8s.io".into(),
                    endpoint: "http://10.111.0.1:5001/v2/registry.k8s.io".into()
                },
            ]
        );
        let v6 = mirrors("[fd00:10:111::1]:5001".parse().expect("addr"));
        assert_eq!(v6[0].endpoint, "http://[fd00:10:111::1]:5001");
    }

    #[test]
    fn upstream_references_map_into_the_mirror() {
        assert_eq!(
            mirror_path("docker.io/library/nginx:latest").as_deref(),
            Some("library/nginx:latest")
        );
        assert_eq!(
            mirror_path("registry.k8s.io/pause:3.10").as_deref(),
            Some("registry.k8s.io/pause:3.10")
        );
        assert_eq!(mirror_path("quay.io/x/y:1"), None, "not mirrored");
        assert_eq!(mirror_path("nginx"), None, "not fully qualified");
        assert_eq!(mirror_path("docker.io/"), None);
    }

    #[test]
    fn only_a_200_is_ready() {
        assert!(is_ok_response(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(!is_ok_response("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(!is_ok_response(""));
    }
}
