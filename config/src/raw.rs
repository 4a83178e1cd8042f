//! The world file as written: mirrors of the world types whose fields keep their byte spans
//! and whose numbers are signed (`i64`), so that `-5` reaches the checker. Every field the
//! checker reports on keeps its span.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorld {
    // A map cannot keep file order by itself (it sorts its keys); the key spans can.
    pub(crate) shards: Spanned<BTreeMap<Spanned<String>, RawShard>>,
    pub(crate) nodes: Spanned<Vec<RawNode>>,
    pub(crate) workload: RawWorkload,
    pub(crate) failures: RawFailures,
    pub(crate) checkpoints: Option<RawCheckpoints>,
    pub(crate) owners: Option<RawOwners>,
    pub(crate) verification: Option<RawVerification>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerification {
    pub(crate) fraction_ppm: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShard {
    pub(crate) queue_budget: Spanned<i64>,
    pub(crate) latency_budget_ms: Spanned<i64>,
    pub(crate) spillover: Vec<Spanned<String>>,
    pub(crate) specialties: Vec<Spanned<String>>,
    pub(crate) treaty: RawTreaty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTreaty {
    pub(crate) reputation_floor_ppm: Spanned<i64>,
    pub(crate) regions_served: Vec<Spanned<String>>,
    pub(crate) node_quota_jobs: Spanned<i64>,
    pub(crate) quota_window_ticks: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub(crate) name: Spanned<String>,
    pub(crate) region: Spanned<String>,
    pub(crate) capacity: Spanned<i64>,
    pub(crate) max_concurrency: Spanned<i64>,
    pub(crate) heartbeat_interval_ticks: Spanned<i64>,
    pub(crate) capabilities: Vec<Spanned<String>>,
    pub(crate) latency_ms: Spanned<i64>,
    pub(crate) price_micros_per_hour: Spanned<i64>,
    pub(crate) reputation_ppm: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkload {
    pub(crate) load_percent: Spanned<i64>,
    pub(crate) kinds: Spanned<Vec<RawJobKind>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJobKind {
    pub(crate) name: Spanned<String>,
    pub(crate) shard: Spanned<String>,
    pub(crate) weight: Spanned<i64>,
    pub(crate) skills: Spanned<Vec<Spanned<String>>>,
    pub(crate) duration_ticks_min: Spanned<i64>,
    pub(crate) duration_ticks_max: Spanned<i64>,
    pub(crate) deadline_slack_ticks: Spanned<i64>,
    pub(crate) budget_micros: Spanned<i64>,
    pub(crate) failure_ppm: Spanned<i64>,
    pub(crate) kernel: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFailures {
    pub(crate) epoch_ticks: Spanned<i64>,
    pub(crate) outage_ppm: Spanned<i64>,
    pub(crate) outage_heartbeats_min: Spanned<i64>,
    pub(crate) outage_heartbeats_max: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheckpoints {
    pub(crate) interval_ticks: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOwners {
    pub(crate) count: Spanned<i64>,
    pub(crate) threshold: Spanned<i64>,
}
