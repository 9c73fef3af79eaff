//! Prometheus metrics of the ServiceLB controller and the operator process
//! (`portway_operator_*`). Each controller registers its own set into one shared Registry.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::plan::ServiceState;

/// Metrics of the ServiceLB controller.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles by controller and result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by controller and error category.
    pub errors: IntCounterVec,
    /// Reconcile duration by controller.
    pub duration: HistogramVec,
    /// LoadBalancer Services by state.
    pub services: IntGaugeVec,
    /// API writes by resource and verb.
    pub writes: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "portway_operator_reconciles_total",
                "Reconciles by controller and result",
            ),
            &["controller", "result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "portway_operator_reconcile_errors_total",
                "Failed reconciles by controller and error category",
            ),
            &["controller", "category"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portway_operator_reconcile_duration_seconds",
                "Time spent in one reconcile",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["controller"],
        )?;
        let services = IntGaugeVec::new(
            Opts::new(
                "portway_operator_services",
                "LoadBalancer Services Portway is responsible for, by state",
            ),
            &["state"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "portway_operator_api_writes_total",
                "Write requests sent to the API server, by resource and verb",
            ),
            &["resource", "verb"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(services.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        for s in ServiceState::ALL {
            services.with_label_values(&[s.as_str()]).set(0);
        }
        Ok(Self {
            reconciles,
            errors,
            duration,
            services,
            writes,
        })
    }

    /// Counts one API write.
    pub fn write(&self, resource: &str, verb: &str) {
        self.writes.with_label_values(&[resource, verb]).inc();
    }

    /// Total API writes so far (all resources and verbs).
    pub fn total_writes(&self) -> u64 {
        use prometheus::core::Collector;
        self.writes
            .collect()
            .iter()
            .flat_map(|mf| mf.get_metric().iter())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

/// Renders every metric of `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut buf) {
        return format!("# error encoding metrics: {e}\n");
    }
    String::from_utf8_lossy(&buf).into_owned()
}
