//! The mission report: one self-contained HTML page (inline SVG charts, no fetch of any kind)
//! and a Mermaid drawing of the topology, both from one replay of the log.

mod charts;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fabric_audit::{Observer, Replay, Sample, Sampled, Step};
use fabric_events::{Body, Event, Hash32, KeyOrigin, OwnerAction};
use fabric_ledger::LedgerReader;
use fabric_projections::state::{JobStatus, State};
use serde_json::Value;

use crate::fs::{write_atomically, WriteError};
use crate::{ReportError, RunInfo};
use charts::{
    latency_chart, spill_matrix, timeline, topology_svg, utilisation_chart, LineChart, Series,
};

/// Nodes drawn one row each in the utilisation chart; larger fleets are drawn per shard.
const NODE_ROWS_MAX: usize = 48;
/// Latency histogram bins per shard.
const LATENCY_BINS: usize = 24;

/// Writes `report.html` and `topology.mmd` into a run's report folder.
pub fn write(
    out: &Path,
    chronicle: &Chronicle,
    headline: &Headline,
    state: &State,
) -> Result<(), WriteError> {
    write_page(&out.join("report.html"), chronicle, headline, state).map(|_| ())
}

/// Writes the page to `path` and the Mermaid topology beside it (`topology.mmd`); returns the
/// latter's path.
pub fn write_page(
    path: &Path,
    chronicle: &Chronicle,
    headline: &Headline,
    state: &State,
) -> Result<PathBuf, WriteError> {
    write_atomically(path, chronicle.page(headline, state).as_bytes())?;
    let mermaid = path.with_file_name("topology.mmd");
    write_atomically(&mermaid, topology_mermaid(state).as_bytes())?;
    Ok(mermaid)
}

/// The log a page is drawn from, and the run it belongs to.
pub struct PageSource<'a> {
    /// The run's label, seed and jobs.
    pub run: &'a RunInfo<'a>,
    /// The log.
    pub reader: &'a LedgerReader,
    /// Entries of the log to replay (all of them).
    pub size: u64,
    /// The log's Merkle root at `size`.
    pub root: Hash32,
    /// The run's `summary.json`, for its wall-clock figures and its last tick.
    pub summary: Option<&'a Value>,
}

/// `fabric report`: replays the log and writes the page to `path` and `topology.mmd` beside
/// it; returns the latter's path. The samples fall every
/// [`RunSpec::sample_every_ticks`](fabric_sim::RunSpec::sample_every_ticks), up to the
/// summary's last tick (else the last event's).
pub fn write_from_log(path: &Path, source: &PageSource<'_>) -> Result<PathBuf, ReportError> {
    let every_ticks = source.run.spec.sample_every_ticks();
    let mut sampled = Sampled::new(every_ticks, Chronicle::new(every_ticks));
    let mut last = LastTick(0);
    let mut replay = Replay::genesis();
    replay.read(source.reader, source.size, (&mut sampled, &mut last))?;
    let last_tick = source
        .summary
        .and_then(|s| s["ticks"].as_u64())
        .unwrap_or(last.0);
    sampled.finish(last_tick, replay.state());
    let chronicle = sampled.into_inner();
    let state = replay.into_state();
    let headline = Headline::new(source.run, &state, source.root, source.size, source.summary)
        .with_key_origin(chronicle.key_origin());
    Ok(write_page(path, &chronicle, &headline, &state)?)
}

/// The tick of the last event of the log.
struct LastTick(u64);

impl Observer for LastTick {
    fn before(&mut self, step: &Step<'_>, _: &State) {
        self.0 = step.event.header.tick;
    }
}

/// The figures at the top of the page.
pub struct Headline {
    rows: Vec<(&'static str, &'static str, String)>,
}

impl Headline {
    /// From the run's parameters, its final state and log (`events` entries with Merkle root
    /// `root`), and (for the wall-clock figures) its summary when there is one.
    pub fn new(
        run: &RunInfo<'_>,
        state: &State,
        root: Hash32,
        events: u64,
        summary: Option<&Value>,
    ) -> Self {
        let m = state.metrics();
        let mut rows = vec![
            ("label", "run", run.label.to_owned()),
            ("seed", "seed", run.spec.seed.to_string()),
            ("jobs", "jobs", run.spec.jobs.to_string()),
            ("events", "events signed and stored", events.to_string()),
            ("completed", "jobs completed", m.completed.to_string()),
            ("failed", "jobs failed", m.dropped.to_string()),
            ("spillovers", "spillovers", m.spillovers.to_string()),
            ("requeues", "requeues", m.requeues.to_string()),
            ("nodes", "nodes", state.nodes().len().to_string()),
            ("merkle_root", "Merkle root", root.to_hex()),
        ];
        match summary {
            Some(summary) => {
                let wall_ms = summary["wall_ms"].as_u64().unwrap_or(0);
                let events_per_s = summary["throughput"]["events_per_s"]
                    .as_f64()
                    .unwrap_or(0.0);
                rows.push(("wall_ms", "wall time (ms)", wall_ms.to_string()));
                rows.push((
                    "events_per_s",
                    "events per second",
                    format!("{events_per_s:.0}"),
                ));
            }
            None => rows.push((
                "wall_ms",
                "wall time",
                "not recorded (no summary.json)".to_owned(),
            )),
        }
        Self { rows }
    }

    /// Adds where the fabric's keys come from (a simulation's are public), when known.
    pub fn with_key_origin(mut self, origin: Option<KeyOrigin>) -> Self {
        if let Some(origin) = origin {
            self.rows.push(("key_origin", "keys", origin.to_string()));
        }
        self
    }
}

/// Each event before its fold: spills, latencies, marks.
impl Observer for Chronicle {
    fn before(&mut self, step: &Step<'_>, state: &State) {
        self.see(step.event, state);
    }
}

/// Each sample tick: the charts' series.
impl Sample for Chronicle {
    fn sample(&mut self, tick: u64, state: &State) {
        self.sample_state(tick, state);
    }
}
/// A moment of the run worth marking on the time axis.
struct Mark {
    tick: u64,
    label: String,
}

/// What the charts need, gathered in one replay.
pub struct Chronicle {
    every_ticks: u64,
    ticks: Vec<u64>,
    /// Per shard, per sample: (queued, running, completed so far).
    shard_series: BTreeMap<String, Vec<(u64, u64, u64)>>,
    budgets: BTreeMap<String, u64>,
    /// Rows (node or shard) × samples: (utilisation 0..=1, any unhealthy).
    utilisation: Vec<(String, Vec<(f64, bool)>)>,
    spills: BTreeMap<(String, String), u64>,
    marks: Vec<Mark>,
    /// Per shard: latency in ticks → jobs.
    latency: BTreeMap<String, BTreeMap<u64, u64>>,
    /// Where the fabric's keys come from, as its genesis says.
    key_origin: Option<KeyOrigin>,
}

impl Chronicle {
    /// An empty chronicle for samples every `every_ticks`.
    pub fn new(every_ticks: u64) -> Self {
        Self {
            every_ticks,
            ticks: Vec::new(),
            shard_series: BTreeMap::new(),
            budgets: BTreeMap::new(),
            utilisation: Vec::new(),
            spills: BTreeMap::new(),
            marks: Vec::new(),
            latency: BTreeMap::new(),
            key_origin: None,
        }
    }

    /// Where the fabric's keys come from, once its genesis was seen.
    pub fn key_origin(&self) -> Option<KeyOrigin> {
        self.key_origin
    }

    /// Sees an event before it is folded into `state`.
    fn see(&mut self, event: &Event, state: &State) {
        let tick = event.header.tick;
        match &event.body {
            Body::FabricGenesis(genesis) => self.key_origin = Some(genesis.key_origin),
            Body::JobSpilled(body) => {
                *self
                    .spills
                    .entry((body.from_shard.clone(), body.to_shard.clone()))
                    .or_default() += 1;
            }
            Body::JobReceipt(body) => {
                if let Some(ix) = state.job_ix(body.job) {
                    let job = &state.jobs()[ix as usize];
                    let shard = &state.shards()[job.shard as usize].name;
                    *self
                        .latency
                        .entry(shard.clone())
                        .or_default()
                        .entry(tick.saturating_sub(job.submitted_tick))
                        .or_default() += 1;
                }
            }
            Body::Checkpoint(body) => self.marks.push(Mark {
                tick,
                label: format!("checkpoint at {} events", body.tree_size),
            }),
            // Registrations (every client, shard and node at genesis) are the world's
            // shape, drawn in the topology, not steering marks on the time axis.
            Body::OwnerCommand(body)
                if !matches!(
                    body.action,
                    OwnerAction::RegisterClient { .. }
                        | OwnerAction::RegisterShard { .. }
                        | OwnerAction::RegisterNode { .. }
                ) =>
            {
                self.marks.push(Mark {
                    tick,
                    label: format!("owner: {}", owner_action_name(&body.action)),
                })
            }
            _ => {}
        }
    }

    /// Sees the state after a sample tick.
    fn sample_state(&mut self, tick: u64, state: &State) {
        self.ticks.push(tick);
        for shard in state.shards() {
            self.shard_series
                .entry(shard.name.clone())
                .or_default()
                .push((shard.queued(), shard.running, shard.counters.completed));
            self.budgets
                .insert(shard.name.clone(), u64::from(shard.queue_budget));
        }
        let per_node = state.nodes().len() <= NODE_ROWS_MAX;
        let rows: Vec<(String, f64, bool)> = if per_node {
            state
                .nodes()
                .iter()
                .map(|node| {
                    (
                        node.name.clone(),
                        node.running.len() as f64 / f64::from(node.max_concurrency.max(1)),
                        !node.healthy,
                    )
                })
                .collect()
        } else {
            state
                .shards()
                .iter()
                .map(|shard| {
                    let (mut used, mut slots, mut down) = (0u64, 0u64, false);
                    for node in &shard.nodes {
                        let node = &state.nodes()[*node as usize];
                        used += node.running.len() as u64;
                        slots += u64::from(node.max_concurrency);
                        down |= !node.healthy;
                    }
                    (
                        format!("{} (all nodes)", shard.name),
                        used as f64 / slots.max(1) as f64,
                        down,
                    )
                })
                .collect()
        };
        for (index, (name, used, down)) in rows.into_iter().enumerate() {
            if self.utilisation.len() <= index {
                self.utilisation.push((name, Vec::new()));
            }
            self.utilisation[index].1.push((used.min(1.0), down));
        }
    }

    /// The whole page.
    pub fn page(&self, headline: &Headline, state: &State) -> String {
        let mut html = String::new();
        page_head(&mut html, headline);
        let x_max = self.ticks.last().copied().unwrap_or(1).max(1) as f64;
        let marks: Vec<(f64, String)> = self
            .marks
            .iter()
            .map(|mark| (mark.tick as f64, mark.label.clone()))
            .collect();
        self.shards_section(&mut html, x_max, &marks);
        self.throughput_section(&mut html, x_max, &marks);

        html.push_str("<h2>Spillover</h2>\n");
        let shards: Vec<String> = state.shards().iter().map(|s| s.name.clone()).collect();
        html.push_str(&spill_matrix(&shards, &self.spills));

        html.push_str("<h2>Nodes</h2>\n");
        html.push_str(&utilisation_chart(
            &self.utilisation,
            &self.ticks,
            self.every_ticks,
        ));

        html.push_str("<h2>Latency</h2>\n<div class=\"grid\">\n");
        for shard in &shards {
            let empty = BTreeMap::new();
            html.push_str(&latency_chart(
                shard,
                self.latency.get(shard).unwrap_or(&empty),
            ));
        }
        html.push_str("</div>\n");

        html.push_str("<h2>Topology</h2>\n");
        html.push_str(&topology_svg(state));
        page_foot(&mut html, shards.len(), state);
        html
    }

    /// Each shard's queue depth and running jobs over time.
    fn shards_section(&self, html: &mut String, x_max: f64, marks: &[(f64, String)]) {
        html.push_str("<h2>Shards over time</h2>\n<div class=\"grid\">\n");
        for (shard, series) in &self.shard_series {
            let budget = self.budgets.get(shard).copied().unwrap_or(0) as f64;
            let points = |pick: fn(&(u64, u64, u64)) -> u64| -> Vec<(f64, f64)> {
                self.ticks
                    .iter()
                    .zip(series)
                    .map(|(tick, sample)| (*tick as f64, pick(sample) as f64))
                    .collect()
            };
            let chart = LineChart {
                id: format!("queue-{}", slug(shard)),
                title: format!("{shard}: queue depth and running jobs"),
                x_label: "tick".to_owned(),
                y_label: "jobs".to_owned(),
                x_max,
                series: vec![
                    Series::new("queued", points(|s| s.0), 0),
                    Series::new("running", points(|s| s.1), 1),
                    Series::new("queue budget", vec![(0.0, budget), (x_max, budget)], 2),
                ],
                marks: marks.to_vec(),
            };
            html.push_str(&chart.render());
        }
        html.push_str("</div>\n");
    }

    /// Jobs completed per tick, all shards, and the timeline of marks.
    fn throughput_section(&self, html: &mut String, x_max: f64, marks: &[(f64, String)]) {
        html.push_str("<h2>Throughput</h2>\n");
        let mut completed_rate = Vec::new();
        for (index, tick) in self.ticks.iter().enumerate().skip(1) {
            let total = |i: usize| -> u64 { self.shard_series.values().map(|s| s[i].2).sum() };
            let span = (tick - self.ticks[index - 1]).max(1) as f64;
            completed_rate.push((
                *tick as f64,
                (total(index) - total(index - 1)) as f64 / span,
            ));
        }
        html.push_str(
            &LineChart {
                id: "completed-per-tick".to_owned(),
                title: "Jobs completed per tick, all shards".to_owned(),
                x_label: "tick".to_owned(),
                y_label: "jobs per tick".to_owned(),
                x_max,
                series: vec![Series::new("completed", completed_rate, 0)],
                marks: marks.to_vec(),
            }
            .render(),
        );
        html.push_str(&timeline(&self.marks, x_max));
    }
}

/// The page up to its headline table.
fn page_head(html: &mut String, headline: &Headline) {
    let title = headline
        .rows
        .iter()
        .find(|(key, _, _)| *key == "label")
        .map_or("run", |(_, _, value)| value.as_str());
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Fabric mission report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Fabric mission report</h1>\n<p class=\"sub\">{}</p>\n",
        escape(title),
        escape(title)
    );
    html.push_str("<table class=\"headline\" id=\"headline\">\n");
    for (key, label, value) in &headline.rows {
        let _ = writeln!(
            html,
            "<tr><th>{}</th><td data-field=\"{key}\">{}</td></tr>",
            escape(label),
            escape(value)
        );
    }
    html.push_str("</table>\n");
}

/// The closing line and the end of the page.
fn page_foot(html: &mut String, shards: usize, state: &State) {
    let queued = state
        .live_jobs()
        .filter(|job| job.status == JobStatus::Queued)
        .count();
    let _ = write!(
        html,
        "<p class=\"foot\">{} shards, {} nodes, {} jobs still queued at the end. \
         Every figure on this page is a function of the run's signed log.</p>\n</body>\n</html>\n",
        shards,
        state.nodes().len(),
        queued
    );
}

const STYLE: &str =
    "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#111}\
h1{margin-bottom:0}.sub{color:#444;margin-top:.2em}\
table.headline{border-collapse:collapse;margin:1em 0}\
table.headline th{text-align:left;padding:.2em 1em .2em 0;font-weight:normal;color:#444}\
table.headline td{font-family:monospace;padding:.2em 0}\
.grid{display:flex;flex-wrap:wrap;gap:1em}svg{max-width:100%;height:auto}\
.foot{color:#444;font-size:.9em}@media print{.grid{display:block}h2{page-break-before:auto}}";

/// The topology in Mermaid, for pasting into documents.
pub fn topology_mermaid(state: &State) -> String {
    let mut out = String::from("flowchart LR\n");
    for shard in state.shards() {
        let id = slug(&shard.name);
        let _ = writeln!(out, "  subgraph {id}_shard[\"{}\"]", shard.name);
        let _ = writeln!(out, "    {id}((\"{}\"))", shard.name);
        if shard.nodes.len() <= NODE_ROWS_MAX {
            for node in &shard.nodes {
                let node = &state.nodes()[*node as usize];
                let _ = writeln!(out, "    {}[\"{}\"] --- {id}", slug(&node.name), node.name);
            }
        } else {
            let _ = writeln!(
                out,
                "    {id}_nodes[\"{} nodes\"] --- {id}",
                shard.nodes.len()
            );
        }
        out.push_str("  end\n");
    }
    for shard in state.shards() {
        for (rank, target) in shard.spillover_targets().iter().enumerate() {
            let _ = writeln!(
                out,
                "  {} -->|\"spill {}\"| {}",
                slug(&shard.name),
                rank + 1,
                slug(&state.shards()[*target as usize].name)
            );
        }
    }
    out
}

fn owner_action_name(action: &OwnerAction) -> &'static str {
    match action {
        OwnerAction::PauseAll => "pause all",
        OwnerAction::ResumeAll => "resume all",
        OwnerAction::PauseShard { .. } => "pause shard",
        OwnerAction::ResumeShard { .. } => "resume shard",
        OwnerAction::SetQueueBudget { .. } => "set queue budget",
        OwnerAction::SetLatencyBudget { .. } => "set latency budget",
        OwnerAction::SetSpillover { .. } => "set spillover",
        OwnerAction::DrainNode { .. } => "drain node",
        OwnerAction::RetireNode { .. } => "retire node",
        OwnerAction::CancelJob { .. } => "cancel job",
        OwnerAction::RerouteJob { .. } => "reroute job",
        OwnerAction::CheckpointNow => "checkpoint now",
        OwnerAction::SetCheckpointInterval { .. } => "set checkpoint interval",
        OwnerAction::Governance { .. } => "governance",
        OwnerAction::RegisterShard { .. } => "register shard",
        OwnerAction::RetireShard { .. } => "retire shard",
        OwnerAction::RegisterNode { .. } => "register node",
        OwnerAction::UpdateNode { .. } => "update node",
        OwnerAction::SetTreaty { .. } => "set treaty",
        OwnerAction::RegisterClient { .. } => "register client",
        OwnerAction::ResumeNode { .. } => "resume node",
        OwnerAction::RotateKey { .. } => "rotate key",
        OwnerAction::RegisterModel { .. } => "register model",
        OwnerAction::RegisterSequencer { .. } => "register sequencer",
        OwnerAction::RetireSequencer { .. } => "retire sequencer",
        OwnerAction::RegisterRecorder { .. } => "register recorder",
    }
}

/// A name as an id: letters and digits, anything else `_`.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Text for HTML and SVG.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
