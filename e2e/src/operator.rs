//! The real operator in-process: `portway_operator::cli::run::run_with` — the same function
//! `portway run` calls, with its RBAC check, Lease, metrics server and both controllers — on its
//! own thread and single-threaded runtime, with a client of the test's choosing (any identity,
//! optionally recording every request).
//!
//! - [`Operator::stop`] cancels it the way SIGTERM does: it releases its Lease and returns.
//! - [`Operator::kill`] drops its runtime: every task (controllers, Lease renewal, watches, open
//!   connections) stops at once without a word to the API server, as a killed process would.
//! - Dropping an [`Operator`] kills it, so nothing outlives a failing test.
//!
//! Its logs (tracing, `info` plus `debug` for Portway) go to `operator-<name>.log` in the test's
//! temp dir; [`Operator::log_tail`] shows them in assertion messages.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use portway_operator::cli::run::{Args, Process, run_with};
use portway_operator::cli::{Cli, Command};
use prometheus::Registry;
use prometheus::proto::MetricType;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::envtest::clients::ClientSpec;
use crate::report;

/// How long a stopped operator may take to return (it releases its Lease on the way out).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an operator could not be started or did not stop.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("`portway run {flags}` does not parse: {message}")]
    Flags { flags: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("operator {0} did not stop within {STOP_TIMEOUT:?}")]
    StopTimeout(String),
}

/// How an operator ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `run_with` returned (after [`Operator::stop`], or on its own: an error, a lost Lease).
    Returned(Result<(), String>),
    /// [`Operator::kill`]ed.
    Killed,
    /// The operator panicked (a bug: it must never panic on API data).
    Panicked(String),
    /// The client could not be built.
    NoClient(String),
}

/// `portway run <flags>` as the binary parses it (the real clap definition: defaults, value
/// checks and all).
pub fn run_args<S: AsRef<str>>(flags: &[S]) -> Result<Args, OperatorError> {
    let argv = ["portway", "run"]
        .into_iter()
        .map(str::to_owned)
        .chain(flags.iter().map(|f| f.as_ref().to_owned()));
    let shown = || {
        flags
            .iter()
            .map(|f| f.as_ref())
            .collect::<Vec<_>>()
            .join(" ")
    };
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Run(args),
        }) => Ok(*args),
        Ok(_) => Err(OperatorError::Flags {
            flags: shown(),
            message: "not the run command".to_owned(),
        }),
        Err(e) => Err(OperatorError::Flags {
            flags: shown(),
            message: e.to_string(),
        }),
    }
}

/// Flags every in-process operator needs: its namespace, and metrics on an ephemeral loopback
/// port (several operators share the test process; the default [::]:9463 would collide).
pub fn base_flags(namespace: &str) -> Vec<String> {
    vec![
        format!("--namespace={namespace}"),
        "--metrics-addr=127.0.0.1:0".to_owned(),
        "--agent-image=portway/agent:e2e".to_owned(),
    ]
}

/// One in-process operator replica.
pub struct Operator {
    name: String,
    registry: Registry,
    shutdown: CancellationToken,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Exit>>,
    log_path: PathBuf,
}

impl Operator {
    /// Starts `run_with(args)` as replica `name` (also its Lease identity), with a client built
    /// from `client` on the operator's own runtime. Logs go to `<log_dir>/operator-<name>.log`.
    pub fn start(
        name: &str,
        args: Args,
        client: ClientSpec,
        log_dir: &Path,
    ) -> Result<Self, OperatorError> {
        let log_path = log_dir.join(format!("operator-{name}.log"));
        let file = std::fs::File::create(&log_path).map_err(|source| OperatorError::Io {
            what: format!("creating {}", log_path.display()),
            source,
        })?;
        let registry = Registry::new();
        let shutdown = CancellationToken::new();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let process_registry = registry.clone();
        let process_shutdown = shutdown.clone();
        let identity = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("operator-{name}"))
            .spawn(move || {
                let subscriber = tracing_subscriber::fmt()
                    .with_writer(Mutex::new(file))
                    .with_ansi(false)
                    .with_env_filter(tracing_subscriber::EnvFilter::new(
                        "info,portway_operator=debug",
                    ))
                    .finish();
                // Thread-local: every task of this single-threaded runtime logs here.
                let _log = tracing::subscriber::set_default(subscriber);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return Exit::NoClient(format!("building a runtime: {e}")),
                };
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(async move {
                        let client = match client.build() {
                            Ok(c) => c,
                            Err(e) => return Exit::NoClient(e.to_string()),
                        };
                        let process = Process {
                            client,
                            identity,
                            registry: process_registry,
                            shutdown: process_shutdown,
                        };
                        tokio::select! {
                            result = run_with(args, process) => {
                                if let Err(e) = &result {
                                    tracing::error!("portway run stopped: {e}");
                                }
                                Exit::Returned(result.map_err(|e| e.to_string()))
                            }
                            _ = kill_rx => Exit::Killed,
                        }
                    })
                }));
                // Drops every task still on the runtime (Lease renewal, watches, connections)
                // without running them again: after a kill nothing talks to the API server.
                runtime.shutdown_background();
                match outcome {
                    Ok(exit) => exit,
                    Err(panic) => Exit::Panicked(panic_message(&panic)),
                }
            })
            .map_err(|source| OperatorError::Io {
                what: "spawning the operator thread".to_owned(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            registry,
            shutdown,
            kill: Some(kill_tx),
            thread: Some(thread),
            log_path,
        })
    }

    /// The replica's name (its Lease identity).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while `run_with` has not returned.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The sum of every sample of metric `name` whose labels include `labels` (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| {
                let kind = family.get_field_type();
                family.get_metric().iter().map(move |m| (kind, m))
            })
            .filter(|(_, m)| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|(kind, m)| match kind {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                _ => 0.0,
            })
            // A fold from +0.0: `sum` of no samples is -0.0, which prints as "-0".
            .fold(0.0, |total, v| total + v)
    }

    /// Every metric in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        portway_operator::metrics::render(&self.registry)
    }

    /// The last `lines` lines of the operator's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::envtest::process::log_tail(&self.log_path, lines)
    }

    /// Stops it as SIGTERM would (it releases its Lease) and waits, at most [`STOP_TIMEOUT`].
    pub async fn stop(mut self) -> Result<Exit, OperatorError> {
        self.shutdown.cancel();
        self.join(STOP_TIMEOUT).await
    }

    /// Kills it: the runtime is dropped, nothing is released.
    pub async fn kill(mut self) -> Result<Exit, OperatorError> {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.join(STOP_TIMEOUT).await
    }

    /// Waits (bounded) until `run_with` returned on its own, e.g. after losing its Lease.
    pub async fn wait_exit(mut self, timeout: Duration) -> Result<Exit, OperatorError> {
        self.join(timeout).await
    }

    async fn join(&mut self, timeout: Duration) -> Result<Exit, OperatorError> {
        let started = Instant::now();
        while self.is_running() {
            if started.elapsed() >= timeout {
                return Err(OperatorError::StopTimeout(self.name.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(exit)) => Ok(exit),
            Some(Err(panic)) => Ok(Exit::Panicked(panic_message(&panic))),
            None => Ok(Exit::Killed),
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.shutdown.cancel();
        // The operator's runtime stops at its next await: bounded wait, never a hang.
        let started = Instant::now();
        while !thread.is_finished() && started.elapsed() < STOP_TIMEOUT {
            std::thread::sleep(Duration::from_millis(20));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            report::line(&format!(
                "operator {}: did not stop within {STOP_TIMEOUT:?}; its thread is left behind",
                self.name
            ));
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}
