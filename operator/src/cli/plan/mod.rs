//! `portway plan DIR...`: what the operator would create and write for a folder of YAML, with
//! no cluster. Runs the same pure core as the operator, assuming every agent forwards (so the
//! output shows the ingress each Service gets once its agents run).
//!
//! Built to be a pre-merge check: input is read with strict field validation and duplicate
//! objects are rejected ([`crate::input`]); the output depends only on the input (conditions carry
//! the fixed [`plan_time`], not the wall clock; everything is sorted), so two runs, or the same
//! files in another order, print the same bytes; `--strict` turns [`problems`] into exit code 1;
//! `-o json` is one document with a checked-in schema; `--diff A B` says what changes.
//!
//! Modules: [`text`] (`-o yaml`, `-o wide`), [`json`] (`-o json`), [`problems`] (what `--strict`
//! fails on), [`diff`] (`--diff`).

pub mod diff;
pub mod json;
pub mod problems;
pub mod text;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use portway_crds::condition::{self, types};

use crate::cidr::{CidrPlan, CidrPlanError};
use crate::controllers::servicelb::ServiceLbArgs;
use crate::input::{InputSet, Skipped};
use crate::plan::assign::Placement;
use crate::plan::{self, Desired, Key, Observed};

pub use problems::Problem;

/// Exit code: the plan was printed (and, with `--strict`, nothing is wrong).
pub const EXIT_OK: u8 = 0;
/// Exit code with `--strict`: something was rejected or is not served (see [`problems`]).
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code: bad command line, or the input could not be read (missing file, not YAML, no
/// YAML file in a folder) or the output not written. Clap exits with 2 on usage errors too.
pub const EXIT_USAGE_OR_IO: u8 = 2;

/// `portway plan --help`, after the options: the exit codes and the time used.
pub const AFTER_HELP: &str = "\
Exit codes:
  0  the plan (or diff) was printed; without --strict also when objects were rejected or
     Services are not served (they are reported in the output)
  1  with --strict: a document was rejected (invalid, unknown field, duplicate object, unused
     kind), a Portway Service is not serving (PortConflict, PoolNotFound, NoMatchingPool,
     PoolHasNoNodes, NoReadyEndpoints, InvalidService...), the pod CIDRs cannot be planned, or,
     when ClusterCIDRs are given, a Node gets no pod CIDR; with --diff, of DIR_B
  2  usage error, or the input could not be read or the output not written

Output is deterministic: the same objects give the same bytes in any file or document order,
and conditions carry the fixed time 1970-01-01T00:00:00Z instead of the clock.";

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The objects as YAML documents, with comments (with --diff: text).
    Yaml,
    /// A readable table (with --diff: text).
    Wide,
    /// One JSON document (schema: docs/schemas/plan.schema.json; with --diff
    /// docs/schemas/plan-diff.schema.json).
    Json,
}

/// Arguments of `portway plan`.
#[derive(clap::Args, Debug, Clone)]
#[group(id = "plan-args")]
pub struct Args {
    /// YAML files or folders (read one level deep). With --diff: read on both sides (e.g. a
    /// dump of the cluster's Nodes and EndpointSlices that neither tree holds).
    #[arg(required_unless_present = "diff")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
    /// Exit with 1 when a document is rejected or a Service is not served (see below).
    #[arg(long)]
    pub strict: bool,
    /// Print what changes from the plan of DIR_A (+ PATHS) to the plan of DIR_B (+ PATHS)
    /// instead of a plan.
    #[arg(long, num_args = 2, value_names = ["DIR_A", "DIR_B"])]
    pub diff: Option<Vec<PathBuf>>,
    #[command(flatten)]
    pub servicelb: ServiceLbArgs,
}

/// The time `portway plan` writes into the conditions it plans (`lastTransitionTime`): the Unix
/// epoch, `1970-01-01T00:00:00Z`, so that the output never depends on when it runs. (A condition
/// of an object given in the input keeps its own time when its status does not change.)
pub fn plan_time() -> Time {
    Time(Timestamp::UNIX_EPOCH)
}

/// Builds the core's input from what was read.
pub fn observed(set: &InputSet) -> Observed {
    fn arcs<T: Clone>(v: &[T]) -> Vec<Arc<T>> {
        v.iter().cloned().map(Arc::new).collect()
    }
    Observed {
        services: arcs(&set.services),
        nodes: arcs(&set.nodes),
        endpoint_slices: arcs(&set.endpoint_slices),
        pools: arcs(&set.pools),
        namespaces: arcs(&set.namespaces),
        service_load_balancers: arcs(&set.service_load_balancers),
        daemonsets: Vec::new(),
        role_bindings: Vec::new(),
    }
}

/// Everything `portway plan` shows for one input.
pub struct Plan<'a> {
    /// The input.
    pub set: &'a InputSet,
    /// The ServiceLB core's result.
    pub desired: Desired,
    /// Nodes each placed Service's agents run on (its usable nodes), sorted by name.
    pub nodes: BTreeMap<Key, Vec<String>>,
    /// The pod CIDR plan.
    pub cidrs: Result<CidrPlan, CidrPlanError>,
    /// Documents not used, sorted by source.
    pub rejected: Vec<&'a Skipped>,
}

impl<'a> Plan<'a> {
    /// Runs both cores on `set` at time `now`.
    pub fn new(set: &'a InputSet, servicelb: &ServiceLbArgs, now: Time) -> Self {
        let mut config = servicelb.config(now);
        config.assume_agents_forwarding = true;
        let observed = observed(set);
        let desired = plan::desired_state(&observed, &config);
        let assignment = plan::assign::assign(&observed, &config);
        let nodes = assignment
            .services
            .iter()
            .filter_map(|(key, a)| match &a.placement {
                Placement::Placed(p) => Some((
                    key.clone(),
                    p.usable
                        .iter()
                        .filter_map(|i| assignment.nodes.get(i).map(|n| n.name.clone()))
                        .collect(),
                )),
                _ => None,
            })
            .collect();
        let cidrs = crate::cidr::plan_for_nodes(&set.nodes, &set.cluster_cidrs);
        let mut rejected: Vec<&Skipped> = set.skipped.iter().collect();
        rejected.sort_by(|a, b| crate::input::order_of_skipped(a, b));
        Plan {
            set,
            desired,
            nodes,
            cidrs,
            rejected,
        }
    }

    /// What `--strict` fails on.
    pub fn problems(&self) -> Vec<Problem> {
        problems::problems(self)
    }

    /// Renders the plan in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Yaml => text::render_yaml(self),
            Format::Wide => text::render_wide(self),
            Format::Json => json::render(self),
        }
    }
}

/// Reason and message of the Service's `portway.dev/LoadBalancer` condition (else of the
/// ServiceLoadBalancer's Ready condition); `-` when it has none.
pub fn ready_reason(p: &plan::ServicePlan) -> (String, String) {
    p.service_condition
        .as_ref()
        .or_else(|| condition::find(&p.conditions, types::READY))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_else(|| ("-".to_owned(), String::new()))
}

/// The Service status the operator writes, as an object.
pub fn service_status_object(p: &plan::ServicePlan) -> serde_json::Value {
    let mut status = serde_json::json!({"loadBalancer": {"ingress": p.ingress.as_slice()}});
    if let Some(c) = &p.service_condition {
        status["conditions"] = serde_json::json!([c]);
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": p.service.name, "namespace": p.service.namespace},
        "status": status,
    })
}

/// A pool's status as an object.
pub fn pool_status_object(pool: &plan::PoolPlan) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": portway_crds::names::API_VERSION,
        "kind": "LoadBalancerPool",
        "metadata": {"name": pool.name},
        "status": pool.status,
    })
}

/// Runs the cores on `set` at time `now` and renders the result as `args.output`.
pub fn render(set: &InputSet, args: &Args, now: Time) -> String {
    Plan::new(set, &args.servicelb, now).render(args.output)
}

/// Runs `portway plan`; see [`AFTER_HELP`] for the exit codes.
pub fn main(args: &Args) -> ExitCode {
    if let Some(dirs) = &args.diff {
        return match dirs.as_slice() {
            [a, b] => diff::main(args, a, b),
            _ => fail("--diff takes two paths: DIR_A DIR_B"),
        };
    }
    let set = match crate::input::read_paths(&args.paths) {
        Ok(set) => set,
        Err(e) => return fail(&e.to_string()),
    };
    let plan = Plan::new(&set, &args.servicelb, plan_time());
    finish(&plan.render(args.output), args.strict, &plan.problems())
}

/// Prints `output`; with `strict`, reports `problems` on stderr and exits with 1 if any.
pub(crate) fn finish(output: &str, strict: bool, problems: &[Problem]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        return fail(&format!("cannot write the output: {e}"));
    }
    if strict && !problems.is_empty() {
        eprintln!("portway plan: --strict: {} problem(s):", problems.len());
        for p in problems {
            eprintln!("  {p}");
        }
        return ExitCode::from(EXIT_PROBLEMS);
    }
    ExitCode::from(EXIT_OK)
}

/// Reports a usage or I/O error; exit code 2.
pub(crate) fn fail(message: &str) -> ExitCode {
    eprintln!("portway plan: {message}");
    ExitCode::from(EXIT_USAGE_OR_IO)
}
