//! The harness's own images, built offline with podman from static binaries into FROM-scratch
//! images (no registry is reachable): the pod sandbox (`pause`), the agnhost `netexec` stand-in
//! (the suite's backend, `PORTWAY_E2E_BACKEND_IMAGE`), the cluster DNS stand-in, and
//! kube-controller-manager (static, from `PORTWAY_K8S_BIN`). Loading an image into the nodes is
//! what `kind load docker-image` does: `podman save`, then `ctr images import` into each node's
//! containerd, namespace `k8s.io`.

use std::path::{Path, PathBuf};

use super::render::CONTAINERD_NAMESPACE;
use super::sys::{self, cmd, run};
use super::{ClusterError, Result};

/// The tag of every harness image (`imagePullPolicy` is `Never`/`IfNotPresent` everywhere).
pub const TAG: &str = "pwc1";
/// The musl target the test programs are built for (`e2e/testbins`).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// One harness image: its name, the binary it holds and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecipe {
    pub name: String,
    pub binary: PathBuf,
    pub dest: &'static str,
    /// `ENTRYPOINT` (the static pod of kube-controller-manager gives `command` instead).
    pub entrypoint: bool,
}

pub fn pause_image() -> String {
    format!("localhost/portway-cluster/pause:{TAG}")
}
/// The backend image for the suite on this cluster (`PORTWAY_E2E_BACKEND_IMAGE`).
pub fn backend_image() -> String {
    format!("localhost/portway-cluster/agnhost:{TAG}")
}
pub fn dns_image() -> String {
    format!("localhost/portway-cluster/dns:{TAG}")
}
pub fn controller_manager_image() -> String {
    format!("localhost/portway-cluster/kube-controller-manager:{TAG}")
}

/// The recipes, from the test programs' folder and the Kubernetes binaries' folder.
pub fn recipes(testbins: &Path, k8s_bin: &Path) -> Vec<ImageRecipe> {
    vec![
        ImageRecipe {
            name: pause_image(),
            binary: testbins.join("pause"),
            dest: "/pause",
            entrypoint: true,
        },
        ImageRecipe {
            name: backend_image(),
            binary: testbins.join("agnhost"),
            dest: "/agnhost",
            entrypoint: true,
        },
        ImageRecipe {
            name: dns_image(),
            binary: testbins.join("dns"),
            dest: "/dns",
            entrypoint: true,
        },
        ImageRecipe {
            name: controller_manager_image(),
            binary: k8s_bin.join("kube-controller-manager"),
            dest: "/usr/local/bin/kube-controller-manager",
            entrypoint: false,
        },
    ]
}

/// The Containerfile of a recipe (the binary is copied into the build context as `bin`).
pub fn containerfile(r: &ImageRecipe) -> String {
    let mut f = format!("FROM scratch\nCOPY bin {}\n", r.dest);
    if r.entrypoint {
        f += &format!("ENTRYPOINT [\"{}\"]\n", r.dest);
    }
    f
}

pub fn exists(image: &str) -> bool {
    sys::cmd("podman", ["image", "exists", image])
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds one image with podman (offline: FROM scratch, never pulls).
pub fn build(r: &ImageRecipe) -> Result<()> {
    if !r.binary.is_file() {
        return Err(ClusterError::State(format!(
            "{} is missing for image {} (build the test programs: cargo build --release --target {MUSL_TARGET} -p portway-e2e-testbins)",
            r.binary.display(),
            r.name
        )));
    }
    let ctx = tempfile::tempdir().map_err(ClusterError::io("temp folder for an image build"))?;
    std::fs::copy(&r.binary, ctx.path().join("bin"))
        .map_err(ClusterError::io(format!("copy {}", r.binary.display())))?;
    sys::write(&ctx.path().join("Containerfile"), containerfile(r))?;
    let file = ctx.path().join("Containerfile");
    run(cmd(
        "podman",
        ["build", "--pull=never", "-q", "-t", &r.name, "-f"],
    )
    .arg(&file)
    .arg(ctx.path()))?;
    Ok(())
}

/// `podman save` of an image into `dir`; the archive's path.
pub fn save(image: &str, dir: &Path) -> Result<PathBuf> {
    let file = dir.join(format!("{}.tar", image.replace(['/', ':'], "_")));
    run(cmd("podman", ["save", "--format", "docker-archive", "-o"])
        .arg(&file)
        .arg(image))?;
    Ok(file)
}

/// Imports an archive into a node's containerd (namespace `k8s.io`, where the CRI plugin looks).
pub fn import(socket: &Path, archive: &Path) -> Result<()> {
    run(cmd("ctr", ["--address"])
        .arg(socket)
        .args(["-n", CONTAINERD_NAMESPACE, "images", "import"])
        .arg(archive))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_are_from_scratch_with_their_binary() {
        let rs = recipes(Path::new("/tb"), Path::new("/k8s"));
        assert_eq!(rs.len(), 4);
        let pause = &rs[0];
        assert_eq!(
            containerfile(pause),
            "FROM scratch\nCOPY bin /pause\nENTRYPOINT [\"/pause\"]\n"
        );
        let kcm = &rs[3];
        assert_eq!(kcm.binary, Path::new("/k8s/kube-controller-manager"));
        assert!(!containerfile(kcm).contains("ENTRYPOINT"));
        assert!(
            rs.iter()
                .all(|r| r.name.starts_with("localhost/portway-cluster/")),
            "never a registry name"
        );
        assert_eq!(backend_image(), "localhost/portway-cluster/agnhost:pwc1");
    }
}
