//! The mission report: one self-contained HTML page (inline SVG charts, no fetch of any kind)
//! and a Mermaid drawing of the topology, both from one replay of the log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use fabric_audit::{Observer, Replay, Sample, Sampled, Step};
use fabric_events::{Body, Event, OwnerAction};
use fabric_projections::state::{JobStatus, State};
use serde_json::Value;

/// Nodes drawn one row each in the utilisation chart; larger fleets are drawn per shard.
const NODE_ROWS_MAX: usize = 48;
/// Latency histogram bins per shard.
const LATENCY_BINS: usize = 24;

/// Arguments of `fabric report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The data folder of a run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Where the page goes (topology.mmd is written beside it)
    #[arg(long, value_name = "FILE.html")]
    out: PathBuf,
    /// The run's summary.json, for its wall-clock figures (default: reports/<label>/summary.json
    /// when it exists)
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
}

/// `fabric report`: replays the log of `--data` and writes the page.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let (run_file, ledger) = crate::datadir::open_run(&args.data)?;
    let summary_path = args.summary.clone().unwrap_or_else(|| {
        PathBuf::from("reports")
            .join(&run_file.label)
            .join("summary.json")
    });
    let summary: Option<Value> = match std::fs::read_to_string(&summary_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a run summary", summary_path.display()))?,
        ),
        Err(_) if args.summary.is_none() => None,
        Err(err) => {
            return Err(err).with_context(|| format!("could not read {}", summary_path.display()))
        }
    };
    let every_ticks = run_file.spec().sample_every_ticks();
    let mut sampled = Sampled::new(every_ticks, Chronicle::new(every_ticks));
    let mut last = LastTick(0);
    let mut replay = Replay::genesis();
    replay
        .read(&ledger.reader(), ledger.len(), (&mut sampled, &mut last))
        .context("could not replay the log")?;
    let last_tick = summary
        .as_ref()
        .and_then(|s| s["ticks"].as_u64())
        .unwrap_or(last.0);
    sampled.finish(last_tick, replay.state());
    let chronicle = sampled.into_inner();
    let state = replay.into_state();
    let headline = Headline::new(
        &run_file.label,
        run_file.seed,
        run_file.jobs,
        &state,
        ledger.root(),
        ledger.len(),
        summary.as_ref(),
    );
    let mermaid = write_page(&args.out, &chronicle, &headline, &state)?;
    eprintln!("wrote {} and {}", args.out.display(), mermaid.display());
    Ok(())
}

/// The tick of the last event of the log.
struct LastTick(u64);

impl Observer for LastTick {
    fn before(&mut self, step: &Step<'_>, _: &State) {
        self.0 = step.event.header.tick;
    }
}

/// Writes `report.html` and `topology.mmd` into a run's report folder.
pub fn write(
    out: &std::path::Path,
    chronicle: &Chronicle,
    headline: &Headline,
    state: &State,
) -> anyhow::Result<()> {
    write_page(&out.join("report.html"), chronicle, headline, state).map(|_| ())
}

/// Writes the page to `path` and the Mermaid topology beside it; returns the latter's path.
fn write_page(
    path: &std::path::Path,
    chronicle: &Chronicle,
    headline: &Headline,
    state: &State,
) -> anyhow::Result<PathBuf> {
    let page = chronicle.page(headline, state);
    crate::export::write_file(path, |writer| {
        Ok(std::io::Write::write_all(writer, page.as_bytes())?)
    })?;
    let mermaid = path.with_file_name("topology.mmd");
    let topology = topology_mermaid(state);
    crate::export::write_file(&mermaid, |writer| {
        Ok(std::io::Write::write_all(writer, topology.as_bytes())?)
    })?;
    Ok(mermaid)
}

/// The figures at the top of the page.
pub struct Headline {
    rows: Vec<(&'static str, &'static str, String)>,
}

impl Headline {
    /// From the run's parameters, its final state and log, and (for the wall-clock figures)
    /// its summary when there is one.
    pub fn new(
        label: &str,
        seed: u64,
        jobs: u64,
        state: &State,
        root: fabric_events::Hash32,
        events: u64,
        summary: Option<&Value>,
    ) -> Self {
        let m = state.metrics();
        let mut rows = vec![
            ("label", "run", label.to_owned()),
            ("seed", "seed", seed.to_string()),
            ("jobs", "jobs", jobs.to_string()),
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
        }
    }

    /// Sees an event before it is folded into `state`.
    fn see(&mut self, event: &Event, state: &State) {
        let tick = event.header.tick;
        match &event.body {
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

        let x_max = self.ticks.last().copied().unwrap_or(1).max(1) as f64;
        let marks: Vec<(f64, String)> = self
            .marks
            .iter()
            .map(|mark| (mark.tick as f64, mark.label.clone()))
            .collect();
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
                marks: marks.clone(),
            };
            html.push_str(&chart.render());
        }
        html.push_str("</div>\n");

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
                marks: marks.clone(),
            }
            .render(),
        );
        html.push_str(&timeline(&self.marks, x_max));

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
        let queued = state
            .live_jobs()
            .filter(|job| job.status == JobStatus::Queued)
            .count();
        let _ = write!(
            html,
            "<p class=\"foot\">{} shards, {} nodes, {} jobs still queued at the end. \
             Every figure on this page is a function of the run's signed log.</p>\n</body>\n</html>\n",
            shards.len(),
            state.nodes().len(),
            queued
        );
        html
    }
}

const STYLE: &str =
    "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#111}\
h1{margin-bottom:0}.sub{color:#444;margin-top:.2em}\
table.headline{border-collapse:collapse;margin:1em 0}\
table.headline th{text-align:left;padding:.2em 1em .2em 0;font-weight:normal;color:#444}\
table.headline td{font-family:monospace;padding:.2em 0}\
.grid{display:flex;flex-wrap:wrap;gap:1em}svg{max-width:100%;height:auto}\
.foot{color:#444;font-size:.9em}@media print{.grid{display:block}h2{page-break-before:auto}}";

/// Ink that stays apart in greyscale: dark, mid and light, each with its own dash pattern.
const INKS: [(&str, &str); 4] = [
    ("#1b1b1b", ""),
    ("#3d7dca", "6 3"),
    ("#b04a00", "2 3"),
    ("#7a7a7a", "10 4 2 4"),
];

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    ink: usize,
}

impl Series {
    fn new(name: &str, points: Vec<(f64, f64)>, ink: usize) -> Self {
        Self {
            name: name.to_owned(),
            points,
            ink,
        }
    }
}

struct LineChart {
    id: String,
    title: String,
    x_label: String,
    y_label: String,
    x_max: f64,
    series: Vec<Series>,
    marks: Vec<(f64, String)>,
}

/// Plot area of a chart, in SVG units.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    const CHART: Frame = Frame {
        width: 560.0,
        height: 300.0,
        left: 64.0,
        right: 16.0,
        top: 40.0,
        bottom: 52.0,
    };

    fn x(&self, value: f64, max: f64) -> f64 {
        self.left + (self.width - self.left - self.right) * value / max.max(1e-9)
    }

    fn y(&self, value: f64, max: f64) -> f64 {
        self.height - self.bottom - (self.height - self.top - self.bottom) * value / max.max(1e-9)
    }
}

/// Round tick values for an axis from 0 to `max`.
fn axis_ticks(max: f64) -> (f64, Vec<f64>) {
    if max <= 0.0 {
        return (1.0, vec![0.0, 1.0]);
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|f| f * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    let top = (max / step).ceil() * step;
    let ticks = (0..=((top / step).round() as usize))
        .map(|i| i as f64 * step)
        .collect();
    (top, ticks)
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The frame, axes, ticks, labels and title of a chart; returns the SVG so far and the y max.
/// A chart without a numeric y axis (`y_max` = `None`) gets no y ticks.
#[allow(clippy::too_many_arguments)]
fn axes(
    out: &mut String,
    frame: &Frame,
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_max: f64,
    y_max: Option<f64>,
) -> (f64, f64) {
    let (x_top, x_ticks) = axis_ticks(x_max);
    let (y_top, y_ticks) = match y_max {
        Some(y_max) => axis_ticks(y_max),
        None => (1.0, Vec::new()),
    };
    let _ = write!(
        out,
        "<svg id=\"{id}\" role=\"img\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"11\"><title>{t}</title>\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>\
         <text x=\"{cx}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">{t}</text>",
        w = frame.width,
        h = frame.height,
        cx = frame.width / 2.0,
        t = escape(title)
    );
    for tick in &x_ticks {
        let x = frame.x(*tick, x_top);
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{y1:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{x:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{}</text>",
            number(*tick),
            y0 = frame.top,
            y1 = frame.height - frame.bottom,
            ty = frame.height - frame.bottom + 14.0
        );
    }
    for tick in &y_ticks {
        let y = frame.y(*tick, y_top);
        let _ = write!(
            out,
            "<line x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{}</text>",
            number(*tick),
            x0 = frame.left,
            x1 = frame.width - frame.right,
            tx = frame.left - 6.0,
            ty = y + 4.0
        );
    }
    let _ = write!(
        out,
        "<line x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#111\"/>\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{b}\" stroke=\"#111\"/>\
         <text x=\"{cx}\" y=\"{xl}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(14 {cy}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        escape(x_label),
        escape(y_label),
        l = frame.left,
        r = frame.width - frame.right,
        t = frame.top,
        b = frame.height - frame.bottom,
        cx = (frame.left + frame.width - frame.right) / 2.0,
        xl = frame.height - 18.0,
        cy = (frame.top + frame.height - frame.bottom) / 2.0
    );
    (x_top, y_top)
}

impl LineChart {
    fn render(&self) -> String {
        let frame = Frame::CHART;
        let y_max = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max);
        let mut out = String::new();
        let (x_top, y_top) = axes(
            &mut out,
            &frame,
            &self.id,
            &self.title,
            &self.x_label,
            &self.y_label,
            self.x_max,
            Some(y_max),
        );
        for (x, label) in &self.marks {
            let px = frame.x(*x, x_top);
            let _ = write!(
                out,
                "<line x1=\"{px:.1}\" y1=\"{}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#999\" \
                 stroke-dasharray=\"1 3\"><title>{}</title></line>",
                frame.top,
                frame.height - frame.bottom,
                escape(label)
            );
        }
        for (index, series) in self.series.iter().enumerate() {
            let (ink, dash) = INKS[series.ink % INKS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", frame.x(*x, x_top), frame.y(*y, y_top)))
                .collect();
            let _ = write!(
                out,
                "<polyline fill=\"none\" stroke=\"{ink}\" stroke-width=\"1.6\" \
                 stroke-dasharray=\"{dash}\" points=\"{}\"/>",
                path.join(" ")
            );
            let lx = frame.left + 8.0 + 130.0 * index as f64;
            let _ = write!(
                out,
                "<line x1=\"{lx}\" y1=\"30\" x2=\"{}\" y2=\"30\" stroke=\"{ink}\" stroke-width=\"2\" \
                 stroke-dasharray=\"{dash}\"/><text x=\"{}\" y=\"34\">{}</text>",
                lx + 22.0,
                lx + 26.0,
                escape(&series.name)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

/// Checkpoints and owner commands on the time axis, one lane each.
fn timeline(marks: &[Mark], x_max: f64) -> String {
    let frame = Frame {
        height: 130.0,
        width: 1120.0,
        left: 120.0,
        ..Frame::CHART
    };
    let lanes = [
        ("owner commands", 46.0, "#b04a00"),
        ("checkpoints", 62.0, "#1b1b1b"),
    ];
    let mut out = String::new();
    let (x_top, _) = axes(
        &mut out,
        &frame,
        "timeline",
        "Checkpoints and owner commands",
        "tick",
        "",
        x_max,
        None,
    );
    for (name, y, _) in lanes {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{name}</text>",
            frame.left - 6.0,
            y + 9.0
        );
    }
    for mark in marks {
        let x = frame.x(mark.tick as f64, x_top);
        let (_, y, ink) = if mark.label.starts_with("owner") {
            lanes[0]
        } else {
            lanes[1]
        };
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{y}\" width=\"3\" height=\"12\" fill=\"{ink}\"><title>tick {}: {}</title></rect>",
            x - 1.5,
            mark.tick,
            escape(&mark.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Jobs spilled from each shard (rows) to each shard (columns).
fn spill_matrix(shards: &[String], spills: &BTreeMap<(String, String), u64>) -> String {
    let cell = 64.0;
    let left = 110.0;
    let top = 70.0;
    let size = shards.len() as f64;
    let (width, height) = (left + cell * size + 20.0, top + cell * size + 20.0);
    let max = spills.values().copied().max().unwrap_or(0).max(1) as f64;
    let mut out = format!(
        "<svg id=\"spillover-matrix\" role=\"img\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" \
         height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\
         <title>Spillover: jobs moved from shard (row) to shard (column)</title>\
         <rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">\
         Spillover: jobs from (row) to (column)</text>",
        width / 2.0
    );
    for (i, shard) in shards.iter().enumerate() {
        let at = i as f64 * cell + cell / 2.0;
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">to {}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">from {}</text>",
            left + at,
            top - 8.0,
            escape(shard),
            left - 6.0,
            top + at + 4.0,
            escape(shard)
        );
    }
    for (i, from) in shards.iter().enumerate() {
        for (j, to) in shards.iter().enumerate() {
            let count = spills
                .get(&(from.clone(), to.clone()))
                .copied()
                .unwrap_or(0);
            let shade = 255.0 - 200.0 * (count as f64 / max);
            let text = if shade < 140.0 { "#fff" } else { "#111" };
            let (x, y) = (left + j as f64 * cell, top + i as f64 * cell);
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({s},{s},{s})\" \
                 stroke=\"#888\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{text}\" \
                 data-from=\"{}\" data-to=\"{}\">{count}</text>",
                x + cell / 2.0,
                y + cell / 2.0 + 4.0,
                escape(from),
                escape(to),
                s = shade as u8
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Utilisation of each node (or each shard's nodes) over time; outages in black.
fn utilisation_chart(rows: &[(String, Vec<(f64, bool)>)], ticks: &[u64], every: u64) -> String {
    let left = 170.0;
    let top = 44.0;
    let row_height = 14.0;
    let plot_width = 900.0;
    let columns = ticks.len().max(1) as f64;
    let cell = plot_width / columns;
    let (width, height) = (
        left + plot_width + 20.0,
        top + row_height * rows.len() as f64 + 44.0,
    );
    let mut out = format!(
        "<svg id=\"node-utilisation\" role=\"img\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" \
         height=\"{height}\" font-family=\"sans-serif\" font-size=\"10\">\
         <title>Node utilisation (running jobs / max concurrency) and health over time</title>\
         <rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">\
         Utilisation (running / max concurrency, darker is busier) and outages (black, crossed)</text>",
        width / 2.0
    );
    for (r, (name, cells)) in rows.iter().enumerate() {
        let y = top + r as f64 * row_height;
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + row_height - 3.0,
            escape(name)
        );
        for (c, (used, down)) in cells.iter().enumerate() {
            let x = left + c as f64 * cell;
            if *down {
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.2}\" height=\"{row_height}\" fill=\"#000\"/>\
                     <line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#fff\" stroke-width=\"0.6\"/>",
                    cell.max(0.5),
                    x + cell,
                    y + row_height
                );
            } else {
                let shade = (245.0 - 190.0 * used) as u8;
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.2}\" height=\"{row_height}\" \
                     fill=\"rgb({shade},{shade},{shade})\"/>",
                    cell.max(0.5)
                );
            }
        }
    }
    let base = top + row_height * rows.len() as f64;
    let last = ticks.last().copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "<text x=\"{left}\" y=\"{:.1}\">tick 0</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">tick {last}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">tick (one column per {every} ticks)</text></svg>",
        base + 14.0,
        left + plot_width,
        base + 14.0,
        left + plot_width / 2.0,
        base + 30.0
    );
    out
}

/// Jobs finished by how long they took from submission, for one shard.
fn latency_chart(shard: &str, latency: &BTreeMap<u64, u64>) -> String {
    let frame = Frame::CHART;
    let max_latency = latency.keys().last().copied().unwrap_or(0).max(1);
    let bin = (max_latency / LATENCY_BINS as u64 + 1).max(1);
    let mut bins = [0u64; LATENCY_BINS + 1];
    for (ticks, jobs) in latency {
        bins[((ticks / bin) as usize).min(LATENCY_BINS)] += jobs;
    }
    let y_max = bins.iter().copied().max().unwrap_or(0) as f64;
    let x_max = (bin * bins.len() as u64) as f64;
    let mut out = String::new();
    let (x_top, y_top) = axes(
        &mut out,
        &frame,
        &format!("latency-{}", slug(shard)),
        &format!("{shard}: latency of finished jobs"),
        "ticks from submission to receipt",
        "jobs",
        x_max,
        Some(y_max),
    );
    for (i, count) in bins.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let x0 = frame.x((i as u64 * bin) as f64, x_top);
        let x1 = frame.x(((i as u64 + 1) * bin) as f64, x_top);
        let y = frame.y(*count as f64, y_top);
        let _ = write!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#5a5a5a\" \
             stroke=\"#fff\"><title>{}..{} ticks: {count} jobs</title></rect>",
            (x1 - x0).max(1.0),
            frame.height - frame.bottom - y,
            i as u64 * bin,
            (i as u64 + 1) * bin - 1
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Shards on a ring, their nodes around them, spillover routes as arrows.
fn topology_svg(state: &State) -> String {
    let (width, height) = (900.0f64, 620.0f64);
    let (cx, cy) = (width / 2.0, height / 2.0 + 10.0);
    let shards = state.shards();
    let ring = 210.0;
    let at = |i: usize| -> (f64, f64) {
        let angle = std::f64::consts::TAU * i as f64 / shards.len().max(1) as f64
            - std::f64::consts::FRAC_PI_2;
        (cx + ring * angle.cos(), cy + ring * angle.sin())
    };
    let mut out = format!(
        "<svg id=\"topology\" role=\"img\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" \
         height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\
         <title>Topology: shards, their nodes and spillover routes</title>\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#444\"/></marker></defs>\
         <rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>\
         <text x=\"{cx}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">\
         Topology: shards, nodes (dots, black when unhealthy) and spillover routes (arrows, 1 = first choice)</text>"
    );
    for (i, shard) in shards.iter().enumerate() {
        let (x0, y0) = at(i);
        for (rank, target) in shard.spillover_targets().iter().enumerate() {
            let (x1, y1) = at(*target as usize);
            let (dx, dy) = (x1 - x0, y1 - y0);
            let length = (dx * dx + dy * dy).sqrt().max(1.0);
            // Offset each direction to its own side so two-way routes stay apart.
            let (ox, oy) = (-dy / length * 6.0, dx / length * 6.0);
            let (sx, sy) = (x0 + dx / length * 44.0 + ox, y0 + dy / length * 44.0 + oy);
            let (ex, ey) = (x1 - dx / length * 44.0 + ox, y1 - dy / length * 44.0 + oy);
            let _ = write!(
                out,
                "<line x1=\"{sx:.1}\" y1=\"{sy:.1}\" x2=\"{ex:.1}\" y2=\"{ey:.1}\" stroke=\"#444\" \
                 stroke-width=\"1.4\" marker-end=\"url(#arrow)\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
                sx + (ex - sx) * 0.3 + ox,
                sy + (ey - sy) * 0.3 + oy,
                rank + 1
            );
        }
    }
    for (i, shard) in shards.iter().enumerate() {
        let (x, y) = at(i);
        let count = shard.nodes.len();
        let shown = count.min(60);
        for (k, node) in shard.nodes.iter().take(shown).enumerate() {
            let angle = std::f64::consts::TAU * k as f64 / shown.max(1) as f64;
            let (nx, ny) = (x + 58.0 * angle.cos(), y + 58.0 * angle.sin());
            let node = &state.nodes()[*node as usize];
            let fill = if node.healthy { "#fff" } else { "#000" };
            let _ = write!(
                out,
                "<circle cx=\"{nx:.1}\" cy=\"{ny:.1}\" r=\"4\" fill=\"{fill}\" stroke=\"#222\"><title>{}</title></circle>",
                escape(&node.name)
            );
        }
        let _ = write!(
            out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"38\" fill=\"#e8e8e8\" stroke=\"#111\" stroke-width=\"1.5\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{count} nodes</text>",
            y - 2.0,
            escape(&shard.name),
            y + 12.0
        );
    }
    out.push_str("</svg>\n");
    out
}

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
