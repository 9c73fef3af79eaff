//! Building the images once per test process (scripts/build-images.sh with podman, for this
//! machine's architecture and, where its tools are installed, the other one), the podman and
//! process helpers the tests share, and removing the images when the last test is done.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use portway_e2e::envtest::workspace_root;

/// The cargo profile scripts/build-images.sh ships the images with.
pub const SHIPPED_PROFILE: &str = "image";

/// The cargo profile of the tested images' binaries: `image-test` (Cargo.toml: the same code
/// without the optimiser, so both architectures build in minutes), or the one named by
/// `PORTWAY_IMAGE_TEST_PROFILE`; with `image`, the shipped one, the sizes are checked against P9.
pub fn profile() -> String {
    std::env::var("PORTWAY_IMAGE_TEST_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "image-test".to_owned())
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"))
}

/// Runs a command that must succeed; its stdout.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn have(cmd: &str, version_flag: &str) -> bool {
    Command::new(cmd)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An image architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn host() -> Option<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Self::Amd64),
            "aarch64" => Some(Self::Arm64),
            _ => None,
        }
    }

    pub fn other(self) -> Self {
        match self {
            Self::Amd64 => Self::Arm64,
            Self::Arm64 => Self::Amd64,
        }
    }

    /// The OCI / Debian name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// `uname -m`.
    pub fn machine(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64",
            Self::Arm64 => "aarch64",
        }
    }

    pub fn rust_target(self) -> String {
        format!("{}-unknown-linux-musl", self.machine())
    }

    /// The user-mode emulator for binaries of this architecture.
    pub fn qemu(self) -> String {
        format!("qemu-{}-static", self.machine())
    }

    /// Whether the kernel runs this architecture's binaries through qemu by itself (binfmt_misc
    /// with the F flag, so inside containers too).
    pub fn binfmt(self) -> bool {
        std::fs::read_to_string(format!("/proc/sys/fs/binfmt_misc/qemu-{}", self.machine()))
            .is_ok_and(|s| {
                s.starts_with("enabled")
                    && s.lines()
                        .any(|l| l.strip_prefix("flags: ").is_some_and(|f| f.contains('F')))
            })
    }
}

/// Why this machine cannot run the image tests at all, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (podman networking in test namespaces needs root)".into());
    }
    if Arch::host().is_none() {
        return Some(format!(
            "no image for this machine's architecture ({})",
            std::env::consts::ARCH
        ));
    }
    if !have("podman", "--version") {
        return Some(
            "podman is not installed (run ../shared/tools/local-base-image.sh, as .ci/run does)"
                .into(),
        );
    }
    if !have("ip", "-V") {
        return Some("iproute2 (`ip`) is not installed".into());
    }
    if !run("podman", &["image", "exists", "debian:bookworm-slim"])
        .status
        .success()
    {
        return Some(
            "no local debian:bookworm-slim base image (run ../shared/tools/local-base-image.sh, as .ci/run does)"
                .into(),
        );
    }
    None
}

/// Why the other architecture's images cannot be built and tested here, if they cannot.
/// scripts/install-test-deps.sh installs everything this checks for.
pub fn cross_unavailable(arch: Arch) -> Option<String> {
    let target = arch.rust_target();
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if !Path::new(&sysroot)
        .join("lib/rustlib")
        .join(&target)
        .is_dir()
    {
        return Some(format!(
            "the Rust target {target} is not installed (rustup target add {target}; scripts/install-test-deps.sh does)"
        ));
    }
    let gcc = format!("{}-linux-gnu-gcc", arch.machine());
    if !have(&gcc, "--version") {
        return Some(format!(
            "{gcc} is not installed (apt-get install gcc-{}-linux-gnu; scripts/install-test-deps.sh does)",
            arch.machine().replace('_', "-")
        ));
    }
    if !Path::new(&format!(
        "/usr/{}-linux-gnu/include/stdint.h",
        arch.machine()
    ))
    .is_file()
    {
        return Some(format!(
            "the {} C library headers are not installed (apt-get install libc6-dev-{}-cross)",
            arch.name(),
            arch.name()
        ));
    }
    if !have(&arch.qemu(), "--version") {
        return Some(format!(
            "{} is not installed (apt-get install qemu-user-static; scripts/install-test-deps.sh does)",
            arch.qemu()
        ));
    }
    None
}

/// Both images of one architecture.
pub struct Built {
    pub arch: Arch,
    pub operator: String,
    pub agent: String,
    /// Where `portway` and `portway-agent` of this architecture are.
    pub bin_dir: PathBuf,
}

/// What the build produced.
pub struct Images {
    pub host: Built,
    /// The other architecture's images, or why they were not built.
    pub cross: Result<Built, String>,
    /// The multi-arch manifest lists (operator, agent), when both architectures were built.
    pub lists: Option<(String, String)>,
    pub profile: String,
    pub build_seconds: f64,
}

static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();

/// Unique per test process, so parallel runs never share names (prefix `pwi`).
pub fn uid() -> u32 {
    std::process::id() % 100_000
}

fn tag() -> String {
    format!("pwi-test-{}", uid())
}

/// Builds the images (once per process): `scripts/build-images.sh podman` for this machine's
/// architecture, plus the other one (as a multi-arch manifest list) when its tools are here.
pub fn images() -> &'static Result<Images, String> {
    IMAGES.get_or_init(|| {
        let host = Arch::host().ok_or("unsupported architecture")?;
        let other = host.other();
        let cross = cross_unavailable(other);
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // <target>/<profile>/deps/<test binary>
        let target_dir = exe
            .ancestors()
            .nth(3)
            .ok_or("cannot locate the target directory")?
            .to_path_buf();
        let profile = profile();
        let mut archs = vec![host];
        if cross.is_none() {
            archs.push(other);
        }
        let platforms: Vec<String> = archs
            .iter()
            .map(|a| format!("linux/{}", a.name()))
            .collect();
        let started = std::time::Instant::now();
        let out = Command::new("bash")
            .current_dir(workspace_root())
            .arg("scripts/build-images.sh")
            .arg("podman")
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("PORTWAY_CARGO_PROFILE", &profile)
            .env("PORTWAY_PLATFORMS", platforms.join(","))
            .env("PORTWAY_IMAGE_TAG", tag())
            .env_remove("PORTWAY_BIN_DIR")
            .output()
            .map_err(|e| format!("build-images.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/build-images.sh podman failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let build_seconds = started.elapsed().as_secs_f64();
        let multi = archs.len() > 1;
        let profile_dir = if profile == "dev" { "debug" } else { &profile };
        let built = |arch: Arch| {
            let t = if multi {
                format!("{}-{}", tag(), arch.name())
            } else {
                tag()
            };
            Built {
                arch,
                operator: format!("portway/operator:{t}"),
                agent: format!("portway/agent:{t}"),
                bin_dir: target_dir.join(arch.rust_target()).join(profile_dir),
            }
        };
        Ok(Images {
            host: built(host),
            cross: match cross {
                None => Ok(built(other)),
                Some(why) => Err(why),
            },
            lists: multi.then(|| {
                (
                    format!("portway/operator:{}", tag()),
                    format!("portway/agent:{}", tag()),
                )
            }),
            profile,
            build_seconds,
        })
    })
}

/// The images, or `None` after printing why the tests cannot run here.
pub fn images_or_skip(test: &str) -> Option<&'static Images> {
    if let Some(why) = unavailable() {
        portway_e2e::report::skip(test, &why);
        return None;
    }
    match images() {
        Ok(i) => Some(i),
        Err(e) => panic!("{test}: {e}"),
    }
}

/// How many tests use the images; the last one to finish removes them.
pub const IMAGE_TESTS: u32 = 5;
static FINISHED: Mutex<u32> = Mutex::new(0);

/// Held by each image test; counts it finished on drop (also when it panics).
pub struct Finished;

impl Drop for Finished {
    fn drop(&mut self) {
        let mut n = FINISHED.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        if *n == IMAGE_TESTS
            && let Some(Ok(i)) = IMAGES.get()
        {
            if let Some((op, agent)) = &i.lists {
                for list in [op, agent] {
                    let _ = run("podman", &["manifest", "rm", list]);
                }
            }
            let mut built = vec![&i.host];
            built.extend(i.cross.as_ref().ok());
            for b in built {
                for name in [&b.operator, &b.agent] {
                    let _ = run("podman", &["rmi", "-f", name, &format!("docker.io/{name}")]);
                }
            }
        }
    }
}

/// `podman run --rm <args>`.
pub fn podman_run(args: &[&str]) -> Output {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    run("podman", &all)
}

/// `podman run` of an image of `arch` on this machine: directly for the host's architecture and
/// where binfmt_misc runs the other one through qemu; otherwise with the static qemu mounted into
/// the container as its entrypoint, running `entrypoint`. `opts` go before the image.
pub fn run_arch(arch: Arch, image: &str, opts: &[&str], entrypoint: &str, args: &[&str]) -> Output {
    let platform = format!("--platform=linux/{}", arch.name());
    let mut all: Vec<String> = vec!["run".into(), "--rm".into(), platform];
    all.extend(opts.iter().map(|s| (*s).to_owned()));
    if Some(arch) == Arch::host() || arch.binfmt() {
        all.push(format!("--entrypoint={entrypoint}"));
        all.push(image.to_owned());
    } else {
        let qemu = which(&arch.qemu()).unwrap_or_else(|| PathBuf::from(arch.qemu()));
        all.push("-v".into());
        all.push(format!("{}:/qemu:ro", qemu.display()));
        all.push("--entrypoint=/qemu".into());
        all.push(image.to_owned());
        all.push(entrypoint.to_owned());
    }
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run("podman", &refs)
}

/// `program`'s path on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// One file of an image.
pub struct ImageFile {
    /// Absolute path in the image.
    pub path: String,
    pub size: u64,
    pub symlink: bool,
}

/// Every file and symlink of `image` (`podman image mount`, read-only), sorted by path.
pub fn image_files(image: &str) -> Vec<ImageFile> {
    let root = PathBuf::from(ok("podman", &["image", "mount", image]).trim());
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap_or(&path);
            files.push(ImageFile {
                path: format!("/{}", rel.display()),
                size: meta.len(),
                symlink: meta.file_type().is_symlink(),
            });
        }
    }
    let _ = run("podman", &["image", "unmount", image]);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The uncompressed size of `image` in MB (10^6 bytes), as `podman image inspect` reports it.
pub fn size_mb(image: &str) -> f64 {
    let bytes: f64 = ok(
        "podman",
        &["image", "inspect", "--format", "{{.Size}}", image],
    )
    .trim()
    .parse()
    .unwrap_or_else(|e| panic!("size of {image}: {e}"));
    bytes / 1e6
}
