//! The default world, and every kind of mistake a world file can hold.

use super::*;

use std::collections::BTreeSet;
use std::path::Path;

use crate::check::NAME_LEN_MAX;

/// The default world file, read from the source tree (not the embedded copy).
const DEFAULT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fabric.toml");
const ORIGIN: &str = "config/fabric.toml";

fn default_text() -> String {
    DEFAULT_WORLD_TOML.to_owned()
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
    let world = load_file(Path::new(DEFAULT_PATH)).expect("the default world is valid");
    assert_eq!(default_world().expect("the embedded world is valid"), world);
    assert_eq!(load(None).expect("the embedded world is valid"), world);
    assert_eq!(load(Some(Path::new(DEFAULT_PATH))).expect("valid"), world);
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
            node.region == kind.shard && kind.skills.iter().all(|s| node.capabilities.contains(s))
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
    let error = load(Some(Path::new("no/such/fabric.toml"))).expect_err("no such file");
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
    let text = default_text().replacen("duration_ticks_min = 2\n", "duration_ticks_min = 0\n", 1);
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

/// The file's tables hold exactly the terms of the world's shards and nodes (the terms are
/// declared once, in `fabric_events`; the `Raw*` mirrors must follow them).
#[test]
fn the_file_layout_holds_exactly_the_terms() {
    let world = default_world().expect("the embedded world is valid");
    let file: toml::Table = toml::from_str(DEFAULT_WORLD_TOML).expect("TOML");
    let keys = |table: &toml::Table| table.keys().cloned().collect::<BTreeSet<String>>();

    let shard = toml::Table::try_from(&world.shards[0]).expect("a table");
    let earth = file["shards"]["earth"].as_table().expect("[shards.earth]");
    let mut in_file = keys(earth);
    in_file.remove("treaty");
    in_file.extend(keys(earth["treaty"].as_table().expect("a treaty")));
    in_file.insert("name".to_owned());
    assert_eq!(in_file, keys(&shard));

    let node = toml::Table::try_from(&world.nodes[0]).expect("a table");
    let first = file["nodes"][0].as_table().expect("[[nodes]]");
    assert_eq!(keys(first), keys(&node));
}
