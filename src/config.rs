//! The world file: `config/fabric.toml` read into a [`World`], validated before any run.
//!
//! Reading happens in two steps. First serde reads the TOML into `Raw*` mirrors of the world
//! types whose fields keep their byte spans ([`Spanned`]) and whose numbers are signed (`i64`),
//! so that a negative number gets its own message rather than a type error. Then [`Checker`]
//! checks every value and every cross-reference (regions, spillover targets, skills) and builds
//! the plain [`World`] that the actors use.
//!
//! API boundary: every problem in the file is a [`ConfigError::Invalid`], whose message names
//! the file, the 1-based line and the field path (`shards.earth.queue_budget`,
//! `nodes[2].latency_ms`, `workload.kinds[0].skills[1]`; array indices count from 0), so a
//! user can go straight to the line. A [`World`] returned by [`parse`] or [`load`] satisfies
//! every rule below; nothing downstream needs to check it again.
//!
//! Layout: `[shards.<name>]` tables (with a `[shards.<name>.treaty]` sub-table) in the order
//! their shard actors are numbered, `[[nodes]]`, `[workload]` with `[[workload.kinds]]`,
//! `[failures]`, an optional `[checkpoints]` and an optional `[owners]`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use fabric_actors::world::{
    FailureSpec, JobKindSpec, NodeSpec, OwnersSpec, ShardSpec, WorkloadSpec, World,
};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Ticks between checkpoints when the file has no `[checkpoints]` table.
pub const CHECKPOINT_INTERVAL_TICKS_DEFAULT: u32 = 50;
/// Most owners a fabric has.
pub const OWNERS_MAX: u32 = 64;

/// The largest world file read; a real one is a few kilobytes, so anything near this is a
/// wrong path (a ledger, a log), not a world.
const FILE_SIZE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Parts per million of certainty.
const PPM_MAX: i64 = 1_000_000;

/// Names travel in every event that mentions a shard, node or job kind: keep them short.
const NAME_LEN_MAX: usize = 64;

/// Ten times what the fabric can complete is already a queue that only grows; more is a typo.
const LOAD_PERCENT_MAX: i64 = 1_000;

/// The field path used when an error cannot be tied to any field (e.g. a broken table header).
const TOP_LEVEL: &str = "(top level)";

/// Why a world file could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read at all.
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid world.
    Invalid {
        /// The file name, as given to [`parse`].
        origin: String,
        /// The 1-based line of the offending value, key or table header.
        line: usize,
        /// The field path, e.g. `shards.earth.queue_budget` or `nodes[2].latency_ms`.
        field: String,
        /// What is wrong, and where it helps, what would be right.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(
                    f,
                    "{}: could not read the world file: {source}",
                    path.display()
                )
            }
            ConfigError::Invalid {
                origin,
                line,
                field,
                message,
            } => write!(f, "{origin}:{line}: {field}: {message}"),
        }
    }
}

// The read error's cause is already in its message: no `source`, so chains do not repeat it.
impl std::error::Error for ConfigError {}

/// Reads and validates the world file at `path`; messages name it as given.
pub fn load(path: &Path) -> Result<World, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    // Read one byte past the limit to tell "exactly at the limit" from "over it".
    file.take(FILE_SIZE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > FILE_SIZE_BYTES_MAX {
        return Err(read_error(std::io::Error::other(format!(
            "larger than {FILE_SIZE_BYTES_MAX} bytes; is this really a world file?"
        ))));
    }
    parse(&text, &path.display().to_string())
}

/// Parses and validates a world from TOML `text`; `origin` is the file name used in messages.
pub fn parse(text: &str, origin: &str) -> Result<World, ConfigError> {
    let checker = Checker { text, origin };
    // Parse first, then deserialize: a syntax error and a schema error need their field
    // paths found differently (see `Checker::syntax_error`).
    let document = DeTable::parse(text).map_err(|error| checker.syntax_error(&error))?;
    let raw = RawWorld::deserialize(toml::de::Deserializer::from(document))
        .map_err(|error| checker.schema_error(&error))?;
    let world = checker.world(raw)?;
    // What the actors rely on, checked once more on the way out.
    debug_assert!(!world.shards.is_empty() && !world.nodes.is_empty());
    debug_assert!(world.nodes.iter().all(|n| n.max_concurrency <= n.capacity));
    Ok(world)
}

// ---------------------------------------------------------------------------------------------
// The file as written. Numbers are i64 so that `-5` reaches the checker; every field the
// checker reports on keeps its span.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorld {
    // A map cannot keep file order by itself (it sorts its keys); the key spans can.
    shards: Spanned<BTreeMap<Spanned<String>, RawShard>>,
    nodes: Spanned<Vec<RawNode>>,
    workload: RawWorkload,
    failures: RawFailures,
    checkpoints: Option<RawCheckpoints>,
    owners: Option<RawOwners>,
    verification: Option<RawVerification>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerification {
    fraction_ppm: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShard {
    queue_budget: Spanned<i64>,
    latency_budget_ms: Spanned<i64>,
    spillover: Vec<Spanned<String>>,
    specialties: Vec<Spanned<String>>,
    treaty: RawTreaty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTreaty {
    reputation_floor_ppm: Spanned<i64>,
    regions_served: Vec<Spanned<String>>,
    node_quota_jobs: Spanned<i64>,
    quota_window_ticks: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    region: Spanned<String>,
    capacity: Spanned<i64>,
    max_concurrency: Spanned<i64>,
    heartbeat_interval_ticks: Spanned<i64>,
    capabilities: Vec<Spanned<String>>,
    latency_ms: Spanned<i64>,
    price_micros_per_hour: Spanned<i64>,
    reputation_ppm: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    load_percent: Spanned<i64>,
    kinds: Spanned<Vec<RawJobKind>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobKind {
    name: Spanned<String>,
    shard: Spanned<String>,
    weight: Spanned<i64>,
    skills: Spanned<Vec<Spanned<String>>>,
    duration_ticks_min: Spanned<i64>,
    duration_ticks_max: Spanned<i64>,
    deadline_slack_ticks: Spanned<i64>,
    budget_micros: Spanned<i64>,
    failure_ppm: Spanned<i64>,
    kernel: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailures {
    epoch_ticks: Spanned<i64>,
    outage_ppm: Spanned<i64>,
    outage_heartbeats_min: Spanned<i64>,
    outage_heartbeats_max: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoints {
    interval_ticks: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwners {
    count: Spanned<i64>,
    threshold: Spanned<i64>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// Turns spans into lines and raw values into checked ones; the first problem found wins.
struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Checker<'_> {
    fn world(&self, raw: RawWorld) -> Result<World, ConfigError> {
        let shards = self.shards(&raw.shards)?;
        let shard_names: Vec<&str> = shards.iter().map(|s| s.name.as_str()).collect();
        let nodes = self.nodes(&raw.nodes, &shard_names)?;
        let skills: BTreeSet<&str> = nodes
            .iter()
            .flat_map(|node| node.capabilities.iter().map(String::as_str))
            .collect();
        if skills.len() > fabric_projections::state::SKILLS_MAX {
            return Err(self.error(
                raw.nodes.span(),
                "nodes",
                format!(
                    "the nodes offer {} distinct capabilities, over the limit of {} (skill sets are 128-bit sets)",
                    skills.len(),
                    fabric_projections::state::SKILLS_MAX
                ),
            ));
        }
        let workload = self.workload(&raw.workload, &shard_names, &nodes)?;
        let failures = self.failures(&raw.failures)?;
        let checkpoint_interval_ticks = match &raw.checkpoints {
            Some(checkpoints) => {
                self.count(&checkpoints.interval_ticks, "checkpoints.interval_ticks", 1)?
            }
            None => CHECKPOINT_INTERVAL_TICKS_DEFAULT,
        };
        let owners = match &raw.owners {
            Some(owners) => {
                let count = self.count(&owners.count, "owners.count", 1)?;
                if count > OWNERS_MAX {
                    return Err(self.error(
                        owners.count.span(),
                        "owners.count",
                        format!("at most {OWNERS_MAX} owners (got {count})"),
                    ));
                }
                let threshold = self.count(&owners.threshold, "owners.threshold", 1)?;
                if threshold > count {
                    return Err(self.error(
                        owners.threshold.span(),
                        "owners.threshold",
                        format!("a threshold of {threshold} needs at least as many owners (there are {count})"),
                    ));
                }
                OwnersSpec { count, threshold }
            }
            None => OwnersSpec::default(),
        };
        let verify_ppm = match &raw.verification {
            Some(verification) => {
                self.ppm(&verification.fraction_ppm, "verification.fraction_ppm")?
            }
            None => fabric_actors::world::VERIFY_PPM_DEFAULT,
        };
        Ok(World {
            shards,
            nodes,
            workload,
            failures,
            checkpoint_interval_ticks,
            owners,
            verify_ppm,
        })
    }

    fn shards(
        &self,
        raw: &Spanned<BTreeMap<Spanned<String>, RawShard>>,
    ) -> Result<Vec<ShardSpec>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error(
                raw.span(),
                "shards",
                "at least one shard is needed, e.g. `[shards.earth]`",
            ));
        }
        if raw.get_ref().len() > fabric_projections::state::SHARDS_MAX {
            return Err(self.error(
                raw.span(),
                "shards",
                format!(
                    "{} shards, over the limit of {} (a job's visited shards are a 64-bit set)",
                    raw.get_ref().len(),
                    fabric_projections::state::SHARDS_MAX
                ),
            ));
        }
        // File order: the order shard actors are numbered in must not depend on spelling.
        let mut entries: Vec<(&Spanned<String>, &RawShard)> = raw.get_ref().iter().collect();
        entries.sort_by_key(|(name, _)| name.span().start);

        // Names first: spillover rules and treaties refer to shards defined further down.
        let mut names = Vec::with_capacity(entries.len());
        for (name, _) in &entries {
            names.push(self.name(name, &format!("shards.{}", name.get_ref()))?);
        }

        let mut shards = Vec::with_capacity(entries.len());
        for (name, shard) in entries {
            let at = format!("shards.{}", name.get_ref());
            let name = name.get_ref();
            let spillover = self.names(&shard.spillover, &format!("{at}.spillover"))?;
            for (index, (target, raw_target)) in spillover.iter().zip(&shard.spillover).enumerate()
            {
                let field = format!("{at}.spillover[{index}]");
                if target == name {
                    return Err(self.error(
                        raw_target.span(),
                        &field,
                        format!("`{name}` cannot spill over to itself"),
                    ));
                }
                if !names.contains(target) {
                    return Err(self.error(
                        raw_target.span(),
                        &field,
                        format!("unknown shard `{target}`; the shards are {}", list(&names)),
                    ));
                }
            }
            self.no_repeats(&shard.spillover, &format!("{at}.spillover"))?;
            let treaty_at = format!("{at}.treaty");
            let treaty = &shard.treaty;
            let regions_served = self.names(
                &treaty.regions_served,
                &format!("{treaty_at}.regions_served"),
            )?;
            for (index, (region, raw_region)) in regions_served
                .iter()
                .zip(&treaty.regions_served)
                .enumerate()
            {
                if !names.contains(region) {
                    return Err(self.error(
                        raw_region.span(),
                        &format!("{treaty_at}.regions_served[{index}]"),
                        format!(
                            "unknown region `{region}`; regions are shard names: {}",
                            list(&names)
                        ),
                    ));
                }
            }
            self.no_repeats(
                &treaty.regions_served,
                &format!("{treaty_at}.regions_served"),
            )?;
            shards.push(ShardSpec {
                name: name.clone(),
                queue_budget: self.count(&shard.queue_budget, &format!("{at}.queue_budget"), 1)?,
                latency_budget_ms: self.count(
                    &shard.latency_budget_ms,
                    &format!("{at}.latency_budget_ms"),
                    1,
                )?,
                spillover,
                specialties: self.names(&shard.specialties, &format!("{at}.specialties"))?,
                reputation_floor_ppm: self.ppm(
                    &treaty.reputation_floor_ppm,
                    &format!("{treaty_at}.reputation_floor_ppm"),
                )?,
                regions_served,
                node_quota_jobs: self.count(
                    &treaty.node_quota_jobs,
                    &format!("{treaty_at}.node_quota_jobs"),
                    1,
                )?,
                quota_window_ticks: self.count(
                    &treaty.quota_window_ticks,
                    &format!("{treaty_at}.quota_window_ticks"),
                    1,
                )?,
            });
        }
        Ok(shards)
    }

    fn nodes(
        &self,
        raw: &Spanned<Vec<RawNode>>,
        shard_names: &[&str],
    ) -> Result<Vec<NodeSpec>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error(
                raw.span(),
                "nodes",
                "at least one node is needed, e.g. a `[[nodes]]` table",
            ));
        }
        let mut nodes: Vec<NodeSpec> = Vec::with_capacity(raw.get_ref().len());
        // Name -> line of its first definition, to point at both copies of a duplicate.
        let mut lines_by_name: BTreeMap<String, usize> = BTreeMap::new();
        for (index, node) in raw.get_ref().iter().enumerate() {
            let at = format!("nodes[{index}]");
            let name = self.name(&node.name, &format!("{at}.name"))?;
            let region = self.name(&node.region, &format!("{at}.region"))?;
            if !shard_names.contains(&region.as_str()) {
                return Err(self.error(
                    node.region.span(),
                    &format!("{at}.region"),
                    format!(
                        "unknown region `{region}`; regions are shard names: {}",
                        list(shard_names)
                    ),
                ));
            }
            let prefix = format!("{region}.");
            if !name.starts_with(&prefix) || name.len() == prefix.len() {
                return Err(self.error(
                    node.name.span(),
                    &format!("{at}.name"),
                    format!(
                        "a node's name starts with its region and a dot, \
                         e.g. `{prefix}my-node` (got `{name}`, region `{region}`)"
                    ),
                ));
            }
            let line = self.line(node.name.span().start);
            if let Some(first_line) = lines_by_name.insert(name.clone(), line) {
                return Err(self.error(
                    node.name.span(),
                    &format!("{at}.name"),
                    format!("node `{name}` is already defined on line {first_line}"),
                ));
            }
            let capacity = self.count(&node.capacity, &format!("{at}.capacity"), 1)?;
            let max_concurrency =
                self.count(&node.max_concurrency, &format!("{at}.max_concurrency"), 1)?;
            // Every running job holds at least one unit of the node's capacity.
            if max_concurrency > capacity {
                return Err(self.error(
                    node.max_concurrency.span(),
                    &format!("{at}.max_concurrency"),
                    format!(
                        "must not exceed the node's capacity \
                         (got {max_concurrency}, capacity is {capacity})"
                    ),
                ));
            }
            nodes.push(NodeSpec {
                name,
                region,
                capacity,
                max_concurrency,
                heartbeat_interval_ticks: self.count(
                    &node.heartbeat_interval_ticks,
                    &format!("{at}.heartbeat_interval_ticks"),
                    1,
                )?,
                capabilities: self.names(&node.capabilities, &format!("{at}.capabilities"))?,
                // Routing scores divide by latency and by price: zero would be infinite.
                latency_ms: self.count(&node.latency_ms, &format!("{at}.latency_ms"), 1)?,
                price_micros_per_hour: self.amount(
                    &node.price_micros_per_hour,
                    &format!("{at}.price_micros_per_hour"),
                    1,
                )?,
                reputation_ppm: self.ppm(&node.reputation_ppm, &format!("{at}.reputation_ppm"))?,
            });
            self.no_repeats(&node.capabilities, &format!("{at}.capabilities"))?;
        }
        Ok(nodes)
    }

    fn workload(
        &self,
        raw: &RawWorkload,
        shard_names: &[&str],
        nodes: &[NodeSpec],
    ) -> Result<WorkloadSpec, ConfigError> {
        let load_percent = self.count(&raw.load_percent, "workload.load_percent", 1)?;
        if i64::from(load_percent) > LOAD_PERCENT_MAX {
            return Err(self.error(
                raw.load_percent.span(),
                "workload.load_percent",
                format!(
                    "must be at most {LOAD_PERCENT_MAX} (got {load_percent}); 100 is what the \
                     fabric can complete, more only grows the queues"
                ),
            ));
        }
        let mut kinds: Vec<JobKindSpec> = Vec::with_capacity(raw.kinds.get_ref().len());
        let mut lines_by_name: BTreeMap<String, usize> = BTreeMap::new();
        let mut weight_sum: u64 = 0;
        for (index, kind) in raw.kinds.get_ref().iter().enumerate() {
            let at = format!("workload.kinds[{index}]");
            let name = self.name(&kind.name, &format!("{at}.name"))?;
            let line = self.line(kind.name.span().start);
            if let Some(first_line) = lines_by_name.insert(name.clone(), line) {
                return Err(self.error(
                    kind.name.span(),
                    &format!("{at}.name"),
                    format!("job kind `{name}` is already defined on line {first_line}"),
                ));
            }
            let shard = self.name(&kind.shard, &format!("{at}.shard"))?;
            if !shard_names.contains(&shard.as_str()) {
                return Err(self.error(
                    kind.shard.span(),
                    &format!("{at}.shard"),
                    format!(
                        "unknown shard `{shard}`; the shards are {}",
                        list(shard_names)
                    ),
                ));
            }
            let weight = self.count(&kind.weight, &format!("{at}.weight"), 0)?;
            weight_sum += u64::from(weight);
            let skills = self.skills(&kind.skills, &format!("{at}.skills"), nodes)?;
            let duration_ticks_min = self.count(
                &kind.duration_ticks_min,
                &format!("{at}.duration_ticks_min"),
                1,
            )?;
            let duration_ticks_max = self.count(
                &kind.duration_ticks_max,
                &format!("{at}.duration_ticks_max"),
                1,
            )?;
            if duration_ticks_min > duration_ticks_max {
                return Err(self.error(
                    kind.duration_ticks_min.span(),
                    &format!("{at}.duration_ticks_min"),
                    format!(
                        "must not exceed duration_ticks_max \
                         (got {duration_ticks_min}, duration_ticks_max is {duration_ticks_max})"
                    ),
                ));
            }
            let kernel = match &kind.kernel {
                None => None,
                Some(kernel) => {
                    let field = format!("{at}.kernel");
                    if fabric_gpu_kernels::jobs::JobKernel::from_id(kernel.get_ref()).is_none() {
                        return Err(self.error(
                            kernel.span(),
                            &field,
                            format!(
                                "unknown kernel `{}`; the kernels are embed, rerank, simulate, blake3",
                                kernel.get_ref()
                            ),
                        ));
                    }
                    if !skills.iter().any(|skill| skill == "gpu") {
                        return Err(self.error(
                            kernel.span(),
                            &field,
                            "a kind that runs a kernel needs the skill `gpu`, so only GPU nodes take it",
                        ));
                    }
                    Some(kernel.get_ref().clone())
                }
            };
            kinds.push(JobKindSpec {
                kernel,
                name,
                shard,
                weight,
                skills,
                duration_ticks_min,
                duration_ticks_max,
                // A zero slack puts the deadline on the submission tick: always missed.
                deadline_slack_ticks: self.count(
                    &kind.deadline_slack_ticks,
                    &format!("{at}.deadline_slack_ticks"),
                    1,
                )?,
                budget_micros: self.amount(
                    &kind.budget_micros,
                    &format!("{at}.budget_micros"),
                    1,
                )?,
                failure_ppm: self.ppm(&kind.failure_ppm, &format!("{at}.failure_ppm"))?,
            });
        }
        if kinds.is_empty() {
            return Err(self.error(
                raw.kinds.span(),
                "workload.kinds",
                "at least one job kind is needed, e.g. a `[[workload.kinds]]` table",
            ));
        }
        // Kinds are drawn by weight: with all weights zero there is nothing to draw.
        if weight_sum == 0 {
            return Err(self.error(
                raw.kinds.span(),
                "workload.kinds",
                "the weights of the job kinds sum to 0; give at least one kind a weight above 0",
            ));
        }
        Ok(WorkloadSpec {
            load_percent,
            kinds,
        })
    }

    /// A job runs only on a node that offers all of its skills: check one exists.
    fn skills(
        &self,
        raw: &Spanned<Vec<Spanned<String>>>,
        field: &str,
        nodes: &[NodeSpec],
    ) -> Result<Vec<String>, ConfigError> {
        let skills = self.names(raw.get_ref(), field)?;
        self.no_repeats(raw.get_ref(), field)?;
        for (index, (skill, raw_skill)) in skills.iter().zip(raw.get_ref()).enumerate() {
            if !nodes.iter().any(|node| node.capabilities.contains(skill)) {
                return Err(self.error(
                    raw_skill.span(),
                    &format!("{field}[{index}]"),
                    format!(
                        "no node offers skill `{skill}`; add it to a node's capabilities \
                         or remove it here"
                    ),
                ));
            }
        }
        let offers_all =
            |node: &NodeSpec| skills.iter().all(|skill| node.capabilities.contains(skill));
        if !nodes.iter().any(offers_all) {
            return Err(self.error(
                raw.span(),
                field,
                format!(
                    "no single node offers all of {}, so no job of this kind could run",
                    list(&skills)
                ),
            ));
        }
        Ok(skills)
    }

    fn failures(&self, raw: &RawFailures) -> Result<FailureSpec, ConfigError> {
        let outage_heartbeats_min = self.count(
            &raw.outage_heartbeats_min,
            "failures.outage_heartbeats_min",
            1,
        )?;
        let outage_heartbeats_max = self.count(
            &raw.outage_heartbeats_max,
            "failures.outage_heartbeats_max",
            1,
        )?;
        if outage_heartbeats_min > outage_heartbeats_max {
            return Err(self.error(
                raw.outage_heartbeats_min.span(),
                "failures.outage_heartbeats_min",
                format!(
                    "must not exceed outage_heartbeats_max (got {outage_heartbeats_min}, \
                     outage_heartbeats_max is {outage_heartbeats_max})"
                ),
            ));
        }
        Ok(FailureSpec {
            epoch_ticks: self.count(&raw.epoch_ticks, "failures.epoch_ticks", 1)?,
            outage_ppm: self.ppm(&raw.outage_ppm, "failures.outage_ppm")?,
            outage_heartbeats_min,
            outage_heartbeats_max,
        })
    }

    // --- Values.

    /// A count, a duration or a budget: between `min` and `u32::MAX`.
    fn count(&self, value: &Spanned<i64>, field: &str, min: u32) -> Result<u32, ConfigError> {
        let got = *value.get_ref();
        self.at_least(value, field, i64::from(min))?;
        u32::try_from(got).map_err(|_| {
            self.error(
                value.span(),
                field,
                format!("must be at most {} (got {got})", u32::MAX),
            )
        })
    }

    /// An amount of money: between `min` and `i64::MAX` (TOML integers are signed 64-bit).
    fn amount(&self, value: &Spanned<i64>, field: &str, min: u32) -> Result<u64, ConfigError> {
        self.at_least(value, field, i64::from(min))?;
        // Cannot fail: at_least has ruled out negative values.
        Ok(value.get_ref().unsigned_abs())
    }

    /// Parts per million: 0 (never) to 1_000_000 (always).
    fn ppm(&self, value: &Spanned<i64>, field: &str) -> Result<u32, ConfigError> {
        let got = *value.get_ref();
        self.at_least(value, field, 0)?;
        if got > PPM_MAX {
            return Err(self.error(
                value.span(),
                field,
                format!(
                    "is in parts per million and must be at most {PPM_MAX}, which is \
                     certainty (got {got})"
                ),
            ));
        }
        u32::try_from(got).map_err(|_| self.error(value.span(), field, "out of range"))
    }

    fn at_least(&self, value: &Spanned<i64>, field: &str, min: i64) -> Result<(), ConfigError> {
        let got = *value.get_ref();
        if got < 0 {
            return Err(self.error(
                value.span(),
                field,
                format!("must not be negative (got {got})"),
            ));
        }
        if got < min {
            return Err(self.error(
                value.span(),
                field,
                format!("must be at least {min} (got {got})"),
            ));
        }
        Ok(())
    }

    /// A name of a shard, node, skill or job kind: non-empty, short, `[a-z0-9._-]` only,
    /// so that it can be used as-is in metric names, NATS subjects and file names.
    fn name(&self, value: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
        let name = value.get_ref();
        if name.is_empty() {
            return Err(self.error(value.span(), field, "must not be empty"));
        }
        if name.len() > NAME_LEN_MAX {
            return Err(self.error(
                value.span(),
                field,
                format!(
                    "must be at most {NAME_LEN_MAX} characters long (got {})",
                    name.len()
                ),
            ));
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
            return Err(self.error(
                value.span(),
                field,
                format!(
                    "`{name}` contains {bad:?}; names use only lowercase letters a-z, digits \
                     0-9, `.`, `_` and `-`"
                ),
            ));
        }
        Ok(name.clone())
    }

    /// A list of names; an error points at the item, as `field[index]`.
    fn names(&self, values: &[Spanned<String>], field: &str) -> Result<Vec<String>, ConfigError> {
        values
            .iter()
            .enumerate()
            .map(|(index, value)| self.name(value, &format!("{field}[{index}]")))
            .collect()
    }

    fn no_repeats(&self, values: &[Spanned<String>], field: &str) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for (index, value) in values.iter().enumerate() {
            if !seen.insert(value.get_ref()) {
                return Err(self.error(
                    value.span(),
                    &format!("{field}[{index}]"),
                    format!("`{}` is listed twice", value.get_ref()),
                ));
            }
        }
        Ok(())
    }

    // --- Errors.

    fn error(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line: self.line(span.start),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// A TOML syntax error. What follows a syntax error parses unreliably (a broken header
    /// swallows the tables after it), so the field is looked up in the text up to the end of
    /// the offending line only.
    fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
        let Some(span) = error.span() else {
            return self.error(0..0, TOP_LEVEL, error.message());
        };
        let line_end = self
            .text
            .get(span.start..)
            .and_then(|rest| rest.find('\n'))
            .map_or(self.text.len(), |newline| span.start + newline + 1);
        let before = self.text.get(..line_end).unwrap_or(self.text);
        let mut field = locate(before, span.start);
        if error.message() != "duplicate key" {
            return self.error(span, &field, format!("invalid TOML: {}", error.message()));
        }
        // The span is the second copy of the key, but the recovered document only knows the
        // first: when the path found is the enclosing table, name the key as well.
        let key = self
            .text
            .get(span.clone())
            .unwrap_or("")
            .trim_matches(['"', '\'']);
        if !key.is_empty() && field.rsplit('.').next() != Some(key) {
            field = if field == TOP_LEVEL {
                key.to_owned()
            } else {
                format!("{field}.{key}")
            };
        }
        self.error(
            span,
            &field,
            "is defined twice (duplicate key); each shard, table and field may appear only once",
        )
    }

    /// A serde error (unknown field, missing field, wrong type) from the toml crate: it
    /// knows the span but not the field, so find the field at that span.
    fn schema_error(&self, error: &toml::de::Error) -> ConfigError {
        let Some(span) = error.span() else {
            return self.error(0..0, TOP_LEVEL, tidy(error.message()));
        };
        let field = locate(self.text, span.start);
        // Serde reports a missing field at its table: name the field itself.
        if let Some(missing) = error
            .message()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            let field = if field == TOP_LEVEL {
                missing.to_owned()
            } else {
                format!("{field}.{missing}")
            };
            return self.error(span, &field, "is required but missing from this table");
        }
        self.error(span, &field, tidy(error.message()))
    }
}

/// `a`, `b`, `c` for messages.
fn list(names: &[impl AsRef<str>]) -> String {
    names
        .iter()
        .map(|name| format!("`{}`", name.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serde's wording, in the words of the file: the raw types' names mean nothing to a user.
fn tidy(message: &str) -> String {
    // Integers beyond 64 bits reach serde as i128, which our i64 fields refuse as a "type".
    if let Some(number) = message
        .strip_prefix("invalid type: integer `")
        .and_then(|rest| rest.strip_suffix("` as i128, expected i64"))
    {
        return format!("is far too large (got {number})");
    }
    let mut message = message
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table");
    if let Some(at) = message.find("expected struct ") {
        message.truncate(at);
        message.push_str("expected a table");
    }
    message
}

// ---------------------------------------------------------------------------------------------
// Field paths from byte offsets, for the toml crate's errors.

/// One key or array item of the document, flattened.
struct Place {
    path: String,
    key_span: Option<Range<usize>>,
    value_span: Range<usize>,
    /// A `[table]` or `[[array]]` header: its span is the header, not the whole table.
    header: bool,
}

/// The field path at byte `offset` of `text`, e.g. `nodes[2].capacity`. Parsing recovers
/// from syntax errors, so this works on broken files too, as well as it can.
fn locate(text: &str, offset: usize) -> String {
    let (root, _errors) = DeTable::parse_recoverable(text);
    let mut places = Vec::new();
    flatten_table(text, root.get_ref(), "", &mut places);

    let contains = |span: &Range<usize>| {
        span.contains(&offset) || (span.start == offset && span.end == offset)
    };
    // 1. The smallest key or value around the offset; the deeper one on a tie (an array of
    //    tables and its first item share the first header).
    let around = places
        .iter()
        .filter_map(|place| {
            let spans = place
                .key_span
                .iter()
                .chain(std::iter::once(&place.value_span));
            spans
                .filter(|span| contains(span))
                .map(|span| span.len())
                .min()
                .map(|len| (len, std::cmp::Reverse(place.path.len()), place))
        })
        .min_by_key(|(len, depth, _)| (*len, *depth));
    if let Some((_, _, place)) = around {
        return place.path.clone();
    }
    // 2. A key earlier on the same line (e.g. a value that does not parse).
    let line_start = text
        .get(..offset)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |newline| newline + 1);
    let same_line = places
        .iter()
        .filter_map(|place| place.key_span.as_ref().map(|span| (span.start, place)))
        .filter(|(start, _)| (line_start..=offset).contains(start))
        .max_by_key(|(start, _)| *start);
    if let Some((_, place)) = same_line {
        return place.path.clone();
    }
    // 3. The table whose header comes last before the offset.
    let table = places
        .iter()
        .filter(|place| place.header && place.value_span.start <= offset)
        .max_by_key(|place| place.value_span.start);
    match table {
        Some(place) => place.path.clone(),
        None => TOP_LEVEL.to_owned(),
    }
}

fn flatten_table(text: &str, table: &DeTable<'_>, prefix: &str, places: &mut Vec<Place>) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let header = matches!(value.get_ref(), DeValue::Table(_))
            && text
                .get(value.span())
                .is_some_and(|source| source.starts_with('['));
        places.push(Place {
            path: path.clone(),
            key_span: Some(key.span()),
            value_span: value.span(),
            header,
        });
        flatten_value(text, value.get_ref(), &path, places);
    }
}

fn flatten_value(text: &str, value: &DeValue<'_>, path: &str, places: &mut Vec<Place>) {
    match value {
        DeValue::Table(table) => flatten_table(text, table, path, places),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{index}]");
                let header = matches!(item.get_ref(), DeValue::Table(_))
                    && text
                        .get(item.span())
                        .is_some_and(|source| source.starts_with("[["));
                places.push(Place {
                    path: item_path.clone(),
                    key_span: None,
                    value_span: item.span(),
                    header,
                });
                flatten_value(text, item.get_ref(), &item_path, places);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fabric.toml");
    const ORIGIN: &str = "config/fabric.toml";

    fn default_text() -> String {
        std::fs::read_to_string(DEFAULT_PATH).expect("the default world file is readable")
    }

    /// The default text with `from` (which must occur exactly once) replaced by `to`, and
    /// the 1-based line where the replacement starts.
    fn edited(from: &str, to: &str) -> (String, usize) {
        let text = default_text();
        assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once");
        let at = text.find(from).expect("counted above");
        let line = 1 + text[..at].matches('\n').count();
        (text.replacen(from, to, 1), line)
    }

    /// Line of the first occurrence of `needle` in `text`.
    fn line_of(text: &str, needle: &str) -> usize {
        let at = text.find(needle).expect("needle is in the text");
        1 + text[..at].matches('\n').count()
    }

    /// Parses `text`, expects an error at `line` on `field` whose message contains
    /// `fragment`, and checks that the display names the file, line and field.
    #[track_caller]
    fn expect_error(text: &str, line: usize, field: &str, fragment: &str) {
        let error = parse(text, ORIGIN).expect_err("the world must be refused");
        let shown = error.to_string();
        match &error {
            ConfigError::Invalid {
                origin,
                line: got_line,
                field: got_field,
                message,
            } => {
                assert_eq!(origin, ORIGIN, "{shown}");
                assert_eq!(*got_line, line, "{shown}");
                assert_eq!(got_field, field, "{shown}");
                assert!(message.contains(fragment), "{shown}");
            }
            ConfigError::Read { .. } => panic!("expected Invalid, got {shown}"),
        }
        assert!(
            shown.starts_with(&format!("{ORIGIN}:{line}: {field}: ")),
            "{shown}"
        );
    }

    #[test]
    fn default_world_loads_in_file_order() {
        let world = load(Path::new(DEFAULT_PATH)).expect("the default world is valid");
        let shards: Vec<&str> = world.shards.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(shards, ["earth", "luna", "mars", "helios"]);
        let nodes: Vec<&str> = world.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            nodes,
            [
                "earth.core-alpha",
                "earth.edge-europa",
                "luna.nav-station",
                "mars.regolith-cradle",
                "mars.gpu-helion",
                "helios.solaris-array",
            ]
        );
        assert_eq!(world.checkpoint_interval_ticks, 50);
        assert_eq!(world.workload.load_percent, 90);
        assert_eq!(world.failures.epoch_ticks, 200);
        assert_eq!(world.failures.outage_ppm, 300_000);

        let earth = &world.shards[0];
        assert_eq!(earth.queue_budget, 6000);
        assert_eq!(earth.latency_budget_ms, 120);
        assert_eq!(earth.spillover, ["luna", "mars"]);
        assert_eq!(world.shards[2].spillover, ["earth", "helios"]);
        let core = &world.nodes[0];
        assert_eq!(
            (
                core.capacity,
                core.max_concurrency,
                core.heartbeat_interval_ticks
            ),
            (24, 24, 12)
        );
        assert_eq!(core.price_micros_per_hour, 2_400_000);
    }

    #[test]
    fn default_world_fits_its_own_budgets() {
        let world = parse(&default_text(), ORIGIN).expect("the default world is valid");
        for node in &world.nodes {
            let shard = world
                .shards
                .iter()
                .find(|s| s.name == node.region)
                .expect("validated");
            assert!(node.latency_ms <= shard.latency_budget_ms, "{}", node.name);
            assert!(
                node.reputation_ppm >= shard.reputation_floor_ppm,
                "{}",
                node.name
            );
        }
        let weight_total: u32 = world.workload.kinds.iter().map(|k| k.weight).sum();
        let mut weight_elsewhere = 0;
        for kind in &world.workload.kinds {
            assert!((1..=12).contains(&kind.duration_ticks_min), "{}", kind.name);
            assert!((1..=12).contains(&kind.duration_ticks_max), "{}", kind.name);
            let local = world.nodes.iter().any(|node| {
                node.region == kind.shard
                    && kind.skills.iter().all(|s| node.capabilities.contains(s))
            });
            if !local {
                weight_elsewhere += kind.weight;
            }
        }
        // A few jobs must spill over to find a node, not many.
        let percent_elsewhere = 100 * weight_elsewhere / weight_total;
        assert!((2..=5).contains(&percent_elsewhere), "{percent_elsewhere}%");
    }

    #[test]
    fn checkpoints_default_when_absent() {
        let (text, _) = edited("[checkpoints]\ninterval_ticks = 50\n", "");
        let world = parse(&text, ORIGIN).expect("valid without [checkpoints]");
        assert_eq!(
            world.checkpoint_interval_ticks,
            CHECKPOINT_INTERVAL_TICKS_DEFAULT
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = load(Path::new("no/such/fabric.toml")).expect_err("no such file");
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(error
            .to_string()
            .starts_with("no/such/fabric.toml: could not read"));
    }

    #[test]
    fn syntax_error() {
        let (text, line) = edited("latency_budget_ms = 120\n", "latency_budget_ms = \n");
        expect_error(&text, line, "shards.earth.latency_budget_ms", "");
        let (text, line) = edited("[shards.mars]\n", "[shards.mars\n");
        expect_error(&text, line, "shards.mars", "unclosed table");
        let (text, line) = edited("latency_ms = 300\n", "latency_ms = 300\nlatency_ms 300\n");
        expect_error(&text, line + 1, "nodes[3]", "key with no value");
        let (text, line) = edited(
            "capabilities = [\"gpu\", \"astronomy\"]",
            "capabilities = [\"gpu\" \"astronomy\"]",
        );
        expect_error(&text, line, "nodes[5].capabilities[1]", "missing comma");
        let (text, line) = edited(
            "quota_window_ticks = 100\n\n[shards.luna]",
            "quota_window_ticks = 100\nquota_window_ticks = 10\n\n[shards.luna]",
        );
        expect_error(
            &text,
            line + 1,
            "shards.earth.treaty.quota_window_ticks",
            "defined twice",
        );
    }

    #[test]
    fn unknown_field() {
        let (text, line) = edited(
            "name = \"luna.nav-station\"\n",
            "name = \"luna.nav-station\"\ncolour = \"grey\"\n",
        );
        expect_error(&text, line + 1, "nodes[2].colour", "unknown field `colour`");
        let (text, line) = edited("[failures]\n", "[failure]\n");
        expect_error(&text, line, "failure", "unknown field `failure`");
    }

    #[test]
    fn missing_field() {
        let (text, _) = edited("capacity = 18\n", "");
        let line = line_of(&text, "name = \"mars.regolith-cradle\"") - 1;
        expect_error(&text, line, "nodes[3].capacity", "required");
        let (text, line) = edited(
            "quota_window_ticks = 100\n\n[shards.luna]",
            "\n[shards.luna]",
        );
        let header = line_of(&text, "[shards.earth.treaty]");
        assert!(header < line);
        expect_error(
            &text,
            header,
            "shards.earth.treaty.quota_window_ticks",
            "required",
        );
    }

    #[test]
    fn wrong_type() {
        let (text, line) = edited("latency_ms = 150\n", "latency_ms = \"fast\"\n");
        expect_error(&text, line, "nodes[2].latency_ms", "expected an integer");
        let (text, line) = edited("epoch_ticks = 200\n", "epoch_ticks = 2.5\n");
        expect_error(&text, line, "failures.epoch_ticks", "expected an integer");
        let (text, line) = edited("queue_budget = 2200", "queue_budget = 99999999999999999999");
        expect_error(&text, line, "shards.helios.queue_budget", "far too large");
        expect_error("failures = 5\n", 1, "failures", "expected a table");
        let (text, line) = edited(
            "capabilities = [\"gpu\", \"astronomy\"]",
            "capabilities = [\"gpu\", 7]",
        );
        expect_error(&text, line, "nodes[5].capabilities[1]", "expected a string");
        let (text, line) = edited("spillover = [\"mars\"]\n", "spillover = \"mars\"\n");
        expect_error(&text, line, "shards.helios.spillover", "expected an array");
    }

    #[test]
    fn negative_numbers() {
        let (text, line) = edited("queue_budget = 6000\n", "queue_budget = -5\n");
        expect_error(
            &text,
            line,
            "shards.earth.queue_budget",
            "must not be negative (got -5)",
        );
        let (text, line) = edited("budget_micros = 3_000\n", "budget_micros = -3_000\n");
        expect_error(
            &text,
            line,
            "workload.kinds[3].budget_micros",
            "must not be negative (got -3000)",
        );
        let (text, line) = edited(
            "price_micros_per_hour = 1_600_000",
            "price_micros_per_hour = -1",
        );
        expect_error(&text, line, "nodes[1].price_micros_per_hour", "negative");
    }

    #[test]
    fn zero_where_it_makes_no_sense() {
        let cases = [
            ("latency_budget_ms = 180\n", "shards.luna.latency_budget_ms"),
            ("max_concurrency = 10\n", "nodes[2].max_concurrency"),
            (
                "heartbeat_interval_ticks = 9\n",
                "nodes[5].heartbeat_interval_ticks",
            ),
            ("capacity = 32\n", "nodes[4].capacity"),
            ("latency_ms = 40\n", "nodes[0].latency_ms"),
            ("epoch_ticks = 200\n", "failures.epoch_ticks"),
            (
                "outage_heartbeats_min = 1\n",
                "failures.outage_heartbeats_min",
            ),
            ("interval_ticks = 50\n", "checkpoints.interval_ticks"),
            ("load_percent = 90\n", "workload.load_percent"),
        ];
        for (from, field) in cases {
            let key = from.split(" = ").next().expect("key = value");
            let (text, line) = edited(from, &format!("{key} = 0\n"));
            expect_error(&text, line, field, "must be at least 1 (got 0)");
        }
        // Finance settlement, the first kind, is not the only one lasting 2 to 6 ticks.
        let text =
            default_text().replacen("duration_ticks_min = 2\n", "duration_ticks_min = 0\n", 1);
        let line = line_of(&text, "duration_ticks_min = 0");
        expect_error(
            &text,
            line,
            "workload.kinds[0].duration_ticks_min",
            "at least 1",
        );
    }

    #[test]
    fn weights_summing_to_zero() {
        let text = default_text();
        let zeroed: String = text
            .lines()
            .map(|line| {
                if line.starts_with("weight = ") {
                    "weight = 0".to_owned()
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        // The first table header, not the mention in the comments.
        let line = line_of(&zeroed, "\n[[workload.kinds]]") + 1;
        expect_error(&zeroed, line, "workload.kinds", "sum to 0");
    }

    #[test]
    fn numbers_over_u32() {
        let (text, line) = edited(
            "node_quota_jobs = 100_000\nquota_window_ticks = 100\n\n[shards.mars]",
            "node_quota_jobs = 5_000_000_000\nquota_window_ticks = 100\n\n[shards.mars]",
        );
        expect_error(
            &text,
            line,
            "shards.luna.treaty.node_quota_jobs",
            "must be at most 4294967295 (got 5000000000)",
        );
    }

    #[test]
    fn ppm_over_a_million() {
        let (text, line) = edited("reputation_ppm = 930_000", "reputation_ppm = 1_200_000");
        expect_error(&text, line, "nodes[5].reputation_ppm", "at most 1000000");
        let (text, line) = edited("outage_ppm = 300_000", "outage_ppm = 1_000_001");
        expect_error(&text, line, "failures.outage_ppm", "at most 1000000");
        let (text, line) = edited(
            "reputation_floor_ppm = 700_000",
            "reputation_floor_ppm = 2_000_000",
        );
        expect_error(
            &text,
            line,
            "shards.luna.treaty.reputation_floor_ppm",
            "parts per million",
        );
    }

    #[test]
    fn max_concurrency_over_capacity() {
        let (text, line) = edited("max_concurrency = 20\n", "max_concurrency = 40\n");
        expect_error(&text, line, "nodes[4].max_concurrency", "capacity is 32");
    }

    #[test]
    fn duration_min_over_max() {
        let (text, line) = edited(
            "duration_ticks_min = 6\nduration_ticks_max = 12\n",
            "duration_ticks_min = 13\nduration_ticks_max = 12\n",
        );
        expect_error(
            &text,
            line,
            "workload.kinds[10].duration_ticks_min",
            "duration_ticks_max is 12",
        );
        let (text, line) = edited("outage_heartbeats_min = 1", "outage_heartbeats_min = 7");
        expect_error(
            &text,
            line,
            "failures.outage_heartbeats_min",
            "must not exceed",
        );
    }

    #[test]
    fn node_in_unknown_region() {
        let (text, line) = edited(
            "name = \"luna.nav-station\"\nregion = \"luna\"",
            "name = \"venus.nav-station\"\nregion = \"venus\"",
        );
        expect_error(&text, line + 1, "nodes[2].region", "unknown region `venus`");
    }

    #[test]
    fn node_name_without_its_region() {
        let (text, line) = edited("name = \"luna.nav-station\"", "name = \"nav-station\"");
        expect_error(&text, line, "nodes[2].name", "`luna.my-node`");
        let (text, line) = edited("name = \"luna.nav-station\"", "name = \"luna.\"");
        expect_error(&text, line, "nodes[2].name", "starts with its region");
        let (text, line) = edited("name = \"luna.nav-station\"", "name = \"lunar.nav\"");
        expect_error(&text, line, "nodes[2].name", "got `lunar.nav`");
    }

    #[test]
    fn spillover_to_a_missing_shard_or_itself() {
        let (text, line) = edited(
            "spillover = [\"earth\", \"helios\"]",
            "spillover = [\"earth\", \"venus\"]",
        );
        expect_error(
            &text,
            line,
            "shards.mars.spillover[1]",
            "unknown shard `venus`",
        );
        let (text, line) = edited("spillover = [\"mars\"]", "spillover = [\"helios\"]");
        expect_error(&text, line, "shards.helios.spillover[0]", "itself");
        let (text, line) = edited("spillover = [\"mars\"]", "spillover = [\"mars\", \"mars\"]");
        expect_error(&text, line, "shards.helios.spillover[1]", "listed twice");
    }

    #[test]
    fn job_kind_on_unknown_shard() {
        let (text, _) = edited(
            "name = \"observation.survey\"\nshard = \"luna\"",
            "name = \"observation.survey\"\nshard = \"moon\"",
        );
        let line = line_of(&text, "shard = \"moon\"");
        expect_error(
            &text,
            line,
            "workload.kinds[7].shard",
            "unknown shard `moon`",
        );
    }

    #[test]
    fn job_kind_skills_no_node_has() {
        let (text, line) = edited(
            "skills = [\"vision\"]",
            "skills = [\"vision\", \"telepathy\"]",
        );
        expect_error(
            &text,
            line,
            "workload.kinds[12].skills[1]",
            "skill `telepathy`",
        );
        // Each skill exists, but on different nodes.
        let (text, line) = edited(
            "skills = [\"vision\"]",
            "skills = [\"vision\", \"astronomy\"]",
        );
        expect_error(&text, line, "workload.kinds[12].skills", "no single node");
    }

    #[test]
    fn duplicate_shard_or_node_or_kind() {
        let text = default_text().replace("[shards.luna]\n", "[shards.earth]\n");
        let line = line_of(&text, "[shards.earth]\nqueue_budget = 2400");
        expect_error(&text, line, "shards.earth", "defined twice");

        let (text, line) = edited(
            "name = \"mars.gpu-helion\"",
            "name = \"mars.regolith-cradle\"",
        );
        let first = line_of(&text, "name = \"mars.regolith-cradle\"");
        expect_error(
            &text,
            line,
            "nodes[4].name",
            &format!("already defined on line {first}"),
        );

        let (text, line) = edited(
            "name = \"gpu.analytics\"",
            "name = \"astronomy.solar-flare\"",
        );
        expect_error(&text, line, "workload.kinds[15].name", "already defined");
    }

    #[test]
    fn regions_served_names_an_unknown_shard() {
        let (text, line) = edited(
            "regions_served = [\"earth\", \"luna\"]",
            "regions_served = [\"earth\", \"titan\"]",
        );
        expect_error(
            &text,
            line,
            "shards.luna.treaty.regions_served[1]",
            "unknown region `titan`",
        );
    }

    #[test]
    fn bad_names() {
        let (text, line) = edited("name = \"general.batch\"", "name = \"\"");
        expect_error(&text, line, "workload.kinds[2].name", "must not be empty");
        let (text, line) = edited("name = \"general.batch\"", "name = \"General Batch\"");
        expect_error(&text, line, "workload.kinds[2].name", "'G'");
        let (text, line) = edited(
            "capabilities = [\"navigation\", \"observation\"]",
            "capabilities = [\"navigation\", \"observation!\"]",
        );
        expect_error(&text, line, "nodes[2].capabilities[1]", "'!'");
        let text = default_text().replace("[shards.helios", "[shards.Helios");
        let line = line_of(&text, "[shards.Helios]");
        expect_error(&text, line, "shards.Helios", "'H'");
        let long = "x".repeat(NAME_LEN_MAX + 1);
        let (text, line) = edited("name = \"general.batch\"", &format!("name = \"{long}\""));
        expect_error(
            &text,
            line,
            "workload.kinds[2].name",
            "at most 64 characters",
        );
    }

    #[test]
    fn small_documents() {
        expect_error("", 1, "shards", "required");
        let text = "shards = {}\nnodes = []\n[workload]\nload_percent = 90\nkinds = []\n\
                    [failures]\nepoch_ticks = 200\noutage_ppm = 0\noutage_heartbeats_min = 1\n\
                    outage_heartbeats_max = 1\n";
        expect_error(text, 1, "shards", "at least one shard");
    }

    #[test]
    fn more_shards_than_a_job_can_remember_are_refused() {
        let mut text = default_text();
        for extra in 0..61 {
            text.push_str(&format!(
                "\n[shards.extra{extra}]\nqueue_budget = 10\nlatency_budget_ms = 100\nspillover = []\nspecialties = []\n[shards.extra{extra}.treaty]\nreputation_floor_ppm = 0\nregions_served = []\nnode_quota_jobs = 1\nquota_window_ticks = 1\n"
            ));
        }
        let shown = parse(&text, ORIGIN).expect_err("65 shards").to_string();
        assert!(
            shown.contains(": shards: 65 shards, over the limit of 64"),
            "{shown}"
        );
    }
}
