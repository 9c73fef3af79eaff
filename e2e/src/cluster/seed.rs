//! Workload images for the registry mirror ([`super::registry`]): `portway-cluster images --seed`.
//!
//! No registry is reachable from this machine, so the images a workload names by their upstream
//! names (`kubectl create deployment web --image=nginx`) are **stand-ins built here from Debian's
//! packages**, not the upstream images: `docker.io/library/nginx:latest` is Debian's `nginx-light`
//! on `debian:bookworm-slim` (the local base image of `shared/tools/local-base-image.sh`, or
//! Docker Hub's where podman can pull), serving Debian's default page on port 80 as the
//! quickstart runs it. Even on a machine with internet the nodes could not pull the real ones:
//! the node network is closed by design; the mirror is how the harness gets workloads.
//!
//! The seed store (`/var/tmp/portway-cluster-seed`, or `PORTWAY_CLUSTER_SEED`) holds distribution's
//! storage with the stand-ins pushed under their mirror paths, made through a temporary
//! `docker-registry` on the loopback; `up` copies it into each new cluster's mirror (a copy is
//! instant, a push would compress the layers again on every `up`). Like podman's images it
//! outlives clusters; delete the folder to forget it.
//!
//! Pure: [`seeds`], [`containerfile`]. The rest runs podman and the registry.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::images::TAG;
use super::registry;
use super::sys::{self, cmd, run};
use super::{ClusterError, Result};
use crate::envtest::process::ManagedProcess;

/// The seed store's default folder.
pub const SEED_ROOT: &str = "/var/tmp/portway-cluster-seed";
/// The base image of the stand-ins (as `scripts/build-images.sh` uses it for Portway's images).
pub const BASE_IMAGE: &str = "debian:bookworm-slim";
/// How long the temporary registry may take to answer.
const REGISTRY_START: Duration = Duration::from_secs(20);

/// One stand-in: the upstream reference it answers to, podman's local name, what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// Fully qualified, as the kubelet asks for it (`docker.io/library/nginx:latest`).
    pub upstream: &'static str,
    /// Its name in podman's store (never an upstream name: podman's users keep the real ones).
    pub local: String,
    /// The Debian package it is made of.
    pub package: &'static str,
    /// What it does, for its label and the docs.
    pub description: &'static str,
    /// The `RUN`, `EXPOSE`, `STOPSIGNAL` and `CMD` lines after `FROM` and the labels.
    pub body: &'static str,
}

/// The stand-ins the mirror is seeded with.
pub fn seeds() -> Vec<Seed> {
    vec![Seed {
        upstream: "docker.io/library/nginx:latest",
        local: format!("localhost/portway-cluster/nginx:{TAG}"),
        package: "nginx-light",
        description: "portway-cluster stand-in for docker.io/library/nginx:latest (no registry is \
                      reachable): Debian's nginx-light serving its default page on port 80",
        body: "\
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light \\
 && rm -rf /var/lib/apt/lists/* \\
 && ln -sf /dev/stdout /var/log/nginx/access.log \\
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD [\"nginx\", \"-g\", \"daemon off;\"]
",
    }]
}

/// The Containerfile of a stand-in.
pub fn containerfile(seed: &Seed) -> String {
    format!(
        "# {desc}\nFROM {BASE_IMAGE}\nLABEL org.opencontainers.image.title=\"{up} (stand-in)\" \\\n      \
         org.opencontainers.image.description=\"{desc}\" \\\n      \
         dev.portway.cluster.package=\"{pkg}\"\n{body}",
        desc = seed.description,
        up = seed.upstream,
        pkg = seed.package,
        body = seed.body,
    )
}

/// The seed store (`PORTWAY_CLUSTER_SEED`, default [`SEED_ROOT`]).
pub fn store() -> PathBuf {
    std::env::var_os("PORTWAY_CLUSTER_SEED").map_or_else(|| PathBuf::from(SEED_ROOT), PathBuf::from)
}

/// The registry storage inside a seed store (what `up` copies into a cluster's mirror).
pub fn store_registry(store: &Path) -> PathBuf {
    store.join("registry")
}

/// The list of upstream references a seed store holds (one a line), written last.
pub fn store_index(store: &Path) -> PathBuf {
    store.join("images.txt")
}

/// The upstream references a seed store holds (empty when there is none).
pub fn stored(store: &Path) -> Vec<String> {
    std::fs::read_to_string(store_index(store))
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Builds a stand-in with podman from [`BASE_IMAGE`] (never pulled when it exists locally; apt
/// inside the build uses the base image's Debian mirror).
pub fn build(seed: &Seed) -> Result<()> {
    let ctx = tempfile::tempdir().map_err(ClusterError::io("temp folder for an image build"))?;
    let file = ctx.path().join("Containerfile");
    sys::write(&file, containerfile(seed))?;
    let pull = if super::images::exists(BASE_IMAGE) {
        "--pull=never"
    } else {
        "--pull=missing"
    };
    run(
        cmd("podman", ["build", pull, "-q", "-t", &seed.local, "-f"])
            .arg(&file)
            .arg(ctx.path()),
    )
    .map_err(|e| {
        ClusterError::State(format!(
            "building the stand-in {} from Debian's {} on {BASE_IMAGE} (offline, \
             shared/tools/local-base-image.sh makes the base): {e}",
            seed.upstream, seed.package
        ))
    })?;
    Ok(())
}

/// Starts a `docker-registry` child on the loopback with storage `root` (its config and log in
/// `work`); the child, stopped when dropped, and its address once it answers.
fn start_temp_registry(root: &Path, work: &Path) -> Result<(ManagedProcess, SocketAddr)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(ClusterError::io("find a free loopback port"))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = work.join("config.yml");
    let text = serde_json::to_string_pretty(&registry::config(root, addr))
        .map_err(|e| ClusterError::State(format!("registry config: {e}")))?;
    sys::write(&config, text)?;
    let mut process = ManagedProcess::spawn(
        registry::PROGRAM,
        Path::new(registry::PROGRAM),
        &["serve".to_owned(), config.display().to_string()],
        &work.join("registry.log"),
    )
    .map_err(ClusterError::io(format!("start {}", registry::PROGRAM)))?;
    let start = Instant::now();
    while !registry::answers(addr) {
        if start.elapsed() > REGISTRY_START || process.exit_status().is_some() {
            return Err(ClusterError::State(format!(
                "the temporary registry on {addr} did not answer: {}",
                process.log_tail(5).replace('\n', " | ")
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((process, addr))
}

/// Builds every stand-in and makes a new seed store with them (replacing the old one only when
/// everything worked); the upstream references it holds.
pub fn seed_store(store: &Path) -> Result<Vec<String>> {
    let all = seeds();
    for s in &all {
        eprintln!(
            "portway-cluster: building {} (stand-in for {}, Debian's {})",
            s.local, s.upstream, s.package
        );
        build(s)?;
    }
    let parent = store.parent().unwrap_or(Path::new("/"));
    sys::mkdir(parent)?;
    let fresh = tempfile::Builder::new()
        .prefix(".portway-cluster-seed.")
        .tempdir_in(parent)
        .map_err(ClusterError::io(format!(
            "temp folder in {}",
            parent.display()
        )))?;
    let root = store_registry(fresh.path());
    sys::mkdir(&root)?;
    let work = tempfile::tempdir().map_err(ClusterError::io("temp folder for a registry"))?;
    let mut index = String::new();
    {
        let (_registry, addr) = start_temp_registry(&root, work.path())?;
        for s in &all {
            let path = registry::mirror_path(s.upstream).ok_or_else(|| {
                ClusterError::State(format!("{} is not on a mirrored registry", s.upstream))
            })?;
            let dest = format!("{addr}/{path}");
            eprintln!("portway-cluster: pushing {} as {}", s.local, s.upstream);
            run(&mut cmd(
                "podman",
                ["push", "-q", "--tls-verify=false", &s.local, &dest],
            ))?;
            index += s.upstream;
            index.push('\n');
        }
    }
    sys::write(&store_index(fresh.path()), &index)?;
    if store.exists() {
        std::fs::remove_dir_all(store).map_err(ClusterError::io(format!(
            "remove the old {}",
            store.display()
        )))?;
    }
    let kept = fresh.keep();
    std::fs::rename(&kept, store).map_err(ClusterError::io(format!(
        "move {} to {}",
        kept.display(),
        store.display()
    )))?;
    Ok(all.iter().map(|s| s.upstream.to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_is_a_labelled_stand_in_from_debians_package() {
        let all = seeds();
        let nginx = all
            .iter()
            .find(|s| s.upstream == "docker.io/library/nginx:latest")
            .expect("nginx");
        assert_eq!(nginx.local, "localhost/portway-cluster/nginx:pwc1");
        assert_eq!(
            registry::mirror_path(nginx.upstream).as_deref(),
            Some("library/nginx:latest"),
            "where `image: nginx` is looked up in the mirror"
        );
        let f = containerfile(nginx);
        assert!(f.starts_with("# portway-cluster stand-in"), "{f}");
        assert!(f.contains("\nFROM debian:bookworm-slim\n"), "{f}");
        assert!(
            f.contains("stand-in for docker.io/library/nginx:latest"),
            "{f}"
        );
        assert!(
            f.contains("install -y -q --no-install-recommends nginx-light"),
            "{f}"
        );
        assert!(f.contains("\nEXPOSE 80\n"), "{f}");
        assert!(
            f.ends_with("CMD [\"nginx\", \"-g\", \"daemon off;\"]\n"),
            "{f}"
        );
        assert_eq!(f.matches("\nFROM ").count(), 1, "{f}");
        assert!(
            all.iter()
                .all(|s| s.local.starts_with("localhost/portway-cluster/")),
            "podman never stores a stand-in under an upstream name"
        );
    }

    #[test]
    fn a_store_lists_what_it_holds() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(stored(dir.path()).is_empty());
        std::fs::write(store_index(dir.path()), "docker.io/library/nginx:latest\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored(dir.path()), ["docker.io/library/nginx:latest"]);
        assert_eq!(store_registry(dir.path()), dir.path().join("registry"));
    }
}
