//! Owners steer the fabric through `fabric owner` and `fabric run --owner-script`: a command
//! with M distinct owner approvals takes effect at its seq; every other attempt is refused
//! and recorded as a `rejected` event with its reason; `fabric audit` passes on the result.
//! A model registered by command is in the log with its weights; registering its workload
//! again is refused (`invalid`) and recorded.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{fabric, path, run_world, small_run, stderr, stdout};

fn owner(args: &[&str]) -> std::process::Output {
    let mut all = vec!["owner"];
    all.extend_from_slice(args);
    fabric(&all)
}

fn ok(output: std::process::Output, what: &str) -> std::process::Output {
    assert!(output.status.success(), "{what}: {}", stderr(&output));
    output
}

/// Writes the run's owner keys to `dir/keys`; returns the folder.
fn owner_keys(data: &Path, dir: &Path) -> PathBuf {
    let keys = dir.join("keys");
    ok(
        owner(&["keys", "--data", path(data), "--out", path(&keys)]),
        "owner keys",
    );
    keys
}

/// `propose` then `sign` with each of `signers` (key files in `keys`).
fn command(dir: &Path, name: &str, words: &[&str], extra: &[&str], keys: &[PathBuf]) -> PathBuf {
    let file = dir.join(format!("{name}.json"));
    let mut args = vec!["propose"];
    args.extend_from_slice(words);
    args.extend_from_slice(&["--out", path(&file)]);
    args.extend_from_slice(extra);
    ok(owner(&args), "owner propose");
    for key in keys {
        ok(
            owner(&["sign", path(&file), "--key", path(key)]),
            "owner sign",
        );
    }
    file
}

/// Submits and returns the verdict of the one command in `file`.
fn submit(file: &Path, data: &Path) -> (bool, Value) {
    let output = owner(&["submit", path(file), "--data", path(data), "--json"]);
    let report: Value = serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|err| panic!("submit prints JSON ({err}): {}", stderr(&output)));
    (output.status.success(), report["verdicts"][0].clone())
}

fn export_lines(data: &Path, dir: &Path) -> Vec<Value> {
    let out = dir.join("log.ndjson");
    ok(
        fabric(&["export", "--data", path(data), "--out", path(&out)]),
        "export",
    );
    std::fs::read_to_string(&out)
        .expect("export written")
        .lines()
        .map(|line| serde_json::from_str(line).expect("an export line is JSON"))
        .collect()
}

#[test]
fn owner_commands_need_m_distinct_owner_approvals_and_refusals_are_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = small_run(dir.path(), 3, 600);
    let keys_dir = owner_keys(&data, dir.path());
    let key = |i: usize| keys_dir.join(format!("owner-{i}.key"));
    let stranger = dir.path().join("stranger.key");
    ok(fabric(&["keygen", "--out", path(&stranger)]), "keygen");

    // One approval of the two needed.
    let pause = command(
        dir.path(),
        "pause",
        &["pause-shard", "mars", "--nonce", "11"],
        &[],
        &[key(0)],
    );
    let (success, verdict) = submit(&pause, &data);
    assert!(!success, "a refused command fails the submission");
    assert_eq!(verdict["reason"], "too_few_owner_signatures", "{verdict}");
    let refused_seq = verdict["seq"].as_u64().expect("a seq");

    // A second owner approves: it executes at its seq.
    ok(
        owner(&["sign", path(&pause), "--key", path(&key(2))]),
        "sign",
    );
    let (success, verdict) = submit(&pause, &data);
    assert!(success, "{verdict}");
    assert_eq!(verdict["status"], "executed");
    let executed_seq = verdict["seq"].as_u64().expect("a seq");

    // The same command again: its nonce is spent.
    let (_, verdict) = submit(&pause, &data);
    assert_eq!(verdict["reason"], "replayed_nonce", "{verdict}");

    // Expired, approved by a non-owner, approved twice by the same owner.
    let expired = command(
        dir.path(),
        "expired",
        &["resume-shard", "mars", "--nonce", "12"],
        &["--expiry-tick", "3"],
        &[key(0), key(1)],
    );
    assert_eq!(submit(&expired, &data).1["reason"], "expired_nonce");
    let foreign = command(
        dir.path(),
        "foreign",
        &["resume-shard", "mars", "--nonce", "13"],
        &[],
        &[key(0), stranger.clone()],
    );
    assert_eq!(submit(&foreign, &data).1["reason"], "unknown_key");
    let doubled = command(
        dir.path(),
        "doubled",
        &["resume-shard", "mars", "--nonce", "14"],
        &[],
        &[key(1)],
    );
    let mut file: Value =
        serde_json::from_str(&std::fs::read_to_string(&doubled).expect("read")).expect("json");
    let approval = file["commands"][0]["command"]["approvals"][0].clone();
    file["commands"][0]["command"]["approvals"]
        .as_array_mut()
        .expect("approvals")
        .push(approval);
    std::fs::write(&doubled, file.to_string()).expect("write");
    assert_eq!(
        submit(&doubled, &data).1["reason"],
        "duplicate_owner_signer"
    );

    // The log holds the executed command at its seq and a rejected event per refusal.
    let lines = export_lines(&data, dir.path());
    let at = |seq: u64| &lines[seq as usize];
    assert_eq!(at(executed_seq)["kind"], "owner_command");
    assert_eq!(
        at(executed_seq)["body"]["data"]["action"]["command"],
        "pause_shard"
    );
    assert_eq!(at(refused_seq)["kind"], "rejected");
    let reasons: Vec<&str> = lines
        .iter()
        .filter(|line| line["kind"] == "rejected")
        .map(|line| line["body"]["data"]["reason"].as_str().expect("a reason"))
        .collect();
    assert_eq!(
        reasons,
        [
            "too_few_owner_signatures",
            "replayed_nonce",
            "expired_nonce",
            "unknown_key",
            "duplicate_owner_signer"
        ]
    );

    // Rejections are history too: the audit checks them like everything else.
    let audit = fabric(&["audit", "--data", path(&data), "--json"]);
    assert!(audit.status.success(), "{}", stdout(&audit));
}

#[test]
fn a_model_registered_by_m_approvals_is_in_the_log_and_a_second_one_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = small_run(dir.path(), 3, 600);
    let keys_dir = owner_keys(&data, dir.path());
    let key = |i: usize| keys_dir.join(format!("owner-{i}.key"));
    // predict_next_state weights: alpha 1, shift 3, steps 16.
    let weights = [1i32.to_le_bytes(), 3u32.to_le_bytes(), 16u32.to_le_bytes()].concat();
    let weights_file = dir.path().join("heat.bin");
    std::fs::write(&weights_file, &weights).expect("weights written");
    let register = |name: &str, nonce: &str, job_type: &str| {
        let words = [
            "register-model",
            "heat",
            "1.0",
            job_type,
            path(&weights_file),
            "--nonce",
            nonce,
        ];
        command(dir.path(), name, &words, &[], &[key(0), key(1)])
    };

    // Weights that do not fit the job type are refused before anything is written.
    let output = owner(&[
        "propose",
        "register-model",
        "heat",
        "1.0",
        "encode_state",
        path(&weights_file),
        "--nonce",
        "20",
        "--out",
        path(&dir.path().join("wrong.json")),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("weights of a encode_state model have 12 bytes, not 1024"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.path().join("wrong.json").exists());

    let (success, verdict) = submit(&register("model", "21", "predict_next_state"), &data);
    assert!(success, "{verdict}");
    assert_eq!(verdict["status"], "executed");
    let executed_seq = verdict["seq"].as_u64().expect("a seq");

    // The same workload again (a good command on its own): the state refuses it.
    let (success, verdict) = submit(&register("again", "22", "predict_next_state"), &data);
    assert!(!success, "{verdict}");
    assert_eq!(verdict["reason"], "invalid", "{verdict}");
    let refused_seq = verdict["seq"].as_u64().expect("a seq");

    let lines = export_lines(&data, dir.path());
    let executed = &lines[executed_seq as usize];
    assert_eq!(executed["kind"], "owner_command");
    let action = &executed["body"]["data"]["action"];
    assert_eq!(action["command"], "register_model", "{action}");
    let registration = &action["registration"];
    assert_eq!(registration["model_id"], "heat");
    assert_eq!(registration["model_version"], "1.0");
    assert_eq!(registration["job_type"], "predict_next_state");
    assert_eq!(registration["weights"], hex::encode(&weights));
    let refused = &lines[refused_seq as usize];
    assert_eq!(refused["kind"], "rejected");
    assert_eq!(refused["body"]["data"]["reason"], "invalid");
    let detail = refused["body"]["data"]["detail"]
        .as_str()
        .expect("a detail");
    assert!(
        detail.contains("model `heat@1.0` is already registered"),
        "{detail}"
    );

    let audit = fabric(&["audit", "--data", path(&data), "--json"]);
    assert!(audit.status.success(), "{}", stdout(&audit));
}

#[test]
fn an_owner_script_pauses_a_shard_from_its_seq_until_it_is_resumed() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The owner keys follow from the seed: take them from a tiny run of the same seed.
    let keys_run = dir.path().join("keys-run");
    std::fs::create_dir_all(&keys_run).expect("mkdir");
    let keys_data = small_run(&keys_run, 5, 10);
    let keys_dir = owner_keys(&keys_data, dir.path());
    let keys = [keys_dir.join("owner-1.key"), keys_dir.join("owner-2.key")];
    let script = command(
        dir.path(),
        "script",
        &["pause-shard", "earth", "--nonce", "100"],
        &["--tick", "40"],
        &keys,
    );
    // Appended to the same file, approved by the same owners.
    let resume_words = [
        "propose",
        "resume-shard",
        "earth",
        "--nonce",
        "101",
        "--tick",
        "90",
        "--append",
        "--out",
    ];
    let mut args = resume_words.to_vec();
    args.push(path(&script));
    ok(owner(&args), "propose --append");
    for key in &keys {
        ok(owner(&["sign", path(&script), "--key", path(key)]), "sign");
    }

    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    ok(
        run_world(dir.path(), 5, 1500, &["--owner-script", path(&script)]),
        "run --owner-script",
    );
    let lines: Vec<Value> = std::fs::read_to_string(out.join("events.ndjson"))
        .expect("events.ndjson")
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    let command_seq = |name: &str| {
        lines
            .iter()
            .find(|line| {
                line["kind"] == "owner_command" && line["body"]["data"]["action"]["command"] == name
            })
            .and_then(|line| line["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {name} command in the log"))
    };
    let (paused, resumed) = (command_seq("pause_shard"), command_seq("resume_shard"));
    assert!(paused < resumed);
    let earth_assignments = |range: std::ops::Range<u64>| {
        lines[range.start as usize..range.end as usize]
            .iter()
            .filter(|line| {
                line["kind"] == "job_assigned" && line["body"]["data"]["shard"] == "earth"
            })
            .count()
    };
    assert!(
        earth_assignments(0..paused) > 0,
        "earth assigns before the pause"
    );
    assert_eq!(
        earth_assignments(paused + 1..resumed),
        0,
        "a paused shard assigns nothing after the command's seq"
    );
    assert!(
        earth_assignments(resumed + 1..lines.len() as u64) > 0,
        "earth assigns again once resumed"
    );

    let executed: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("owner-commands-executed.json")).expect("written"),
    )
    .expect("json");
    let steering: Vec<&Value> = executed["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .filter(|c| c["tick"].as_u64() > Some(0))
        .collect();
    assert_eq!(steering.len(), 2, "{executed}");
    assert_eq!(steering[0]["seq"].as_u64(), Some(paused));
    assert_eq!(steering[0]["signers"].as_array().map(Vec::len), Some(2));
    assert!(steering[0]["effect"]
        .as_str()
        .is_some_and(|effect| effect.contains("paused")));

    let audit = fabric(&["audit", "--data", path(&data)]);
    assert!(audit.status.success(), "{}", stdout(&audit));
}

#[test]
fn an_owner_script_without_ticks_or_with_an_edited_command_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = command(
        dir.path(),
        "notick",
        &["pause-all", "--nonce", "1"],
        &[],
        &[],
    );
    let run = run_world(dir.path(), 1, 10, &["--owner-script", path(&file)]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("has no `tick`"), "{}", stderr(&run));

    let mut text: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    text["commands"][0]["nonce"] = 2.into();
    std::fs::write(&file, text.to_string()).expect("write");
    let key = dir.path().join("k.key");
    ok(fabric(&["keygen", "--out", path(&key)]), "keygen");
    let sign = owner(&["sign", path(&file), "--key", path(&key)]);
    assert!(!sign.status.success());
    assert!(
        stderr(&sign).contains("approval_message_hex is not the message"),
        "{}",
        stderr(&sign)
    );
    let unknown = owner(&[
        "propose",
        "pause-galaxy",
        "x",
        "--nonce",
        "1",
        "--out",
        path(&dir.path().join("x.json")),
    ]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("unknown owner command `pause-galaxy`"));
}
