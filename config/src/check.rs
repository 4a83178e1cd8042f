//! Validation: spans turned into lines, raw values into checked ones, cross-references
//! (regions, spillover targets, skills) resolved; the first problem found wins.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use toml::Spanned;

use crate::locate::{locate, TOP_LEVEL};
use crate::raw::{
    RawFailures, RawJobKind, RawNode, RawOwners, RawShard, RawTreaty, RawWorkload, RawWorld,
};
use crate::world::{
    FailureSpec, JobKindSpec, NodeSpec, OwnersSpec, ShardSpec, WorkloadSpec, World,
    VERIFY_PPM_DEFAULT,
};
use crate::{ConfigError, CHECKPOINT_INTERVAL_TICKS_DEFAULT, OWNERS_MAX};

/// Parts per million of certainty.
const PPM_MAX: i64 = 1_000_000;

/// Names travel in every event that mentions a shard, node or job kind: keep them short.
pub(crate) const NAME_LEN_MAX: usize = 64;

/// Ten times what the fabric can complete is already a queue that only grows; more is a typo.
const LOAD_PERCENT_MAX: i64 = 1_000;

/// Turns spans into lines and raw values into checked ones; the first problem found wins.
pub(crate) struct Checker<'a> {
    /// The whole file.
    pub(crate) text: &'a str,
    /// Its name in messages.
    pub(crate) origin: &'a str,
}

impl Checker<'_> {
    pub(crate) fn world(&self, raw: RawWorld) -> Result<World, ConfigError> {
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
            Some(owners) => self.owners(owners)?,
            None => OwnersSpec::default(),
        };
        let verify_ppm = match &raw.verification {
            Some(verification) => {
                self.ppm(&verification.fraction_ppm, "verification.fraction_ppm")?
            }
            None => VERIFY_PPM_DEFAULT,
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

        entries
            .into_iter()
            .map(|(name, shard)| self.shard(name.get_ref(), shard, &names))
            .collect()
    }

    fn owners(&self, owners: &RawOwners) -> Result<OwnersSpec, ConfigError> {
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
                format!(
                    "a threshold of {threshold} needs at least as many owners (there are {count})"
                ),
            ));
        }
        Ok(OwnersSpec { count, threshold })
    }

    /// One shard; `names` are all the shards', for its spillover targets and treaty regions.
    fn shard(
        &self,
        name: &String,
        shard: &RawShard,
        names: &[String],
    ) -> Result<ShardSpec, ConfigError> {
        let at = format!("shards.{name}");
        let spillover = self.names(&shard.spillover, &format!("{at}.spillover"))?;
        for (index, (target, raw_target)) in spillover.iter().zip(&shard.spillover).enumerate() {
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
                    format!("unknown shard `{target}`; the shards are {}", list(names)),
                ));
            }
        }
        self.no_repeats(&shard.spillover, &format!("{at}.spillover"))?;
        let treaty_at = format!("{at}.treaty");
        let treaty = &shard.treaty;
        let regions_served = self.regions_served(treaty, &treaty_at, names)?;
        Ok(ShardSpec {
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
        })
    }

    /// A treaty's regions: shard names, each once.
    fn regions_served(
        &self,
        treaty: &RawTreaty,
        treaty_at: &str,
        names: &[String],
    ) -> Result<Vec<String>, ConfigError> {
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
                        list(names)
                    ),
                ));
            }
        }
        self.no_repeats(
            &treaty.regions_served,
            &format!("{treaty_at}.regions_served"),
        )?;
        Ok(regions_served)
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
            let kind = self.kind(kind, &at, name, shard_names, nodes)?;
            weight_sum += u64::from(kind.weight);
            kinds.push(kind);
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

    /// One job kind, named `name` (already checked), at field path `at`.
    fn kind(
        &self,
        kind: &RawJobKind,
        at: &str,
        name: String,
        shard_names: &[&str],
        nodes: &[NodeSpec],
    ) -> Result<JobKindSpec, ConfigError> {
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
            Some(kernel) => Some(self.kernel(kernel, &format!("{at}.kernel"), &skills)?),
        };
        Ok(JobKindSpec {
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
            budget_micros: self.amount(&kind.budget_micros, &format!("{at}.budget_micros"), 1)?,
            failure_ppm: self.ppm(&kind.failure_ppm, &format!("{at}.failure_ppm"))?,
        })
    }

    /// A GPU kind's kernel: a known one, on a kind whose skills include `gpu`.
    fn kernel(
        &self,
        kernel: &Spanned<String>,
        field: &str,
        skills: &[String],
    ) -> Result<String, ConfigError> {
        if fabric_gpu_kernels::jobs::JobKernel::from_id(kernel.get_ref()).is_none() {
            return Err(self.error(
                kernel.span(),
                field,
                format!(
                    "unknown kernel `{}`; the kernels are embed, rerank, simulate, blake3",
                    kernel.get_ref()
                ),
            ));
        }
        if !skills.iter().any(|skill| skill == "gpu") {
            return Err(self.error(
                kernel.span(),
                field,
                "a kind that runs a kernel needs the skill `gpu`, so only GPU nodes take it",
            ));
        }
        Ok(kernel.get_ref().clone())
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
    pub(crate) fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
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
    pub(crate) fn schema_error(&self, error: &toml::de::Error) -> ConfigError {
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
