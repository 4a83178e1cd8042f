//! What the owners and strangers can do to a running `fabric serve` (the real binary, real
//! sled): every owner action leaves it ticking and a restart serves again; an oversize command
//! stops nothing; unsigned garbage is counted per tick instead of filling the log; a
//! submission signed too long ago is refused, and a job counts from the tick it was sequenced
//! at. Each test reads the log back to check what was stored and why.

use std::path::Path;
use std::time::{Duration, Instant};

use fabric_api::http_client::Client;
use fabric_events::{
    derive_signing_key, JobType, ModelRegistered, NodeRegistered, OwnerAction, OwnerCommand,
    PublicKey, RetiredQueue, ShardRegistered, SigningKey,
};
use serde_json::{json, Value};

use crate::serve::{
    client_key, current_tick, envelope, export_lines, get, job_id_of, json_of, post, signed_job,
    wait_for_status,
};
use crate::support::{fabric, path, stderr, stdout, Served, SERVE_SEED};

/// An owner key of a served fabric (simulation keys: derived from its public seed).
fn owner(index: u32) -> SigningKey {
    derive_signing_key(SERVE_SEED, &format!("sim/owner/{index}"))
}

/// `action` approved by owners 0 and 2 (the default 2 of 3) under `nonce`, as the body of
/// `POST /v0/owner/commands`.
fn approved(action: OwnerAction, nonce: u64, tick: u64) -> String {
    let mut command = OwnerCommand {
        action,
        expiry_tick: tick + 10_000,
        approvals: Vec::new(),
    };
    command.approve(nonce, &owner(0));
    command.approve(nonce, &owner(2));
    json!({"nonce": nonce, "command": command}).to_string()
}

/// Waits until the fabric is `ticks` ticks past `from` (it keeps ticking), answering
/// `/v0/health` all along.
fn ticks_on(client: &mut Client, from: u64, ticks: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tick = current_tick(client);
        if tick >= from + ticks {
            return tick;
        }
        assert!(
            Instant::now() < deadline,
            "the fabric stopped ticking at tick {tick} (waited for {})",
            from + ticks
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `fabric audit` of a data folder passes.
fn audit_passes(data: &Path) {
    let audit = fabric(&["audit", "--data", path(data)]);
    assert!(
        audit.status.success(),
        "fabric audit: {}{}",
        stdout(&audit),
        stderr(&audit)
    );
}

/// Submits a job to `shard` with `skill` (signed at the current tick) and returns its id.
fn submit(client: &mut Client, shard: &str, request_id: &str, nonce: u64) -> u64 {
    let tick = current_tick(client);
    let signed = signed_job(&client_key(shard), shard, request_id, tick, nonce);
    let response = post(
        client,
        "/v0/jobs",
        envelope(request_id, &signed).to_string().as_bytes(),
    );
    assert_eq!(response.status, 202, "{request_id}: {}", response.text());
    job_id_of(request_id)
}

fn fresh_key(name: &str) -> PublicKey {
    PublicKey::from(&derive_signing_key(SERVE_SEED, &format!("tests/{name}")).verifying_key())
}

/// Every owner action a served fabric can execute, in an order in which each one applies
/// (the jobs named are queued in the paused shard mars when their commands come).
fn every_action(queued: [u64; 2]) -> Vec<OwnerAction> {
    let shard = |name: &str| name.to_owned();
    vec![
        OwnerAction::CancelJob { job: queued[0] },
        OwnerAction::RerouteJob {
            job: queued[1],
            shard: shard("helios"),
        },
        OwnerAction::ResumeShard {
            shard: shard("mars"),
        },
        OwnerAction::PauseAll,
        OwnerAction::ResumeAll,
        OwnerAction::SetQueueBudget {
            shard: shard("earth"),
            queue_budget: 500,
        },
        OwnerAction::SetLatencyBudget {
            shard: shard("earth"),
            latency_budget_ms: 400,
        },
        OwnerAction::SetSpillover {
            shard: shard("earth"),
            targets: vec![shard("luna")],
        },
        OwnerAction::SetTreaty {
            shard: shard("earth"),
            reputation_floor_ppm: 100_000,
            regions_served: ["earth", "luna", "mars", "helios"]
                .map(String::from)
                .to_vec(),
            node_quota_jobs: 10_000,
            quota_window_ticks: 100,
        },
        OwnerAction::DrainNode {
            node: "earth.edge-europa".to_owned(),
        },
        OwnerAction::ResumeNode {
            node: "earth.edge-europa".to_owned(),
        },
        OwnerAction::UpdateNode {
            node: "earth.edge-europa".to_owned(),
            max_concurrency: 3,
            latency_ms: 60,
            price_micros_per_hour: 900_000,
        },
        OwnerAction::DrainNode {
            node: "mars.gpu-helion".to_owned(),
        },
        OwnerAction::RetireNode {
            node: "earth.core-alpha".to_owned(),
        },
        OwnerAction::RegisterShard {
            registration: ShardRegistered {
                shard: shard("ceres"),
                router_key: fresh_key("ceres-router"),
                queue_budget: 100,
                latency_budget_ms: 300,
                spillover: vec![shard("earth")],
                specialties: Vec::new(),
                reputation_floor_ppm: 0,
                regions_served: vec![shard("ceres")],
                node_quota_jobs: 100,
                quota_window_ticks: 10,
            },
        },
        OwnerAction::RegisterNode {
            registration: NodeRegistered {
                node: "ceres.drill".to_owned(),
                region: shard("ceres"),
                node_key: fresh_key("ceres-drill"),
                capacity: 2,
                max_concurrency: 2,
                heartbeat_interval_ticks: 5,
                capabilities: vec!["general".to_owned()],
                latency_ms: 90,
                price_micros_per_hour: 1_000_000,
                reputation_ppm: 900_000,
            },
        },
        OwnerAction::RegisterClient {
            client: "tests.ceres-client".to_owned(),
            key: fresh_key("ceres-client"),
        },
        OwnerAction::RegisterRecorder {
            recorder: "tests.release-bot".to_owned(),
            key: fresh_key("release-bot"),
        },
        OwnerAction::RegisterModel {
            registration: ModelRegistered {
                model_id: "ceres-heat".to_owned(),
                model_version: "1".to_owned(),
                job_type: JobType::PredictNextState,
                weights: [1i32.to_le_bytes(), 3u32.to_le_bytes(), 16u32.to_le_bytes()].concat(),
            },
        },
        OwnerAction::CheckpointNow,
        OwnerAction::SetCheckpointInterval { interval_ticks: 7 },
        OwnerAction::Governance {
            payload: b"minutes of the owners' meeting".to_vec(),
        },
        OwnerAction::RetireShard {
            shard: shard("helios"),
            queue: RetiredQueue::Spill,
        },
        OwnerAction::RetireShard {
            shard: shard("luna"),
            queue: RetiredQueue::Cancel,
        },
    ]
}

#[test]
fn every_owner_action_and_an_oversize_command_leave_a_served_fabric_running_and_restartable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut served = Served::start(&data, None);
    let mut client = served.client();

    // Two jobs wait in mars while it is paused, for cancel-job and reroute-job.
    let tick = current_tick(&mut client);
    let response = post(
        &mut client,
        "/v0/owner/commands",
        approved(
            OwnerAction::PauseShard {
                shard: "mars".into(),
            },
            1,
            tick,
        )
        .as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    let queued = [
        submit(&mut client, "mars", "mars-cancelled", 1),
        submit(&mut client, "mars", "mars-rerouted", 2),
    ];

    for (index, action) in every_action(queued).into_iter().enumerate() {
        let name = format!("{action:?}");
        let tick = current_tick(&mut client);
        let response = post(
            &mut client,
            "/v0/owner/commands",
            approved(action, 100 + index as u64, tick).as_bytes(),
        );
        assert_eq!(response.status, 202, "{name}: {}", response.text());
        let seq = json_of(&response)["seq"].as_u64().expect("a seq");
        assert_eq!(export_lines(&mut client)[&seq]["kind"], "owner_command");
        // The fabric goes on: more than the longest heartbeat grace of its nodes (2 × 20).
        ticks_on(&mut client, tick, 3);
    }
    let tick = current_tick(&mut client);
    ticks_on(&mut client, tick, 45);

    // An oversize command, with no approvals and with two real ones: 413, nothing stored,
    // and the fabric keeps ticking.
    let huge = OwnerAction::Governance {
        payload: vec![7; 17_000],
    };
    let unapproved = json!({"nonce": 900, "command": OwnerCommand {
        action: huge.clone(),
        expiry_tick: tick + 10_000,
        approvals: Vec::new(),
    }})
    .to_string();
    for body in [unapproved, approved(huge, 901, tick)] {
        let response = post(&mut client, "/v0/owner/commands", body.as_bytes());
        assert_eq!(response.status, 413, "{}", response.text());
        assert_eq!(json_of(&response)["error"]["code"], "oversize");
    }
    ticks_on(&mut client, tick, 5);

    // Jobs still run: on a node that is neither drained nor retired.
    let after = submit(&mut client, "mars", "after-every-action", 3);
    wait_for_status(&mut client, after, "completed");
    let lines = export_lines(&mut client);
    let retired_key = derive_signing_key(SERVE_SEED, "sim/node/earth.core-alpha");
    let retired_author = hex::encode(retired_key.verifying_key().as_bytes());
    let retired_at = lines
        .values()
        .find(|line| {
            line["kind"] == "owner_command"
                && line["body"]["data"]["action"]["command"] == "retire_node"
        })
        .and_then(|line| line["seq"].as_u64())
        .expect("the retirement is in the log");
    assert!(
        lines
            .range(retired_at..)
            .all(|(_, line)| line["author"] != retired_author.as_str()),
        "the retired node spoke after its retirement"
    );
    assert!(
        lines.values().all(|line| line["kind"] != "rejected"),
        "nothing was refused"
    );

    assert!(served.terminate(), "fabric serve exits 0 on SIGTERM");
    audit_passes(&data);

    // A restart replays into the same state and serves again.
    let restarted = Served::start(&data, None);
    let mut client = restarted.client();
    let tick = current_tick(&mut client);
    ticks_on(&mut client, tick, 5);
    let again = submit(&mut client, "mars", "after-the-restart", 4);
    wait_for_status(&mut client, again, "completed");
    drop(restarted);
    audit_passes(&data);
}

/// One junk request of kind `index % 3`: not JSON, a job with a bad signature, a job signed by
/// a key nobody registered.
fn junk(index: usize, tick: u64) -> (Vec<u8>, Option<&'static str>) {
    let request_id = format!("junk-{index}");
    match index % 3 {
        0 => (b"{ not json".to_vec(), None),
        1 => {
            let signed = signed_job(&client_key("earth"), "earth", &request_id, tick, 1);
            let mut body = envelope(&request_id, &signed);
            let mut signature =
                hex::decode(body["event"]["signature"].as_str().expect("hex")).expect("hex");
            signature[0] ^= 0x55;
            body["event"]["signature"] = json!(hex::encode(signature));
            (body.to_string().into_bytes(), Some("bad_signature"))
        }
        _ => {
            let stranger = derive_signing_key(index as u64, "tests/stranger");
            let signed = signed_job(&stranger, "earth", &request_id, tick, 1);
            (
                envelope(&request_id, &signed).to_string().into_bytes(),
                Some("unknown_key"),
            )
        }
    }
}

#[test]
fn ten_thousand_junk_requests_add_entries_per_tick_not_per_request() {
    const JUNK: usize = 10_000;
    const SENDERS: usize = 40;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("fabric.sock");
    let served = Served::start(&dir.path().join("data"), Some(&socket));
    let mut client = served.client();
    let health = json_of(&get(&mut client, "/v0/health"));
    let (tick_before, size_before) = (
        health["tick"].as_u64().expect("a tick"),
        health["ledger"]["size"].as_u64().expect("a size"),
    );

    // The Unix socket is the operator's and has no refusal allowance: every junk request
    // reaches the driver.
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let mut client = served.unix_client();
            std::thread::spawn(move || {
                let mut refused = [0usize; 3];
                for index in (sender..JUNK).step_by(SENDERS) {
                    let (body, reason) = junk(index, tick_before);
                    let response = post(&mut client, "/v0/jobs", &body);
                    let answer = json_of(&response);
                    match reason {
                        None => assert_eq!(answer["error"]["code"], "bad_body"),
                        Some(reason) => {
                            assert_eq!(response.status, 401, "{answer}");
                            assert_eq!(answer["error"]["code"], reason, "{answer}");
                            assert!(answer["error"]["counted_seq"].is_u64(), "{answer}");
                        }
                    }
                    refused[index % 3] += 1;
                }
                refused
            })
        })
        .collect();
    let mut refused = [0usize; 3];
    for sender in senders {
        let sent = sender.join().expect("a sender finishes");
        for kind in 0..3 {
            refused[kind] += sent[kind];
        }
    }
    assert_eq!(refused.iter().sum::<usize>(), JUNK);

    let health = json_of(&get(&mut client, "/v0/health"));
    let (tick_after, size_after) = (
        health["tick"].as_u64().expect("a tick"),
        health["ledger"]["size"].as_u64().expect("a size"),
    );
    let lines = export_lines(&mut client);
    let added: Vec<&Value> = lines
        .range(size_before..size_after)
        .map(|(_, l)| l)
        .collect();
    let counting: Vec<&&Value> = added
        .iter()
        .filter(|line| line["kind"] == "refusals_counted")
        .collect();
    let ticks = tick_after - tick_before;
    assert!(
        counting.len() as u64 <= ticks + 1,
        "{} refusals_counted events in {ticks} ticks",
        counting.len()
    );
    assert!(
        added
            .iter()
            .all(|line| line["kind"] != "rejected" && line["kind"] != "job_submitted"),
        "junk left a rejected event or a job"
    );
    // What else was added is the fabric's own ticking (heartbeats, health, checkpoints).
    let own = added
        .iter()
        .filter(|line| line["body"]["role"] == "node" || line["body"]["role"] == "router")
        .count();
    assert!(
        (added.len() - own) as u64 <= 2 * (ticks + 1),
        "{} entries of the ledger's own in {ticks} ticks",
        added.len() - own
    );
    // The counts add up to every signed-looking junk request, per reason.
    let counted = |reason: &str| -> u64 {
        counting
            .iter()
            .flat_map(|line| line["body"]["data"]["counts"].as_array().expect("counts"))
            .filter(|count| count["reason"] == reason)
            .map(|count| count["attempts"].as_u64().expect("attempts"))
            .sum()
    };
    assert_eq!(counted("bad_signature"), refused[1] as u64);
    assert_eq!(counted("unknown_key"), refused[2] as u64);
    let metrics = get(&mut client, "/metrics").text();
    assert!(
        metrics.contains(&format!(
            "fabric_refusals_counted_total{{reason=\"bad_signature\"}} {}",
            refused[1]
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("fabric_requests_unreadable_total {}", refused[0])),
        "{metrics}"
    );

    // Over TCP a peer's refusals are limited: 429 with the JSON error body, and the server
    // still answers everyone's health.
    let mut limited = None;
    for index in 0..1_000 {
        let (body, _) = junk(3 * index + 1, tick_before);
        let response = post(&mut client, "/v0/jobs", &body);
        if response.status == 429 {
            limited = Some(json_of(&response));
            break;
        }
    }
    let limited = limited.expect("a peer sending junk is limited");
    assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");
    assert_eq!(get(&mut client, "/v0/health").status, 200);

    // A refusal signed by a registered key is still evidence, recorded on its own.
    let tick = current_tick(&mut client);
    let earth = client_key("earth");
    let stale = signed_job(&earth, "earth", "stale", tick.saturating_sub(500), 9);
    let mut unix = served.unix_client();
    let response = post(
        &mut unix,
        "/v0/jobs",
        envelope("stale", &stale).to_string().as_bytes(),
    );
    assert_eq!(response.status, 400, "{}", response.text());
    let answer = json_of(&response);
    let seq = answer["error"]["rejected_seq"]
        .as_u64()
        .expect("a rejected seq");
    let line = &export_lines(&mut unix)[&seq];
    assert_eq!(line["kind"], "rejected");
    assert_eq!(line["body"]["data"]["reason"], "invalid");
    assert_eq!(
        line["body"]["data"]["claimed_author"],
        hex::encode(earth.verifying_key().as_bytes())
    );

    // An owner command without one valid approval of an owner is counted; with one real
    // approval (of the two needed) it is evidence, recorded.
    let pause = |approvers: &[SigningKey], nonce: u64| {
        let mut command = OwnerCommand {
            action: OwnerAction::PauseAll,
            expiry_tick: tick + 10_000,
            approvals: Vec::new(),
        };
        for approver in approvers {
            command.approve(nonce, approver);
        }
        json!({"nonce": nonce, "command": command}).to_string()
    };
    let strangers = [
        derive_signing_key(1, "tests/stranger"),
        derive_signing_key(2, "tests/stranger"),
    ];
    for (body, status, reason, recorded) in [
        (pause(&strangers, 1), 401, "unknown_key", false),
        (pause(&[], 2), 403, "too_few_owner_signatures", false),
        (pause(&[owner(1)], 3), 403, "too_few_owner_signatures", true),
    ] {
        let response = post(&mut unix, "/v0/owner/commands", body.as_bytes());
        assert_eq!(response.status, status, "{}", response.text());
        let answer = json_of(&response);
        assert_eq!(answer["error"]["code"], reason, "{answer}");
        let (key, kind) = if recorded {
            ("rejected_seq", "rejected")
        } else {
            ("counted_seq", "refusals_counted")
        };
        let seq = answer["error"][key].as_u64().expect("a seq");
        assert_eq!(export_lines(&mut unix)[&seq]["kind"], kind, "{answer}");
    }
    // The counts are part of the audited log.
    drop(served);
    audit_passes(&dir.path().join("data"));
}

#[test]
fn a_backdated_job_is_refused_and_one_at_the_window_edge_counts_from_its_sequencing_tick() {
    const WINDOW: u64 = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let served = Served::start_with(
        &data,
        None,
        &["--submission-tick-window", &WINDOW.to_string()],
    );
    let mut client = served.client();
    let earth = client_key("earth");
    ticks_on(&mut client, 0, 150);

    // Signed 100 ticks ago: refused, recorded against its (registered) signer.
    let tick = current_tick(&mut client);
    let old = signed_job(&earth, "earth", "backdated", tick - 100, 1);
    let response = post(
        &mut client,
        "/v0/jobs",
        envelope("backdated", &old).to_string().as_bytes(),
    );
    assert_eq!(response.status, 400, "{}", response.text());
    let answer = json_of(&response);
    assert_eq!(answer["error"]["code"], "invalid");
    let message = answer["error"]["message"].as_str().expect("a message");
    assert!(message.contains("submission tick window"), "{message}");
    let seq = answer["error"]["rejected_seq"].as_u64().expect("a seq");
    let line = &export_lines(&mut client)[&seq];
    assert_eq!(line["kind"], "rejected");
    assert_eq!(line["body"]["data"]["reason"], "invalid");
    assert_eq!(
        get(&mut client, &format!("/v0/jobs/{}", job_id_of("backdated"))).status,
        404
    );

    // Signed exactly `WINDOW` ticks before the tick it will be sequenced at (the next one,
    // when it arrives in time; tries again when the fabric ticked on meanwhile).
    let mut edge = None;
    for attempt in 0..50u64 {
        let request_id = format!("edge-{attempt}");
        let seen = current_tick(&mut client);
        let signed_at = seen + 1 - WINDOW;
        let signed = signed_job(&earth, "earth", &request_id, signed_at, 10 + attempt);
        let response = post(
            &mut client,
            "/v0/jobs",
            envelope(&request_id, &signed).to_string().as_bytes(),
        );
        let answer = json_of(&response);
        if response.status == 202 && answer["tick"].as_u64() == Some(signed_at + WINDOW) {
            edge = Some((request_id, signed_at, answer));
            break;
        }
    }
    let (request_id, signed_at, accepted) = edge.expect("a job at the window's edge is admitted");
    let sequenced_at = accepted["tick"].as_u64().expect("a tick");
    let job = job_id_of(&request_id);
    let status = wait_for_status(&mut client, job, "completed");
    let timings = &status["timings"];
    assert_eq!(timings["submitted_tick"], sequenced_at, "{status}");
    let finished = timings["finished_tick"].as_u64().expect("finished");
    assert_eq!(
        timings["latency_ticks"],
        finished - sequenced_at,
        "{status}"
    );
    let submitted = export_lines(&mut client)
        .into_values()
        .find(|line| line["kind"] == "job_submitted" && line["body"]["data"]["job"] == job)
        .expect("the job is in the log");
    assert_eq!(
        submitted["body"]["tick"], signed_at,
        "the client's own tick is kept"
    );

    // The log alone gives the same: a restart rebuilds the index from it.
    drop(served);
    let restarted = Served::start(&data, None);
    let mut client = restarted.client();
    let status = json_of(&get(&mut client, &format!("/v0/jobs/{job}")));
    assert_eq!(
        status["timings"]["submitted_tick"], sequenced_at,
        "{status}"
    );
    drop(restarted);
    audit_passes(&data);
}
