//! Prometheus metrics of the agent (`portway_agent_*`), and the `/metrics` + `/healthz` server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::dataplane::{ApplyReport, RuleCounter};

/// Every metric of the agent.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Applies per family and result (`changed`: a batch was written; `unchanged`: the kernel
    /// already held the desired rules).
    pub applies: IntCounterVec,
    /// Rules written by batches, per family.
    pub rules_applied: IntCounterVec,
    /// Rules of this agent in the kernel, per family.
    pub rules_installed: IntGaugeVec,
    /// Failed applies per reason (`rejected`, `busy`, `missing_tool`, `read`).
    pub apply_errors: IntCounterVec,
    /// Wall time of an apply per family, retries included.
    pub apply_duration: HistogramVec,
    /// Kernel counters of each DNAT target rule. NAT rules only see the first packet of each
    /// connection, so `packets` counts connections; reset when the rule is rewritten.
    pub rule_packets: IntGaugeVec,
    pub rule_bytes: IntGaugeVec,
    /// 1 when the family forwards, 0 when forwarding is off.
    pub forwarding: IntGaugeVec,
    /// Status writes per result (`written`, `skipped`, `error`).
    pub status_writes: IntCounterVec,
}

impl Metrics {
    /// Builds and registers every metric. Fails only on an invalid metric definition.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("portway_agent".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let applies = (IntCounterVec::new(
            Opts::new("applies_total", "Rule applies per family and result"),
            &["family", "result"],
        ))?;
        let rules_applied = (IntCounterVec::new(
            Opts::new(
                "rules_applied_total",
                "Rules written by iptables-restore batches",
            ),
            &["family"],
        ))?;
        let rules_installed = (IntGaugeVec::new(
            Opts::new("rules_installed", "Rules of this agent in the kernel"),
            &["family"],
        ))?;
        let apply_errors = (IntCounterVec::new(
            Opts::new("apply_errors_total", "Failed rule applies per reason"),
            &["reason"],
        ))?;
        let apply_duration = (HistogramVec::new(
            HistogramOpts::new(
                "apply_duration_seconds",
                "Time to bring one family's rules to the desired state, retries included",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["family"],
        ))?;
        let rule_packets = (IntGaugeVec::new(
            Opts::new(
                "rule_packets",
                "Packets matched by a DNAT target rule (first packets of connections)",
            ),
            &["family", "protocol", "port", "target"],
        ))?;
        let rule_bytes = (IntGaugeVec::new(
            Opts::new("rule_bytes", "Bytes matched by a DNAT target rule"),
            &["family", "protocol", "port", "target"],
        ))?;
        let forwarding = (IntGaugeVec::new(
            Opts::new("forwarding", "1 when the family's forwarding is on"),
            &["family"],
        ))?;
        let status_writes = (IntCounterVec::new(
            Opts::new("status_writes_total", "Node status writes per result"),
            &["result"],
        ))?;
        for c in [
            Box::new(applies.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rules_applied.clone()),
            Box::new(rules_installed.clone()),
            Box::new(apply_errors.clone()),
            Box::new(apply_duration.clone()),
            Box::new(rule_packets.clone()),
            Box::new(rule_bytes.clone()),
            Box::new(forwarding.clone()),
            Box::new(status_writes.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            applies,
            rules_applied,
            rules_installed,
            apply_errors,
            apply_duration,
            rule_packets,
            rule_bytes,
            forwarding,
            status_writes,
        })
    }

    /// Records a successful apply.
    pub fn record_apply(&self, report: &ApplyReport) {
        for f in &report.families {
            let family = f.family.map(|f| f.as_str()).unwrap_or("unknown");
            let result = if f.changed { "changed" } else { "unchanged" };
            self.applies.with_label_values(&[family, result]).inc();
            self.rules_applied
                .with_label_values(&[family])
                .inc_by(f.rules_written as u64);
            self.rules_installed
                .with_label_values(&[family])
                .set(i64::try_from(f.rules_installed).unwrap_or(i64::MAX));
            self.apply_duration
                .with_label_values(&[family])
                .observe(f.duration.as_secs_f64());
        }
    }

    /// Replaces the per-rule counters.
    pub fn record_counters(&self, counters: &[RuleCounter]) {
        self.rule_packets.reset();
        self.rule_bytes.reset();
        for c in counters {
            let port = c.port.to_string();
            let labels = [
                c.family.as_str(),
                c.protocol.as_str(),
                port.as_str(),
                c.target.as_str(),
            ];
            self.rule_packets
                .with_label_values(&labels)
                .set(i64::try_from(c.packets).unwrap_or(i64::MAX));
            self.rule_bytes
                .with_label_values(&labels)
                .set(i64::try_from(c.bytes).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        m.encode(),
    )
}

/// Where to listen for `addr`: the address itself and, for the IPv6 wildcard `[::]`, the IPv4
/// wildcard after it. On Linux `[::]` takes both families (IPV6_V6ONLY is off by default), so
/// IPv6-only and dual-stack pods are reachable; where the kernel has no IPv6 the bind of `[::]`
/// fails and the IPv4 wildcard is used instead (tokio tries the candidates in order).
pub fn listen_candidates(addr: SocketAddr) -> Vec<SocketAddr> {
    let mut out = vec![addr];
    if addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        out.push(SocketAddr::from(([0, 0, 0, 0], addr.port())));
    }
    out
}

/// Serves `/metrics` and `/healthz` on `addr` until the process exits.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(listen_candidates(addr).as_slice()).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "serving metrics");
    axum::serve(listener, app).await
}

/// How often kernel counters are refreshed while a metrics server runs.
pub const COUNTER_REFRESH: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::FamilyReport;
    use portway_crds::{IpFamily, Protocol};

    #[test]
    fn metrics_register_and_encode_with_prefix() {
        let m = Metrics::new().expect("metrics");
        m.record_apply(&ApplyReport {
            families: vec![FamilyReport {
                family: Some(IpFamily::IPv4),
                changed: true,
                rules_written: 7,
                rules_installed: 9,
                attempts: 1,
                duration: Duration::from_millis(3),
            }],
        });
        m.record_counters(&[RuleCounter {
            family: IpFamily::IPv4,
            protocol: Protocol::TCP,
            port: 80,
            target: "10.0.0.1:8080".into(),
            packets: 5,
            bytes: 300,
        }]);
        let text = m.encode();
        assert!(text.contains("portway_agent_applies_total{family=\"IPv4\",result=\"changed\"} 1"));
        assert!(text.contains("portway_agent_rules_applied_total{family=\"IPv4\"} 7"));
        assert!(text.contains("portway_agent_rules_installed{family=\"IPv4\"} 9"));
        assert!(text.contains("portway_agent_apply_duration_seconds_count{family=\"IPv4\"} 1"));
        assert!(text.contains(
            "portway_agent_rule_bytes{family=\"IPv4\",port=\"80\",protocol=\"TCP\",target=\"10.0.0.1:8080\"} 300"
        ));
    }
}
