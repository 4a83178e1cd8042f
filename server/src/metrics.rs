//! The metrics of `fabric serve` (prometheus-client), exposed at `GET /metrics` and
//! `GET /v0/metrics`: the treaty metrics users expect (`treaty_fill_rate`, `treaty_rtt_ms`,
//! `treaty_provenance_coverage`, `gpu_hours_total`, `treaty_dropped_requests`,
//! `treaty_failover_events_total`, defined as in a run's `summary.json`) and the fabric's own.
//! Everything is updated after each durable tick from the tick's events and the state after it;
//! counters start at zero when the server starts (a restart is a counter reset to Prometheus).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use fabric_actors::serve::ServedTick;
use fabric_events::Body;
use fabric_projections::State;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text 1.0.0.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    from_shard: String,
    to_shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Every metric of the server, and the registry that encodes them.
pub struct ServeMetrics {
    registry: Registry,
    fill_rate: Gauge<f64, AtomicU64>,
    rtt_ms: Histogram,
    provenance_coverage: Gauge<f64, AtomicU64>,
    gpu_hours: Counter<f64, AtomicU64>,
    dropped_requests: Gauge,
    failover_events: Counter,
    events_appended: Counter,
    append_latency_seconds: Histogram,
    decision_latency_seconds: Histogram,
    queue_depth: Family<ShardLabels, Gauge>,
    spillovers: Family<RouteLabels, Counter>,
    requeues: Counter,
    node_healthy: Family<NodeLabels, Gauge>,
    rejections: Family<ReasonLabels, Counter>,
    refusals_counted: Family<ReasonLabels, Counter>,
    requests_unreadable: Counter,
    requests_rate_limited: Counter,
    outbox_lag_events: Gauge,
    tick: Gauge,
    /// HTTP submissions turned away before reaching a tick (overload, shutdown).
    requests_dropped: AtomicU64,
    /// Jobs dropped by the fabric, from the state (for `treaty_dropped_requests`).
    jobs_dropped: Mutex<u64>,
}

impl ServeMetrics {
    /// Every metric at zero, registered; the spillover routes of the world (`(from, to)`) and
    /// every rejection reason start with a sample of 0, so their families are there to query
    /// before the first one happens.
    pub fn new(routes: &[(String, String)]) -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            fill_rate: Gauge::default(),
            rtt_ms: Histogram::new(exponential_buckets(5.0, 2.0, 12)),
            provenance_coverage: Gauge::default(),
            gpu_hours: Counter::default(),
            dropped_requests: Gauge::default(),
            failover_events: Counter::default(),
            events_appended: Counter::default(),
            append_latency_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            decision_latency_seconds: Histogram::new(exponential_buckets(0.000_000_5, 2.0, 20)),
            queue_depth: Family::default(),
            spillovers: Family::default(),
            requeues: Counter::default(),
            node_healthy: Family::default(),
            rejections: Family::default(),
            refusals_counted: Family::default(),
            requests_unreadable: Counter::default(),
            requests_rate_limited: Counter::default(),
            outbox_lag_events: Gauge::default(),
            tick: Gauge::default(),
            requests_dropped: AtomicU64::new(0),
            jobs_dropped: Mutex::new(0),
            registry: Registry::default(),
        };
        metrics.register_treaty(&mut registry);
        metrics.register_fabric(&mut registry);
        metrics.seed_families(routes);
        Self {
            registry,
            ..metrics
        }
    }

    /// The metrics of the treaty (the seeds' names).
    fn register_treaty(&self, registry: &mut Registry) {
        let metrics = self;
        registry.register(
            "treaty_fill_rate",
            "Completed jobs as a share of submitted ones",
            metrics.fill_rate.clone(),
        );
        registry.register(
            "treaty_rtt_ms",
            "Round-trip latency of the node that ran each finished job, in milliseconds (its registered latency_ms, as in summary.json)",
            metrics.rtt_ms.clone(),
        );
        registry.register(
            "treaty_provenance_coverage",
            "Completed jobs as a share of finished ones (each with a signed receipt naming its output)",
            metrics.provenance_coverage.clone(),
        );
        registry.register(
            "gpu_hours",
            "Node hours of jobs that ran a GPU kernel (ticks times the tick interval)",
            metrics.gpu_hours.clone(),
        );
        registry.register(
            "treaty_dropped_requests",
            "Jobs the fabric dropped plus submissions turned away before a tick (overload, shutdown)",
            metrics.dropped_requests.clone(),
        );
        registry.register(
            "treaty_failover_events",
            "Spillovers and requeues",
            metrics.failover_events.clone(),
        );
    }

    /// The fabric's own metrics.
    fn register_fabric(&self, registry: &mut Registry) {
        let metrics = self;
        registry.register(
            "fabric_events_appended",
            "Events appended to the ledger by this server",
            metrics.events_appended.clone(),
        );
        registry.register(
            "fabric_append_latency_seconds",
            "Wall time of one tick's append (verify, commit, fdatasync)",
            metrics.append_latency_seconds.clone(),
        );
        registry.register(
            "fabric_policy_decision_latency_seconds",
            "Wall time of one routing decision",
            metrics.decision_latency_seconds.clone(),
        );
        registry.register(
            "fabric_queue_depth",
            "Jobs queued per shard",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "fabric_spillovers",
            "Spillovers per route",
            metrics.spillovers.clone(),
        );
        registry.register("fabric_requeues", "Jobs requeued", metrics.requeues.clone());
        registry.register(
            "fabric_node_healthy",
            "1 while a node is healthy, 0 while it is not",
            metrics.node_healthy.clone(),
        );
        registry.register(
            "fabric_rejections",
            "Rejected events recorded, by reason",
            metrics.rejections.clone(),
        );
        registry.register(
            "fabric_refusals_counted",
            "Refused attempts without a valid signature of a registered key, by reason (counted in refusals_counted events, not each recorded)",
            metrics.refusals_counted.clone(),
        );
        registry.register(
            "fabric_requests_unreadable",
            "Requests whose body could not be read or parsed (nothing stored)",
            metrics.requests_unreadable.clone(),
        );
        registry.register(
            "fabric_requests_rate_limited",
            "Requests answered 429 because their peer's allowance of refusals was spent",
            metrics.requests_rate_limited.clone(),
        );
        registry.register(
            "fabric_nats_outbox_lag_events",
            "Durable events not yet acknowledged by NATS (0 without --nats)",
            metrics.outbox_lag_events.clone(),
        );
        registry.register("fabric_tick", "The current tick", metrics.tick.clone());
    }

    /// The spillover routes of the world and every rejection reason start with a sample of 0,
    /// so their families are there to query before the first one happens.
    fn seed_families(&self, routes: &[(String, String)]) {
        let metrics = self;
        for (from_shard, to_shard) in routes {
            metrics
                .spillovers
                .get_or_create(&RouteLabels {
                    from_shard: from_shard.clone(),
                    to_shard: to_shard.clone(),
                })
                .inc_by(0);
        }
        for reason in fabric_events::RejectReason::ALL {
            let labels = ReasonLabels {
                reason: reason.as_str().to_owned(),
            };
            metrics.rejections.get_or_create(&labels).inc_by(0);
            metrics.refusals_counted.get_or_create(&labels).inc_by(0);
        }
    }

    /// A request whose body could not be read or parsed.
    pub fn unreadable_request(&self) {
        self.requests_unreadable.inc();
    }

    /// A request answered 429 (its peer's allowance of refusals is spent).
    pub fn rate_limited_request(&self) {
        self.requests_rate_limited.inc();
    }

    /// A submission turned away before it reached a tick.
    pub fn dropped_request(&self) {
        self.requests_dropped.fetch_add(1, Ordering::Relaxed);
        self.update_dropped();
    }

    fn update_dropped(&self) {
        let jobs = *self
            .jobs_dropped
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let total = jobs + self.requests_dropped.load(Ordering::Relaxed);
        self.dropped_requests
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    /// A durable tick: its events and the state after it.
    pub fn observe_tick(&self, tick: &ServedTick<'_>, state: &State, tick_ms: u64) {
        self.tick.set(i64::try_from(tick.tick).unwrap_or(i64::MAX));
        self.events_appended.inc_by(tick.events.len() as u64);
        // A tick that appended nothing wrote nothing: it has no append latency.
        if !tick.events.is_empty() {
            self.append_latency_seconds
                .observe(tick.append_ns as f64 / 1e9);
        }
        for ns in tick.decision_ns {
            self.decision_latency_seconds.observe(f64::from(*ns) / 1e9);
        }
        for event in tick.events {
            match &event.body {
                Body::JobSpilled(spill) => {
                    self.spillovers
                        .get_or_create(&RouteLabels {
                            from_shard: spill.from_shard.clone(),
                            to_shard: spill.to_shard.clone(),
                        })
                        .inc();
                    self.failover_events.inc();
                }
                Body::JobRequeued(_) => {
                    self.requeues.inc();
                    self.failover_events.inc();
                }
                Body::Rejected(rejected) => {
                    self.rejections
                        .get_or_create(&ReasonLabels {
                            reason: rejected.reason.as_str().to_owned(),
                        })
                        .inc();
                }
                Body::RefusalsCounted(counted) => {
                    for count in &counted.counts {
                        self.refusals_counted
                            .get_or_create(&ReasonLabels {
                                reason: count.reason.as_str().to_owned(),
                            })
                            .inc_by(count.attempts);
                    }
                }
                Body::JobReceipt(receipt) => {
                    if let Some(node) = state.node_ix(&receipt.node) {
                        self.rtt_ms
                            .observe(f64::from(state.nodes()[node as usize].latency_ms));
                    }
                    if receipt.kernel.is_some() {
                        let ticks = receipt.finished_tick.saturating_sub(receipt.started_tick);
                        self.gpu_hours
                            .inc_by(ticks as f64 * tick_ms as f64 / 3_600_000.0);
                    }
                }
                _ => {}
            }
        }
        let metrics = state.metrics();
        self.fill_rate.set(metrics.fill_rate());
        self.provenance_coverage.set(if metrics.finished() == 0 {
            0.0
        } else {
            metrics.completed as f64 / metrics.finished() as f64
        });
        *self
            .jobs_dropped
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = metrics.dropped;
        self.update_dropped();
        for shard in state.shards() {
            self.queue_depth
                .get_or_create(&ShardLabels {
                    shard: shard.name.clone(),
                })
                .set(i64::try_from(shard.queued()).unwrap_or(i64::MAX));
        }
        for node in state.nodes() {
            self.node_healthy
                .get_or_create(&NodeLabels {
                    node: node.name.clone(),
                })
                .set(i64::from(node.healthy));
        }
    }

    /// The NATS outbox's lag: durable entries past its stored cursor.
    pub fn observe_outbox(&self, outbox: &sled::Tree, durable_size: u64) {
        let cursor = outbox
            .get(b"cursor")
            .ok()
            .flatten()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
            .map_or(0, u64::from_le_bytes);
        let lag = durable_size.saturating_sub(cursor);
        self.outbox_lag_events
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// The exposition: OpenMetrics text when asked for, else the Prometheus text format.
    pub fn encode(&self, openmetrics: bool) -> Result<(&'static str, String), std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        if openmetrics {
            Ok((OPENMETRICS_TEXT, text))
        } else {
            Ok((PROMETHEUS_TEXT, prometheus_text(&text)))
        }
    }
}

/// Prometheus text format 0.0.4 from OpenMetrics text: a counter family `x` is named
/// `x_total` there, like its sample (OpenMetrics names the family without the suffix), and
/// there is no `# EOF` or `# UNIT` line.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_families_take_the_total_suffix_in_prometheus_text() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
