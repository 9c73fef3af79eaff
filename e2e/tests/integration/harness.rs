//! The harness itself: a failing test leaves no process and no file behind; the kinds of
//! clients authenticate as what they claim.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use portway_e2e::envtest::{ADMIN_USER, Assets, process};
use portway_e2e::{TestEnv, report};

#[test]
fn failing_test_leaves_no_processes_or_files() {
    let Some(_) = Assets::from_env().expect("assets") else {
        report::skip(
            "failing_test_leaves_no_processes_or_files",
            "KUBEBUILDER_ASSETS is not set; see docs/testing.md",
        );
        return;
    };
    // Run a "test" that starts an environment and panics, the way libtest runs one: the panic
    // unwinds through the TestEnv. Check on this thread (which stays alive, so the children's
    // parent-death signal cannot be what stops them) that the Drop did the clean-up.
    let mut seen: Option<([u32; 2], PathBuf)> = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let env = TestEnv::start_or_skip("deliberately_failing_test")
                .await
                .expect("assets are set");
            seen = Some((env.pids(), env.dir().expect("dir").to_owned()));
            assert!(env.pids().iter().all(|pid| process::is_alive(*pid)));
            panic!("deliberate failure inside a test holding a TestEnv");
        })
    }));
    assert!(outcome.is_err(), "the inner test was meant to fail");
    let (pids, dir) = seen.expect("the environment started");
    for pid in pids {
        assert!(
            !process::is_alive(pid),
            "process {pid} survived the failing test"
        );
        // Nothing else is left in its process group either.
        let group = std::process::Command::new("pgrep")
            .args(["-g", &pid.to_string()])
            .output();
        if let Ok(out) = group {
            assert!(
                String::from_utf8_lossy(&out.stdout).trim().is_empty(),
                "process group {pid} still has members: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
    report::line(&format!(
        "harness: failing test cleaned up (pids {pids:?} gone, {} removed)",
        dir.display()
    ));
}

#[tokio::test]
async fn clients_authenticate_as_requested() {
    let Some(env) = TestEnv::start_or_skip("clients_authenticate_as_requested").await else {
        return;
    };
    let admin = TestEnv::whoami(&env.client()).await.expect("admin");
    assert_eq!(admin.username.as_deref(), Some(ADMIN_USER));
    assert!(
        admin
            .groups
            .unwrap_or_default()
            .iter()
            .any(|g| g == "system:masters")
    );

    let other = env.new_client().expect("second admin client");
    Api::<Namespace>::all(other)
        .list(&ListParams::default())
        .await
        .expect("a second client works on its own");

    let sa_user = "system:serviceaccount:kube-system:someone";
    let impersonated = env
        .client_impersonating(sa_user, &["system:serviceaccounts", "system:authenticated"])
        .expect("impersonating client");
    let me = TestEnv::whoami(&impersonated).await.expect("impersonated");
    assert_eq!(me.username.as_deref(), Some(sa_user));
    match Api::<Namespace>::all(impersonated)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("RBAC let an unbound identity list namespaces: {other:?}"),
    }

    let node = env
        .client_with_cert("system:node:worker-1", Some("system:nodes"))
        .expect("certificate client");
    let me = TestEnv::whoami(&node).await.expect("certificate user");
    assert_eq!(me.username.as_deref(), Some("system:node:worker-1"));
    assert!(
        me.groups
            .unwrap_or_default()
            .iter()
            .any(|g| g == "system:nodes")
    );

    // The kubeconfig the harness writes works for other tools.
    let kubeconfig = env.kubeconfig_path().expect("kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig readable");
    assert!(text.contains(env.url()));
    report::line(
        "harness: admin, second admin, impersonated and certificate clients authenticate as requested",
    );
}
