//! A fabric made by the genesis ceremony, as an outsider meets it: owners and the operator
//! make their own keys, `fabric init` writes the genesis and its registrations, two of three
//! owners approve them, `fabric init --commit` writes tick 0, and `fabric serve` serves it with
//! the operator's key files. Keys derived from any public seed sign nothing there; too few
//! real owners steer nothing; a simulation is served only when asked for, and says so in
//! every answer.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_api::http_client::Client;
use fabric_events::{
    derive_signing_key, keys, Event, Hash32, JobSubmitted, OwnerAction, OwnerCommand, Role,
    SignedEvent, SigningKey,
};
use fabric_sim::sim_owner_key;
use serde_json::{json, Value};

use crate::serve::{current_tick, export_lines, get, json_of, post};
use crate::support::{
    fabric, path, stderr, stdout, succeed, Ceremony, Served, CEREMONY_CLIENT, DEFAULT_CONFIG,
};

/// The public seeds an outsider tries.
const SEEDS: [u64; 3] = [1, 7, 11];

/// How a refused attempt is on the record: as its own `rejected` event when a registered key
/// signed it (evidence against its signer), else counted in the tick's `refusals_counted`.
#[derive(Clone, Copy, Debug)]
enum Record {
    Rejected,
    Counted,
}

/// Asserts that the refusal `answer` names is on the record as `record` says, for `reason`.
fn assert_on_record(client: &mut Client, answer: &Value, reason: &str, record: Record) {
    match record {
        Record::Rejected => {
            let seq = answer["error"]["rejected_seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("a rejected seq: {answer}"));
            assert_rejected(client, seq, reason);
        }
        Record::Counted => {
            assert!(answer["error"]["rejected_seq"].is_null(), "{answer}");
            let seq = answer["error"]["counted_seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("a counted seq: {answer}"));
            let line = export_lines(client)
                .remove(&seq)
                .unwrap_or_else(|| panic!("no event at seq {seq}"));
            assert_eq!(line["kind"], "refusals_counted", "seq {seq}: {line}");
            let counts = line["body"]["data"]["counts"].as_array().expect("counts");
            assert!(
                counts
                    .iter()
                    .any(|count| count["reason"] == reason && count["attempts"].as_u64() >= Some(1)),
                "seq {seq}: {line}"
            );
        }
    }
}

/// The stored event at `seq` must be a `rejected` with `reason`.
fn assert_rejected(client: &mut Client, seq: u64, reason: &str) {
    let line = export_lines(client)
        .remove(&seq)
        .unwrap_or_else(|| panic!("no event at seq {seq}"));
    assert_eq!(line["kind"], "rejected", "seq {seq}: {line}");
    assert_eq!(line["body"]["data"]["reason"], reason, "seq {seq}: {line}");
}

/// A signed owner command pausing `shard`, approved by `approvers`, as the API takes it.
pub(crate) fn pause_command(
    shard: &str,
    nonce: u64,
    tick: u64,
    approvers: &[SigningKey],
) -> String {
    let mut command = OwnerCommand {
        action: OwnerAction::PauseShard {
            shard: shard.to_owned(),
        },
        expiry_tick: tick + 10_000,
        approvals: Vec::new(),
    };
    for owner in approvers {
        command.approve(nonce, owner);
    }
    json!({"nonce": nonce, "command": command}).to_string()
}

/// Waits until the server has ticked past genesis (so it handles SIGTERM), then stops it.
fn stop(served: &mut Served) {
    let mut client = served.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while current_tick(&mut client) < 1 {
        assert!(std::time::Instant::now() < deadline, "no tick after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        served.terminate(),
        "fabric serve did not exit cleanly on SIGTERM"
    );
}

/// POSTs an owner command that must be refused with HTTP `status` and `reason`, and checks
/// the stored event.
fn assert_command_refused(
    client: &mut Client,
    body: &str,
    status: u16,
    reason: &str,
    record: Record,
) {
    let response = post(client, "/v0/owner/commands", body.as_bytes());
    assert_eq!(response.status, status, "{}", response.text());
    let answer = json_of(&response);
    assert_eq!(answer["error"]["code"], reason, "{answer}");
    assert_on_record(client, &answer, reason, record);
}

/// A job request for `shard`, signed by `key` at `tick`.
fn job_request(key: &SigningKey, shard: &str, request_id: &str, tick: u64) -> String {
    let input_hash = Hash32(*blake3::hash(request_id.as_bytes()).as_bytes());
    let job = blake3::derive_key("fabric 2026-12 request id to job id", request_id.as_bytes());
    let event = Event::new(
        Role::Client,
        tick,
        1,
        JobSubmitted {
            job: u64::from_le_bytes(job[..8].try_into().expect("8 bytes")) >> 1,
            shard: shard.to_owned(),
            workload: "general@1".to_owned(),
            skills: vec!["general".to_owned()],
            duration_ticks: 2,
            deadline_tick: tick + 1_000,
            budget_micros: 5_000,
            input_hash,
        },
    );
    let signed = SignedEvent::sign(&event, key).expect("a job event is small");
    json!({
        "request_id": request_id,
        "model_id": "general",
        "model_version": "1",
        "schema_version": "fabric.job.v0",
        "input_hash": input_hash,
        "event": {
            "author": signed.author,
            "signature": hex::encode(signed.signature.0),
            "signed": BASE64.encode(&signed.signed),
        },
    })
    .to_string()
}

pub(crate) fn load_owner(ceremony: &Ceremony, index: usize) -> SigningKey {
    keys::load_secret(&ceremony.owners[index]).expect("the owner's key loads")
}

#[test]
fn seed_keys_and_too_few_owners_steer_nothing_and_enough_real_owners_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run(dir.path());
    let served = ceremony.serve(&[]);
    assert_eq!(served.keys_line, "keys: operator keys");
    let mut client = served.client();
    let tick = current_tick(&mut client);

    // Owner keys derived from public seeds, as `fabric owner keys` of a scratch folder gives
    // them: not owners of this fabric.
    for (index, seed) in SEEDS.into_iter().enumerate() {
        let approvers = [sim_owner_key(seed, 0), sim_owner_key(seed, 1)];
        let body = pause_command("mars", 100 + index as u64, tick, &approvers);
        // No approval of an owner: evidence against no one, so counted.
        assert_command_refused(&mut client, &body, 401, "unknown_key", Record::Counted);
    }
    // One real owner of the two needed.
    let one = [load_owner(&ceremony, 0)];
    assert_command_refused(
        &mut client,
        &pause_command("mars", 200, tick, &one),
        403,
        "too_few_owner_signatures",
        Record::Rejected,
    );
    // A real owner and a seed-derived "owner".
    let mixed = [load_owner(&ceremony, 2), sim_owner_key(1, 1)];
    assert_command_refused(
        &mut client,
        &pause_command("mars", 201, tick, &mixed),
        401,
        "unknown_key",
        Record::Rejected,
    );

    // Two real owners: executed, and the log holds the command.
    let two = [load_owner(&ceremony, 1), load_owner(&ceremony, 2)];
    let response = post(
        &mut client,
        "/v0/owner/commands",
        pause_command("mars", 300, tick, &two).as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    let seq = json_of(&response)["seq"].as_u64().expect("a seq");
    let line = &export_lines(&mut client)[&seq];
    assert_eq!(line["kind"], "owner_command", "{line}");
    assert_eq!(line["body"]["data"]["action"]["command"], "pause_shard");
    assert_eq!(line["body"]["data"]["action"]["shard"], "mars");
}

#[test]
fn a_job_signed_by_a_seed_derived_client_key_is_refused_and_a_registered_client_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run(dir.path());
    let served = ceremony.serve(&[]);
    let mut client = served.client();
    let tick = current_tick(&mut client);
    for seed in SEEDS {
        let key = derive_signing_key(seed, "sim/client/earth");
        let body = job_request(&key, "earth", &format!("seed-{seed}"), tick);
        let response = post(&mut client, "/v0/jobs", body.as_bytes());
        assert_eq!(response.status, 401, "{}", response.text());
        let answer = json_of(&response);
        assert_eq!(answer["error"]["code"], "unknown_key", "{answer}");
        // Signed by no registered key: counted in the tick's refusals_counted event.
        assert_on_record(&mut client, &answer, "unknown_key", Record::Counted);
    }
    // A registered client's job is judged on its merits: a workload that is no registered
    // model is refused and recorded; a job of a registered model with its input is taken.
    let registered = keys::load_secret(&ceremony.client).expect("the client key loads");
    let body = job_request(&registered, "earth", "registered", tick);
    let response = post(&mut client, "/v0/jobs", body.as_bytes());
    assert_eq!(response.status, 400, "{}", response.text());
    let answer = json_of(&response);
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("no model")),
        "{answer}"
    );
    assert_on_record(&mut client, &answer, "invalid", Record::Rejected);
    crate::nodes::register_models(&mut client, &ceremony);
    crate::nodes::submit_jobs(&mut client, &registered, 1, "registered", 10_000);

    // `fabric submit --sim-client` asks the server first: no simulated key here.
    let server = served.tcp.as_ref().expect("a TCP address").to_string();
    let submitted = fabric(&["submit", "--server", &server, "--sim-client", "earth"]);
    assert!(!submitted.status.success());
    assert!(
        stderr(&submitted).contains("operator keys"),
        "{}",
        stderr(&submitted)
    );
    // ... and a registered key file is signed with as it is, the input sent with the job.
    let input = dir.path().join("state.bin");
    std::fs::write(&input, [7u8; 1024]).expect("input written");
    let submitted = fabric(&[
        "submit",
        "--server",
        &server,
        "--key",
        path(&ceremony.client),
        "--shard",
        "earth",
        "--model-id",
        "encode-state",
        "--input",
        path(&input),
    ]);
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    let _ = CEREMONY_CLIENT;
}

#[test]
fn the_genesis_is_committed_only_with_enough_real_owner_approvals() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::prepare(dir.path());
    let commands = ceremony.commands_file();
    let ledger_key = ceremony.ledger_key();
    let commit = || {
        fabric(&[
            "init",
            "--commit",
            "--data",
            path(&ceremony.data),
            "--ledger-key",
            path(&ledger_key),
        ])
    };
    // No approval, then one real owner's and a seed owner's: refused, nothing written.
    let refused = commit();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("too_few_owner_signatures"),
        "{}",
        stderr(&refused)
    );
    succeed(&[
        "owner",
        "sign",
        path(&commands),
        "--key",
        path(&ceremony.owners[0]),
    ]);
    let approved_by_one = std::fs::read(&commands).expect("the command file reads");
    let seed_owner = dir.path().join("seed-owner.key");
    keys::save_secret(&seed_owner, &sim_owner_key(1, 1), false).expect("writes a key");
    succeed(&["owner", "sign", path(&commands), "--key", path(&seed_owner)]);
    let refused = commit();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unknown_key") && stderr(&refused).contains("not an owner"),
        "{}",
        stderr(&refused)
    );
    assert!(
        !ceremony.data.join("ledger").exists(),
        "a refused genesis left a ledger"
    );
    // Serving before the commit tells what to do.
    let early = ceremony.serve_refused(&[]);
    assert!(
        stderr(&early).contains("fabric init --commit"),
        "{}",
        stderr(&early)
    );

    // The owners drop the copy with the stranger's approval; a second real owner: committed.
    std::fs::write(&commands, approved_by_one).expect("the command file is put back");
    succeed(&[
        "owner",
        "sign",
        path(&commands),
        "--key",
        path(&ceremony.owners[1]),
    ]);
    let committed = commit();
    assert!(committed.status.success(), "{}", stderr(&committed));
    let audit = fabric(&["audit", "--data", path(&ceremony.data), "--json"]);
    assert!(audit.status.success(), "{}", stderr(&audit));
    let report: Value = serde_json::from_str(&stdout(&audit)).expect("audit --json is JSON");
    assert_eq!(report["key_origin"], json!({"origin": "operator"}));
    let audit = fabric(&["audit", "--data", path(&ceremony.data)]);
    assert!(
        stdout(&audit).contains("keys        operator keys"),
        "{}",
        stdout(&audit)
    );
    // A second commit does not write over the first.
    let again = commit();
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds a ledger"),
        "{}",
        stderr(&again)
    );

    // The report reads the log without the ledger key and names the origin.
    let page = dir.path().join("report.html");
    succeed(&[
        "report",
        "--data",
        path(&ceremony.data),
        "--out",
        path(&page),
    ]);
    let html = std::fs::read_to_string(&page).expect("the report reads");
    assert!(
        html.contains(r#"<td data-field="key_origin">operator keys</td>"#),
        "the report does not name the key origin"
    );

    // An owner command submitted offline needs the operator's ledger key, and two owners.
    let pause = dir.path().join("pause.json");
    succeed(&[
        "owner",
        "propose",
        "pause-shard",
        "mars",
        "--nonce",
        "900",
        "--out",
        path(&pause),
    ]);
    for owner in &ceremony.owners[1..] {
        succeed(&["owner", "sign", path(&pause), "--key", path(owner)]);
    }
    let keyless = fabric(&[
        "owner",
        "submit",
        path(&pause),
        "--data",
        path(&ceremony.data),
    ]);
    assert!(!keyless.status.success());
    assert!(
        stderr(&keyless).contains("--ledger-key"),
        "{}",
        stderr(&keyless)
    );
    let submitted = succeed(&[
        "owner",
        "submit",
        path(&pause),
        "--data",
        path(&ceremony.data),
        "--ledger-key",
        path(&ledger_key),
        "--json",
    ]);
    let verdicts: Value = serde_json::from_str(&stdout(&submitted)).expect("JSON verdicts");
    assert_eq!(verdicts["verdicts"][0]["status"], "executed", "{verdicts}");
    let audit = fabric(&["audit", "--data", path(&ceremony.data)]);
    assert!(audit.status.success(), "{}", stderr(&audit));
}

#[test]
fn serve_refuses_wrong_keys_open_key_files_and_simulations_without_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run(dir.path());

    // A ledger key that is not the genesis ledger key.
    let other = dir.path().join("other-ledger.key");
    succeed(&["keygen", "--out", path(&other)]);
    let refused = ceremony.serve_refused(&["--ledger-key", path(&other)]);
    assert!(
        stderr(&refused).contains("not a ledger key of"),
        "{}",
        stderr(&refused)
    );

    // A router key readable by others.
    let mars = ceremony.router_keys().join("mars.key");
    std::fs::set_permissions(&mars, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = ceremony.serve_refused(&[]);
    assert!(stderr(&refused).contains("mars"), "{}", stderr(&refused));
    std::fs::set_permissions(&mars, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // A router key that is not the registered one.
    let swapped = dir.path().join("swapped");
    std::fs::create_dir(&swapped).expect("mkdir");
    for entry in std::fs::read_dir(ceremony.router_keys()).expect("the router keys") {
        let entry = entry.expect("an entry");
        std::fs::copy(entry.path(), swapped.join(entry.file_name())).expect("copy");
    }
    std::fs::copy(
        ceremony.router_keys().join("earth.key"),
        swapped.join("mars.key"),
    )
    .expect("copy");
    let refused = ceremony.serve_refused(&["--router-keys", path(&swapped)]);
    assert!(
        stderr(&refused).contains("registered") && stderr(&refused).contains("mars"),
        "{}",
        stderr(&refused)
    );

    // --simulation on an operator fabric.
    let refused = fabric(&["serve", "--data", path(&ceremony.data), "--simulation"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("operator keys"),
        "{}",
        stderr(&refused)
    );

    // `fabric owner keys` hands out no keys of an operator fabric.
    let keys_out = dir.path().join("owner-keys");
    let refused = fabric(&[
        "owner",
        "keys",
        "--data",
        path(&ceremony.data),
        "--out",
        path(&keys_out),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("operator keys"),
        "{}",
        stderr(&refused)
    );
    assert!(!keys_out.exists());

    // An empty folder is no fabric without --simulation.
    let empty = dir.path().join("empty");
    let refused = fabric(&[
        "serve",
        "--data",
        path(&empty),
        "--ledger-key",
        path(&ceremony.ledger_key()),
        "--router-keys",
        path(&ceremony.router_keys()),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("fabric init"),
        "{}",
        stderr(&refused)
    );

    // A simulated folder is refused without --simulation.
    let simulated = dir.path().join("simulated");
    let mut sim = Served::spawn(&[
        "--data",
        path(&simulated),
        "--simulation",
        "--config",
        DEFAULT_CONFIG,
        "--tick-ms",
        "10",
    ]);
    stop(&mut sim);
    let refused = fabric(&[
        "serve",
        "--data",
        path(&simulated),
        "--ledger-key",
        path(&ceremony.ledger_key()),
        "--router-keys",
        path(&ceremony.router_keys()),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("holds a simulation")
            && stderr(&refused).contains("--simulation"),
        "{}",
        stderr(&refused)
    );

    // The right keys serve it, and a restart serves it again.
    let mut served = ceremony.serve(&[]);
    stop(&mut served);
    let served = ceremony.serve(&[]);
    let mut client = served.client();
    assert_eq!(get(&mut client, "/v0/health").status, 200);
}

#[test]
fn a_simulation_says_its_keys_are_public_in_health_every_answer_and_its_start_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::spawn(&[
        "--data",
        path(&dir.path().join("data")),
        "--simulation",
        "--config",
        DEFAULT_CONFIG,
        "--seed",
        "11",
        "--tick-ms",
        "10",
    ]);
    assert!(
        served.keys_line.contains("simulation: keys are public"),
        "{}",
        served.keys_line
    );
    let mut client = served.client();
    let health = get(&mut client, "/v0/health");
    let body = json_of(&health);
    assert_eq!(body["simulation"], "simulation: keys are public");
    assert_eq!(
        body["key_origin"],
        json!({"origin": "simulation", "seed": 11})
    );
    for path in ["/v0/health", "/v0/jobs/1", "/v0/no-such-thing", "/metrics"] {
        let response = get(&mut client, path);
        assert_eq!(
            response.header("fabric-simulation"),
            Some("keys are public"),
            "{path} answered without the simulation header"
        );
    }

    // An operator fabric carries neither.
    let other = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run(other.path());
    let operator = ceremony.serve(&[]);
    let mut client = operator.client();
    let health = get(&mut client, "/v0/health");
    assert_eq!(health.header("fabric-simulation"), None);
    let body = json_of(&health);
    assert_eq!(body["key_origin"], json!({"origin": "operator"}));
    assert!(body.get("simulation").is_none(), "{body}");
    let _ = Duration::ZERO;
}
