//! The page's SVG pieces: line charts with their axes, the timeline, the spillover matrix, the
//! utilisation grid, the latency histograms and the topology ring.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fabric_projections::state::State;

use super::{escape, slug, Mark, LATENCY_BINS};

/// Ink that stays apart in greyscale: dark, mid and light, each with its own dash pattern.
const INKS: [(&str, &str); 4] = [
    ("#1b1b1b", ""),
    ("#3d7dca", "6 3"),
    ("#b04a00", "2 3"),
    ("#7a7a7a", "10 4 2 4"),
];

/// One line of a [`LineChart`].
pub(super) struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    ink: usize,
}

impl Series {
    pub(super) fn new(name: &str, points: Vec<(f64, f64)>, ink: usize) -> Self {
        Self {
            name: name.to_owned(),
            points,
            ink,
        }
    }
}

/// A chart of lines over ticks, with dotted marks.
pub(super) struct LineChart {
    pub(super) id: String,
    pub(super) title: String,
    pub(super) x_label: String,
    pub(super) y_label: String,
    pub(super) x_max: f64,
    pub(super) series: Vec<Series>,
    pub(super) marks: Vec<(f64, String)>,
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
    pub(super) fn render(&self) -> String {
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
pub(super) fn timeline(marks: &[Mark], x_max: f64) -> String {
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
pub(super) fn spill_matrix(shards: &[String], spills: &BTreeMap<(String, String), u64>) -> String {
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
pub(super) fn utilisation_chart(
    rows: &[(String, Vec<(f64, bool)>)],
    ticks: &[u64],
    every: u64,
) -> String {
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
pub(super) fn latency_chart(shard: &str, latency: &BTreeMap<u64, u64>) -> String {
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
pub(super) fn topology_svg(state: &State) -> String {
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
