//! The container images, built with scripts/build-images.sh (podman; static musl binaries of the
//! cargo profile `image-test`, or `PORTWAY_IMAGE_TEST_PROFILE`, e.g. `image`, the shipped one) and
//! run for real:
//! - the operator image runs `--help`, `plan examples/` and `migrate examples/k3s/` on a read-only
//!   root filesystem as uid 65532 (shown by files only that uid can read), and has every flag the
//!   Helm chart passes;
//! - the agent image, run with `--cap-drop=ALL --cap-add=NET_ADMIN` (no privileged mode) in a
//!   "pod" network namespace from a local spec file, forwards real TCP and UDP traffic from a
//!   client namespace to a backend namespace, and removes its rules on SIGTERM; with
//!   iptables-legacy it also needs NET_RAW (checked both ways);
//! - both images hold only what they need (no shell, no package manager; the agent's iptables
//!   tools and every library they load) and their sizes are printed as P9;
//! - the other architecture (arm64 on amd64), where scripts/install-test-deps.sh installed its
//!   tools: both images are built for it into multi-arch manifest lists; under qemu its operator
//!   image plans the examples exactly as the native one, its agent image's iptables tools and
//!   extensions load, and its agent binary renders the same rules as the native one and forwards
//!   real TCP and UDP in the netns topology (with this machine's iptables: the image's own
//!   iptables cannot program the kernel under qemu-user, which has no netfilter sockets).
//!
//! Skips with a printed reason when not root, when podman or `ip` is missing, or when the local
//! base image (../shared/tools/local-base-image.sh, run by .ci/run) is absent; the other
//! architecture's tests skip with the reason when its tools are missing.

#[path = "images/agent.rs"]
mod agent;
#[path = "images/build.rs"]
mod build;
#[path = "images/netns.rs"]
mod netns;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use portway_e2e::envtest::workspace_root;
use portway_e2e::report;

use agent::{AgentContainer, QemuAgent};
use build::{Built, Finished, image_files, images_or_skip, ok, podman_run, run, run_arch};
use netns::{Backend, POD_IP_BACKEND_SIDE, Topology, portway_rules, service_addrs, wait_until};

/// Image size goal of P9, MB (10^6 bytes).
const SIZE_GOAL_MB: f64 = 20.0;

#[test]
fn operator_image_runs_as_non_root_and_plans_the_examples() {
    const TEST: &str = "operator_image_runs_as_non_root_and_plans_the_examples";
    let _finished = Finished;
    let Some(images) = images_or_skip(TEST) else {
        return;
    };
    let img = images.host.operator.as_str();
    let user = ok(
        "podman",
        &["image", "inspect", "--format", "{{.Config.User}}", img],
    );
    assert_eq!(user.trim(), "65532:65532");

    // Its uid, without `id` in the image: it reads a file only uid 65532 may read, and cannot
    // read one only root may (every capability dropped, so no CAP_DAC_OVERRIDE either).
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let examples: Vec<std::path::PathBuf> = std::fs::read_dir(workspace_root().join("examples"))
        .expect("examples/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    for (sub, owner) in [("mine", 65532), ("roots", 0)] {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).expect("mkdir");
        for example in &examples {
            let f = d.join(example.file_name().expect("file name"));
            std::fs::copy(example, &f).expect("copy");
            std::os::unix::fs::chown(&f, Some(owner), Some(owner)).expect("chown");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        }
    }
    let volume = format!("{}:/in:ro", dir.path().display());
    let ro = ["--read-only", "--cap-drop=ALL", "-v", volume.as_str()];
    let own = podman_run(&[&ro[..], &[img, "plan", "/in/mine/"]].concat());
    assert!(
        own.status.success(),
        "uid 65532 cannot read its own file: {}",
        String::from_utf8_lossy(&own.stderr)
    );
    let roots = podman_run(&[&ro[..], &[img, "plan", "/in/roots/"]].concat());
    assert!(
        !roots.status.success()
            && String::from_utf8_lossy(&roots.stderr).contains("ermission denied"),
        "read a file only root may read: {}",
        String::from_utf8_lossy(&roots.stderr)
    );

    let help = podman_run(&["--read-only", "--cap-drop=ALL", img, "--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for cmd in ["run", "plan", "migrate", "crd"] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }

    let plan = podman_run(&["--read-only", "--cap-drop=ALL", img, "plan", "examples/"]);
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(stdout.contains("kind: DaemonSet"), "{stdout}");
    assert!(stdout.contains("kind: ServiceLoadBalancer"), "{stdout}");

    let migrate = podman_run(&[
        "--read-only",
        "--cap-drop=ALL",
        img,
        "migrate",
        "examples/k3s",
    ]);
    assert!(migrate.status.success());
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("kind: LoadBalancerPool"));

    // The built binary has every flag the Helm chart passes to `portway run`.
    let run_help = podman_run(&["--read-only", img, "run", "--help"]);
    let run_help = String::from_utf8_lossy(&run_help.stdout).into_owned();
    match chart_operator_args() {
        Some(args) => {
            for flag in args {
                assert!(
                    run_help.contains(&format!("{flag} "))
                        || run_help.contains(&format!("{flag}\n")),
                    "the image's `portway run --help` has no {flag}"
                );
            }
        }
        None => report::line(&format!(
            "{TEST}: helm not found; chart flags not compared with the image's binary"
        )),
    }
}

/// `--flag` names the chart passes to `portway run` (everything switched on), if helm exists.
fn chart_operator_args() -> Option<Vec<String>> {
    let helm = build::which("helm").or_else(|| {
        let p = workspace_root().join("target/tools/bin/helm");
        p.is_file().then_some(p)
    })?;
    let out = Command::new(helm)
        .args([
            "template",
            "portway",
            &workspace_root()
                .join("charts/portway")
                .display()
                .to_string(),
            "--show-only",
            "templates/deployment.yaml",
            "--set",
            "clusterCIDR.default.enabled=true,clusterCIDR.default.ipv4=10.244.0.0/16",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).ok()?;
    let args = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")?
        .pointer("/spec/template/spec/containers/0/args")?
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect();
    Some(args)
}

#[test]
fn agent_image_forwards_with_net_admin_only_and_cleans_up() {
    const TEST: &str = "agent_image_forwards_with_net_admin_only_and_cleans_up";
    let _finished = Finished;
    let Some(images) = images_or_skip(TEST) else {
        return;
    };
    let spec_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(spec_dir.path().join("web.yaml"), netns::spec_yaml()).expect("spec");
    let (tcp_addr, udp_addr) = service_addrs();

    // (iptables variant, capabilities, expected to forward)
    let runs: [(&str, &[&str], bool); 3] = [
        ("auto", &["NET_ADMIN"], true),
        ("legacy", &["NET_ADMIN", "NET_RAW"], true),
        ("legacy", &["NET_ADMIN"], false),
    ];
    for (i, (variant, caps, forwards)) in runs.into_iter().enumerate() {
        let what = format!("--iptables {variant} with {caps:?}");
        let topo = Topology::new(&i.to_string());
        let _backend = Backend::start(&topo.backend);
        // Without the agent nothing listens on the pod's address.
        assert!(
            netns::tcp_from(&topo.client, tcp_addr).is_err(),
            "{what}: port open before the agent"
        );

        let agent =
            AgentContainer::start(&images.host.agent, &topo, spec_dir.path(), caps, variant);
        let ready = wait_until(Duration::from_secs(20), || agent.ready());
        if !forwards {
            assert!(
                !ready,
                "{what}: ready although iptables-legacy has no NET_RAW"
            );
            assert!(
                netns::tcp_from(&topo.client, tcp_addr).is_err(),
                "{what}: forwarded"
            );
            report::line(&format!(
                "{TEST}: {what}: not ready, nothing forwarded (iptables-legacy needs NET_RAW)"
            ));
            continue;
        }
        assert!(
            ready,
            "{what}: agent not ready in 20 s; logs:\n{}",
            agent.logs()
        );
        let rules =
            assert_forwards_then_cleans_up(&what, &topo, variant, tcp_addr, udp_addr, || {
                (agent.stop(), agent.logs())
            });
        report::line(&format!(
            "{TEST}: {what}: TCP and UDP forwarded, {rules} rules, none left after SIGTERM"
        ));
    }
}

/// TCP and UDP through the agent reach the backend, masqueraded (Pod dataplane); `stop` (SIGTERM)
/// exits cleanly and leaves no Portway rule in either variant. Returns how many rules there were.
fn assert_forwards_then_cleans_up(
    what: &str,
    topo: &Topology,
    variant: &str,
    tcp_addr: std::net::SocketAddr,
    udp_addr: std::net::SocketAddr,
    mut stop: impl FnMut() -> (bool, String),
) -> usize {
    let expected = format!("backend saw {POD_IP_BACKEND_SIDE}");
    let answer = netns::tcp_from(&topo.client, tcp_addr)
        .unwrap_or_else(|e| panic!("{what}: TCP: {e}; logs:\n{}", stop().1));
    assert_eq!(answer, expected, "{what}");
    let answer = netns::udp_from(&topo.client, udp_addr)
        .unwrap_or_else(|e| panic!("{what}: UDP: {e}; logs:\n{}", stop().1));
    assert_eq!(answer, expected, "{what}");
    let save = if variant == "legacy" {
        "iptables-legacy-save"
    } else {
        "iptables-nft-save"
    };
    let rules = portway_rules(&topo.pod, save);
    assert!(!rules.is_empty(), "{what}: no PORTWAY rules in {save}");
    let (clean, logs) = stop();
    assert!(
        clean,
        "{what}: the agent did not exit cleanly on SIGTERM:\n{logs}"
    );
    for save in ["iptables-nft-save", "iptables-legacy-save"] {
        let left = portway_rules(&topo.pod, save);
        assert!(left.is_empty(), "{what}: left behind in {save}: {left:?}");
    }
    assert!(
        netns::tcp_from(&topo.client, tcp_addr).is_err(),
        "{what}: still forwarding after stop"
    );
    rules.len()
}

#[test]
fn images_are_small_and_hold_only_what_they_need() {
    const TEST: &str = "images_are_small_and_hold_only_what_they_need";
    let _finished = Finished;
    let Some(images) = images_or_skip(TEST) else {
        return;
    };
    let mut built = vec![&images.host];
    built.extend(images.cross.as_ref().ok());
    let shipped = images.profile == build::SHIPPED_PROFILE;
    for b in built {
        check_contents(b);
        check_iptables_tools(b);
        let (op, agent) = (build::size_mb(&b.operator), build::size_mb(&b.agent));
        // The exact P9 names are this machine's architecture's; the other one's carry a suffix.
        let suffix = if b.arch == images.host.arch {
            String::new()
        } else {
            format!("_{}", b.arch.name())
        };
        if shipped {
            report::line(&format!(
                "P9 agent_image_mb{suffix}={agent:.1} (goal <= {SIZE_GOAL_MB})"
            ));
            report::line(&format!(
                "P9 operator_image_mb{suffix}={op:.1} (goal <= {SIZE_GOAL_MB})"
            ));
            assert!(
                agent <= SIZE_GOAL_MB && op <= SIZE_GOAL_MB,
                "{} images over {SIZE_GOAL_MB} MB: agent {agent:.1}, operator {op:.1}",
                b.arch.name()
            );
        } else {
            for name in ["agent", "operator"] {
                report::line(&format!(
                    "P9 {name}_image_mb{suffix}=unmeasured (goal <= {SIZE_GOAL_MB}): these images hold cargo profile {} binaries; PORTWAY_IMAGE_TEST_PROFILE=image builds the shipped ones",
                    images.profile
                ));
            }
            report::line(&format!(
                "{TEST}: {} images of profile {}: agent {agent:.1} MB, operator {op:.1} MB",
                b.arch.name(),
                images.profile
            ));
        }
    }
    report::line(&format!(
        "{TEST}: images built in {:.0} s (profile {}, {})",
        images.build_seconds,
        images.profile,
        match &images.cross {
            Ok(c) => format!("{} and {}", images.host.arch.name(), c.arch.name()),
            Err(_) => images.host.arch.name().to_owned(),
        }
    ));
}

/// Every file of both images is one the design names (docs/design-packaging.md); nothing to run
/// but Portway's binaries and the iptables tools.
fn check_contents(b: &Built) {
    let triplet = format!("{}-linux-gnu", b.arch.machine());
    let operator = image_files(&b.operator);
    let stray: Vec<&str> = operator
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| {
            *p != "/usr/local/bin/portway" && !p.starts_with("/usr/share/portway/examples/")
        })
        .collect();
    assert!(
        stray.is_empty(),
        "operator image ({}) holds {stray:?}",
        b.arch.name()
    );
    assert!(
        operator
            .iter()
            .any(|f| f.path == "/usr/local/bin/portway" && !f.symlink),
        "no /usr/local/bin/portway"
    );

    let agent = image_files(&b.agent);
    let allowed = |p: &str| {
        p == "/usr/local/bin/portway-agent"
            || p.starts_with("/usr/sbin/")
            || p.starts_with(&format!("/usr/lib/{triplet}/"))
            || p.starts_with(&format!("/lib/{triplet}/"))
            || p == "/lib64/ld-linux-x86-64.so.2"
            || p == "/lib/ld-linux-aarch64.so.1"
            || p.starts_with("/usr/share/doc/")
    };
    let stray: Vec<&str> = agent
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| !allowed(p))
        .collect();
    assert!(
        stray.is_empty(),
        "agent image ({}) holds {stray:?}",
        b.arch.name()
    );
    let sbin: Vec<&str> = agent
        .iter()
        .filter_map(|f| f.path.strip_prefix("/usr/sbin/"))
        .collect();
    let mut expected = vec![
        "xtables-legacy-multi".to_owned(),
        "xtables-nft-multi".to_owned(),
    ];
    for family in ["iptables", "ip6tables"] {
        for variant in ["legacy", "nft"] {
            for tool in ["", "-save", "-restore"] {
                expected.push(format!("{family}-{variant}{tool}"));
            }
        }
    }
    expected.sort();
    assert_eq!(
        sbin,
        expected,
        "agent image's /usr/sbin ({})",
        b.arch.name()
    );
    let bytes = |files: &[build::ImageFile]| files.iter().map(|f| f.size).sum::<u64>() as f64 / 1e6;
    let xtables = agent
        .iter()
        .filter(|f| f.path.contains("/xtables/"))
        .count();
    report::line(&format!(
        "{} images: operator {} files {:.1} MB; agent {} files {:.1} MB ({xtables} iptables extensions); no shell, no package manager",
        b.arch.name(),
        operator.len(),
        bytes(&operator),
        agent.len(),
        bytes(&agent),
    ));
}

/// In the agent image of `b`'s architecture (under qemu for the other one): the agent starts,
/// and every iptables tool it runs starts and loads the extensions kube-proxy's and Portway's
/// rules use (so the loader, libc and every library are in the image); no shell.
fn check_iptables_tools(b: &Built) {
    let arch = b.arch;
    let version = run_arch(
        arch,
        &b.agent,
        &[],
        "/usr/local/bin/portway-agent",
        &["--version"],
    );
    assert!(
        version.status.success(),
        "{}: portway-agent --version: {}",
        arch.name(),
        String::from_utf8_lossy(&version.stderr)
    );
    for family in ["iptables", "ip6tables"] {
        for variant in ["legacy", "nft"] {
            for tool in ["-save", "-restore"] {
                let bin = format!("/usr/sbin/{family}-{variant}{tool}");
                let out = run_arch(arch, &b.agent, &[], &bin, &["--version"]);
                let text = String::from_utf8_lossy(&out.stdout);
                let mode = if variant == "nft" {
                    "nf_tables"
                } else {
                    "legacy"
                };
                assert!(
                    out.status.success() && text.contains(mode),
                    "{}: {bin} --version: {text}{}",
                    arch.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let extensions = [
        "-p",
        "tcp",
        "-m",
        "comment",
        "-m",
        "conntrack",
        "-m",
        "statistic",
        "-m",
        "mark",
        "-m",
        "addrtype",
        "-m",
        "multiport",
        "-m",
        "set",
        "-j",
        "DNAT",
        "--help",
    ];
    // Both variants load the same extension files; iptables-nft opens its netlink socket before
    // it parses options, which qemu-user refuses, so the legacy tool loads them here.
    let bin = "/usr/sbin/iptables-legacy";
    let out = run_arch(arch, &b.agent, &[], bin, &extensions);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("statistic match options"),
        "{}: {bin} cannot load its extensions: {}",
        arch.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    for image in [&b.agent, &b.operator] {
        let sh = run_arch(arch, image, &[], "/bin/sh", &["-c", "true"]);
        assert!(!sh.status.success(), "{image} has a shell");
    }
}

#[test]
fn cross_arch_images_form_a_manifest_list_and_run_under_qemu() {
    const TEST: &str = "cross_arch_images_form_a_manifest_list_and_run_under_qemu";
    let _finished = Finished;
    let Some(images) = images_or_skip(TEST) else {
        return;
    };
    let cross = match &images.cross {
        Ok(c) => c,
        Err(why) => return report::skip(TEST, why),
    };
    let (op_list, agent_list) = images.lists.as_ref().expect("lists with two architectures");
    for (list, per_arch) in [
        (op_list, [&images.host.operator, &cross.operator]),
        (agent_list, [&images.host.agent, &cross.agent]),
    ] {
        let manifest: serde_json::Value =
            serde_json::from_str(&ok("podman", &["manifest", "inspect", list])).expect("json");
        let mut archs: Vec<String> = manifest["manifests"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|e| e.pointer("/platform/architecture")?.as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        archs.sort();
        assert_eq!(archs, ["amd64", "arm64"], "{list}: {manifest}");
        for (image, want) in per_arch.into_iter().zip([images.host.arch, cross.arch]) {
            let arch = ok(
                "podman",
                &["image", "inspect", "--format", "{{.Architecture}}", image],
            );
            assert_eq!(arch.trim(), want.name(), "{image}");
        }
    }

    // The other architecture's operator plans the examples exactly as this one's.
    let ro = ["--read-only", "--cap-drop=ALL"];
    let native = run_arch(
        images.host.arch,
        &images.host.operator,
        &ro,
        "/usr/local/bin/portway",
        &["plan", "examples/"],
    );
    let emulated = run_arch(
        cross.arch,
        &cross.operator,
        &ro,
        "/usr/local/bin/portway",
        &["plan", "examples/"],
    );
    assert!(
        emulated.status.success(),
        "{} operator image: plan examples/ failed: {}",
        cross.arch.name(),
        String::from_utf8_lossy(&emulated.stderr)
    );
    assert!(native.status.success() && !native.stdout.is_empty());
    assert!(
        native.stdout == emulated.stdout,
        "plan examples/ differs between {} and {}",
        images.host.arch.name(),
        cross.arch.name()
    );

    // Why the other architecture's agent image is not run against the kernel here: its iptables
    // run under qemu-user, which refuses netfilter netlink sockets and the legacy tables'
    // socket options. Reported, not asserted: a later qemu may support them.
    let tried = run_arch(
        cross.arch,
        &cross.agent,
        &["--cap-drop=ALL", "--cap-add=NET_ADMIN"],
        "/usr/sbin/iptables-nft-save",
        &[],
    );
    report::line(&format!(
        "{TEST}: {} operator image planned examples/ like {} ({} bytes) under qemu ({}); its agent image's iptables tools and extensions load; iptables-nft-save in it under qemu-user: exit {:?}, {}",
        cross.arch.name(),
        images.host.arch.name(),
        native.stdout.len(),
        if cross.arch.binfmt() {
            "binfmt_misc"
        } else {
            "qemu as the entrypoint"
        },
        tried.status.code(),
        String::from_utf8_lossy(&tried.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .trim()
    ));
}

/// Inputs of `portway-agent rules`: (name, spec, endpoints, local addresses, host IPs).
fn rule_cases() -> Vec<(
    &'static str,
    String,
    Option<String>,
    &'static str,
    &'static str,
)> {
    let slices = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.5], nodeName: node, conditions: {ready: true}}
- {addresses: [10.244.2.7], nodeName: other, conditions: {ready: true}}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints:
- {addresses: ['fd00:244::5'], nodeName: node, conditions: {ready: true}}
ports: [{name: http, port: 8080, protocol: TCP}]
";
    vec![
        (
            "pod-cluster-v4",
            netns::spec_yaml(),
            None,
            "10.251.1.1,10.251.2.1",
            "192.0.2.10",
        ),
        (
            "host-local-dual-stack-source-ranges",
            "pool: p
dataplane: Host
externalTrafficPolicy: Local
clusterIPs: [10.96.0.10, 'fd00:96::10']
ipFamilies: [IPv4, IPv6]
sourceRanges: [192.0.2.0/24, '2001:db8::/32']
ports:
- {name: http, protocol: TCP, port: 80, hostPort: 80}
- {name: dns, protocol: UDP, port: 53, hostPort: 53}
"
            .to_owned(),
            Some(slices.to_owned()),
            "192.0.2.10,2001:db8::10",
            "192.0.2.10,2001:db8::10",
        ),
        (
            "pod-local-v6-sctp",
            "pool: p
dataplane: Pod
externalTrafficPolicy: Local
clusterIPs: ['fd00:96::20']
ipFamilies: [IPv6]
ports:
- {name: sig, protocol: SCTP, port: 3868, hostPort: 3868, nodePort: 31868}
"
            .to_owned(),
            None,
            "fd00:1::5",
            "2001:db8::10",
        ),
    ]
}

#[test]
fn cross_arch_agent_binary_renders_the_same_rules_and_forwards_under_qemu() {
    const TEST: &str = "cross_arch_agent_binary_renders_the_same_rules_and_forwards_under_qemu";
    let _finished = Finished;
    let Some(images) = images_or_skip(TEST) else {
        return;
    };
    let cross = match &images.cross {
        Ok(c) => c,
        Err(why) => return report::skip(TEST, why),
    };
    let native = images.host.bin_dir.join("portway-agent");
    let emulated = cross.bin_dir.join("portway-agent");

    // Rule rendering: byte-identical output of `rules` on both architectures.
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = rule_cases();
    for (name, spec, slices, local, host) in &cases {
        let spec_path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&spec_path, spec).expect("spec");
        let mut args: Vec<String> = vec![
            "rules".into(),
            "--spec-file".into(),
            spec_path.display().to_string(),
            "--service".into(),
            "web".into(),
            "--node".into(),
            "node".into(),
            "--local-addresses".into(),
            (*local).into(),
            "--host-ips".into(),
            (*host).into(),
        ];
        if let Some(slices) = slices {
            let p = dir.path().join(format!("{name}-endpoints.yaml"));
            std::fs::write(&p, slices).expect("endpoints");
            args.extend(["--endpoints-file".into(), p.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let here = run(&native.display().to_string(), &args);
        let qemu_args: Vec<&str> = std::iter::once(emulated.to_str().expect("utf-8 path"))
            .chain(args.iter().copied())
            .collect();
        let there = run(&cross.arch.qemu(), &qemu_args);
        assert!(
            here.status.success() && here.stdout.len() > 100,
            "{name}: {}",
            String::from_utf8_lossy(&here.stderr)
        );
        assert!(
            there.status.success(),
            "{name} under {}: {}",
            cross.arch.qemu(),
            String::from_utf8_lossy(&there.stderr)
        );
        assert!(
            here.stdout == there.stdout,
            "{name}: rules differ between {} and {}:\n{}\n---\n{}",
            images.host.arch.name(),
            cross.arch.name(),
            String::from_utf8_lossy(&here.stdout),
            String::from_utf8_lossy(&there.stdout)
        );
    }

    // Real forwarding in network namespaces, the agent under qemu-user.
    let spec = dir.path().join("web.yaml");
    std::fs::write(&spec, netns::spec_yaml()).expect("spec");
    let (tcp_addr, udp_addr) = service_addrs();
    let topo = Topology::new("q");
    let _backend = Backend::start(&topo.backend);
    let mut agent = QemuAgent::start(cross.arch, &emulated, &topo, &spec);
    let ready = wait_until(Duration::from_secs(60), || agent.ready());
    assert!(
        ready,
        "{} agent under qemu not ready in 60 s; logs:\n{}",
        cross.arch.name(),
        agent.logs()
    );
    let variant = if agent.logs().contains("iptables=legacy") {
        "legacy"
    } else {
        "nft"
    };
    let what = format!("{} agent under {}", cross.arch.name(), cross.arch.qemu());
    let rules = assert_forwards_then_cleans_up(&what, &topo, variant, tcp_addr, udp_addr, || {
        (agent.stop(), agent.logs())
    });
    report::line(&format!(
        "{TEST}: {} rule sets identical on {} and {}; {what}: TCP and UDP forwarded with iptables-{variant}, {rules} rules, none left after SIGTERM",
        cases.len(),
        images.host.arch.name(),
        cross.arch.name()
    ));
}
