//! The mission report: `fabric run` writes `report.html` (and `topology.mmd`) beside its other
//! reports; the page parses as HTML, holds one SVG per chart, fetches nothing, shows the
//! numbers of `summary.json`, and renders in a real browser.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{fabric, path, run_world, stderr};

/// A small run with its reports in `dir/out`; returns (summary, page).
fn small_run_with_report(dir: &Path) -> (Value, String) {
    let output = run_world(dir, 2, 1500, &["--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = dir.join("out");
    let summary: Value = serde_json::from_slice(&output.stdout).expect("summary JSON");
    let page = std::fs::read_to_string(out.join("report.html")).expect("report.html written");
    (summary, page)
}

#[test]
fn the_report_parses_has_every_chart_fetches_nothing_and_shows_the_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (summary, page) = small_run_with_report(dir.path());
    let dom = tl::parse(&page, tl::ParserOptions::default()).expect("the page parses as HTML");
    let parser = dom.parser();
    let svg_ids: Vec<String> = dom
        .query_selector("svg")
        .expect("a selector")
        .filter_map(|handle| handle.get(parser))
        .filter_map(|node| node.as_tag())
        .filter_map(|tag| {
            tag.attributes()
                .id()
                .map(|id| id.as_utf8_str().into_owned())
        })
        .collect();
    let shards: Vec<&str> = summary["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|shard| shard["shard"].as_str().expect("a name"))
        .collect();
    let mut wanted: Vec<String> = [
        "completed-per-tick",
        "timeline",
        "spillover-matrix",
        "node-utilisation",
        "topology",
    ]
    .map(String::from)
    .to_vec();
    for shard in &shards {
        wanted.push(format!("queue-{shard}"));
        wanted.push(format!("latency-{shard}"));
    }
    for id in &wanted {
        assert!(
            svg_ids.contains(id),
            "no <svg id=\"{id}\"> in the report: {svg_ids:?}"
        );
    }
    // Every chart is titled.
    assert!(page.matches("<title>").count() > svg_ids.len());

    // Nothing to fetch: no URL, no external reference of any kind.
    for needle in [
        "http:", "https:", "//cdn", "src=", "@import", "<link", "<script",
    ] {
        assert!(!page.contains(needle), "the report references {needle:?}");
    }
    let urls: Vec<&str> = page
        .match_indices("url(")
        .map(|(at, _)| &page[at..at + 11])
        .collect();
    assert!(urls.iter().all(|url| *url == "url(#arrow)"), "{urls:?}");

    // The headline shows the summary's numbers.
    let field = |name: &str| -> String {
        let handle = dom
            .query_selector(&format!("td[data-field={name}]"))
            .expect("a selector")
            .next()
            .unwrap_or_else(|| panic!("no headline field {name}"));
        handle
            .get(parser)
            .expect("a node")
            .inner_text(parser)
            .into_owned()
    };
    let text = |value: &Value| match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for (name, value) in [
        ("seed", &summary["seed"]),
        ("jobs", &summary["jobs"]),
        ("events", &summary["events"]),
        ("completed", &summary["jobs_status"]["completed"]),
        ("failed", &summary["jobs_status"]["failed"]),
        ("spillovers", &summary["spillovers"]),
        ("requeues", &summary["requeues"]),
        ("nodes", &summary["nodes"]),
        ("merkle_root", &summary["merkle_root"]),
        ("wall_ms", &summary["wall_ms"]),
    ] {
        assert_eq!(field(name), text(value), "headline field {name}");
    }

    // The spillover matrix adds up to the summary's spillovers.
    let spilled: u64 = dom
        .query_selector("text[data-from]")
        .expect("a selector")
        .filter_map(|handle| handle.get(parser))
        .map(|node| node.inner_text(parser).parse::<u64>().expect("a count"))
        .sum();
    assert_eq!(Some(spilled), summary["spillovers"].as_u64());

    // The topology also comes as Mermaid.
    let mermaid =
        std::fs::read_to_string(dir.path().join("out/topology.mmd")).expect("topology.mmd");
    assert!(mermaid.starts_with("flowchart LR\n"));
    for shard in &shards {
        assert!(mermaid.contains(&format!("((\"{shard}\"))")), "{mermaid}");
    }
}

#[test]
fn fabric_report_on_a_data_folder_writes_the_same_page() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, page) = small_run_with_report(dir.path());
    let again = dir.path().join("again.html");
    let summary = dir.path().join("out/summary.json");
    let output = fabric(&[
        "report",
        "--data",
        path(&dir.path().join("data")),
        "--out",
        path(&again),
        "--summary",
        path(&summary),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&again).expect("written"), page);
}

/// Chromium from the Debian package (scripts/test installs it).
fn chromium() -> &'static str {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .expect("chromium is installed (scripts/test installs the Debian package)")
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("temp dir");
    small_run_with_report(dir.path());
    let page = dir.path().join("out/report.html");
    let shot = dir.path().join("report.png");
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--window-size=1280,1600",
        ])
        .arg(format!("--screenshot={}", path(&shot)))
        .arg(format!("file://{}", path(&page)))
        .env("HOME", dir.path())
        .output()
        .expect("chromium runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // Width and height from the IHDR chunk.
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
    assert_eq!((width, height), (1280, 1600));
    assert!(
        png.len() > 20_000,
        "a screenshot of charts is more than a blank page"
    );
}
