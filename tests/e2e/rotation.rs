//! Key rotation on a served fabric, as its operator and an attacker meet it: the real
//! `fabric serve` with staged secrets, real sled underneath. A rotated ledger key signs every
//! rejection, checkpoint and tree head after its rotation; `fabric audit`, a restart and
//! `fabric verify-proof` follow the rotation from the genesis key; a tree head signed by the old
//! key after the rotation is refused. Rotated client, router and node keys are refused
//! `retired_key` and the new keys serve; a rotation the server holds no secret for is refused
//! `invalid` and the fabric goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fabric_events::{
    derive_signing_key, KeyTarget, OwnerAction, OwnerCommand, PublicKey, SigningKey,
};
use serde_json::{json, Value};

use crate::serve::{
    client_key, current_tick, envelope, export_lines, get, job_id_of, json_of, post, signed_job,
    wait_for_status,
};
use crate::support::{fabric, path, stderr, stdout, DEFAULT_CONFIG};
use crate::support::{Served, SERVE_SEED as SEED};
use fabric_api::http_client::Client;

fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from(&key.verifying_key())
}

fn hex_of(key: &SigningKey) -> String {
    public(key).to_hex()
}

/// The seed-1 ledger key a served fabric of `SEED` starts with (its genesis key).
fn genesis_ledger_key() -> SigningKey {
    derive_signing_key(SEED, "sim/ledger")
}

/// A fresh key saved as a secret key file (mode 0600), as `fabric keygen` writes one.
fn staged_key(dir: &Path, name: &str) -> (SigningKey, PathBuf) {
    let key = fabric_events::keys::generate();
    let file = dir.join(format!("{name}.key"));
    fabric_events::keys::save_secret(&file, &key, false).expect("a secret key file");
    (key, file)
}

/// An owner command approved by the first two owners (the default 2 of 3), as JSON to POST.
fn approved(action: OwnerAction, tick: u64, nonce: u64) -> Vec<u8> {
    let mut command = OwnerCommand {
        action,
        expiry_tick: tick + 10_000,
        approvals: Vec::new(),
    };
    for index in 0..2 {
        command.approve(
            nonce,
            &derive_signing_key(SEED, &format!("sim/owner/{index}")),
        );
    }
    json!({"nonce": nonce, "command": command})
        .to_string()
        .into_bytes()
}

/// POSTs an owner command; its answer's status and JSON.
fn command(client: &mut Client, action: OwnerAction, nonce: u64) -> (u16, Value) {
    let tick = current_tick(client);
    let response = post(client, "/v0/owner/commands", &approved(action, tick, nonce));
    (response.status, json_of(&response))
}

/// The seq of a refusal's stored `rejected` event, checked against the log: its reason, and
/// the ledger key that signed it.
fn stored_rejection(
    lines: &BTreeMap<u64, Value>,
    answer: &Value,
    reason: &str,
    signer: &str,
) -> u64 {
    assert_eq!(answer["error"]["code"], reason, "{answer}");
    let seq = answer["error"]["rejected_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("a rejected seq: {answer}"));
    let line = &lines[&seq];
    assert_eq!(line["kind"], "rejected", "{line}");
    assert_eq!(line["body"]["data"]["reason"], reason, "{line}");
    assert_eq!(line["author"], signer, "{line}");
    seq
}

fn serve_args(files: &[PathBuf]) -> Vec<&str> {
    files
        .iter()
        .flat_map(|file| ["--staged-key", path(file)])
        .collect()
}

/// Waits until a checkpoint is stored after `after`; its line.
fn checkpoint_after(client: &mut Client, after: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some((_, line)) = export_lines(client)
            .into_iter()
            .find(|(seq, line)| *seq > after && line["kind"] == "checkpoint")
        {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint after seq {after} within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Submits a job of `shard` signed by `key`; its answer.
fn submit(
    client: &mut Client,
    key: &SigningKey,
    shard: &str,
    request_id: &str,
    nonce: u64,
) -> (u16, Value) {
    let tick = current_tick(client);
    let signed = signed_job(key, shard, request_id, tick, nonce);
    let response = post(
        client,
        "/v0/jobs",
        envelope(request_id, &signed).to_string().as_bytes(),
    );
    (response.status, json_of(&response))
}

/// The tree size of a proof document's tree head.
fn head_size(document: &[u8]) -> u64 {
    let doc: Value = serde_json::from_slice(document).expect("proof JSON");
    doc["tree_head"]["tree_size"].as_u64().expect("a tree size")
}

#[test]
fn a_rotated_ledger_key_signs_from_its_rotation_on_and_audit_restart_and_proofs_follow_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (new_ledger, staged) = staged_key(dir.path(), "ledger-2");
    let staged = vec![staged];
    let old_hex = hex_of(&genesis_ledger_key());
    let new_hex = hex_of(&new_ledger);
    let mut served = Served::start_with(&data, None, &serve_args(&staged));
    let mut client = served.client();

    // An early entry, to prove across the rotation later.
    let (status, answer) = submit(&mut client, &client_key("earth"), "earth", "before", 1);
    assert_eq!(status, 202, "{answer}");
    let early_seq = answer["seq"].as_u64().expect("a seq");
    // A size before the rotation with a signed tree head (the head after an append).
    let size_before = json_of(&get(&mut client, "/v0/health"))["ledger"]["tree_head"]["tree_size"]
        .as_u64()
        .expect("a tree size");

    let rotation = OwnerAction::RotateKey {
        target: KeyTarget::Ledger,
        new_key: public(&new_ledger),
    };
    let (status, answer) = command(&mut client, rotation, 900);
    assert_eq!(status, 202, "{answer}");
    let rotated_at = answer["seq"].as_u64().expect("a seq");
    let lines = export_lines(&mut client);
    // The rotation's own envelope is the old key's.
    assert_eq!(lines[&rotated_at]["kind"], "owner_command");
    assert_eq!(lines[&rotated_at]["author"], old_hex.as_str());
    assert_eq!(
        lines[&rotated_at]["body"]["data"]["action"]["command"],
        "rotate_key"
    );

    // A rotation of a router to a key the server holds no secret of: refused `invalid`
    // before it applies, recorded by a rejection the new ledger key signs; nothing stops.
    let stranger = derive_signing_key(SEED, "tests/unstaged-router");
    let (status, answer) = command(
        &mut client,
        OwnerAction::RotateKey {
            target: KeyTarget::Router {
                shard: "earth".to_owned(),
            },
            new_key: public(&stranger),
        },
        901,
    );
    assert_eq!(status, 400, "{answer}");
    let lines = export_lines(&mut client);
    stored_rejection(&lines, &answer, "invalid", &new_hex);
    // Back to the retired key: refused `invalid` (a key once held is never held again).
    let (status, answer) = command(
        &mut client,
        OwnerAction::RotateKey {
            target: KeyTarget::Ledger,
            new_key: public(&genesis_ledger_key()),
        },
        902,
    );
    assert_eq!(status, 400, "{answer}");
    stored_rejection(&export_lines(&mut client), &answer, "invalid", &new_hex);

    // A checkpoint after the rotation is the new key's; the fabric goes on taking jobs.
    let (status, answer) = command(&mut client, OwnerAction::CheckpointNow, 903);
    assert_eq!(status, 202, "{answer}");
    let checkpoint = checkpoint_after(&mut client, rotated_at);
    assert_eq!(checkpoint["author"], new_hex.as_str(), "{checkpoint}");
    let (status, answer) = submit(&mut client, &client_key("mars"), "mars", "after", 2);
    assert_eq!(status, 202, "{answer}");
    wait_for_status(&mut client, job_id_of("after"), "completed");
    let health = json_of(&get(&mut client, "/v0/health"));
    assert_eq!(
        health["ledger"]["tree_head"]["ledger_key"],
        new_hex.as_str(),
        "{health}"
    );
    assert!(
        served.terminate(),
        "fabric serve did not exit 0 after SIGTERM"
    );

    // The audit follows the rotation from the genesis key; from the checkpoint the new key
    // signed, it starts there (the checkpoint verifies, nothing is skipped).
    let audit = fabric(&["audit", "--data", path(&data)]);
    assert!(
        audit.status.success(),
        "audit: {}{}",
        stdout(&audit),
        stderr(&audit)
    );
    let checkpoint_seq = checkpoint["seq"].as_u64().expect("a seq");
    let audit = fabric(&[
        "audit",
        "--data",
        path(&data),
        "--from",
        &checkpoint_seq.to_string(),
    ]);
    assert!(
        audit.status.success(),
        "audit: {}{}",
        stdout(&audit),
        stderr(&audit)
    );
    assert!(
        stdout(&audit).contains(&format!("from seq {checkpoint_seq} ")),
        "{}",
        stdout(&audit)
    );
    assert!(!stdout(&audit).contains("note:"), "{}", stdout(&audit));

    // A proof of the early entry in the whole log (past the rotation) verifies from the genesis
    // key alone; the same document with its head signed by the old key does not.
    let proof = fabric(&[
        "proof",
        "--data",
        path(&data),
        "--seq",
        &early_seq.to_string(),
    ]);
    assert!(proof.status.success(), "proof: {}", stderr(&proof));
    let proof_file = dir.path().join("proof.json");
    std::fs::write(&proof_file, &proof.stdout).expect("write the proof");
    let verify = |file: &Path| {
        fabric(&[
            "verify-proof",
            "--proof",
            path(file),
            "--ledger-key",
            &old_hex,
        ])
    };
    let verified = verify(&proof_file);
    assert!(
        verified.status.success(),
        "verify-proof: {}",
        stderr(&verified)
    );
    assert!(
        stdout(&verified).contains("rotated 1 time"),
        "{}",
        stdout(&verified)
    );
    assert!(
        stdout(&verified).contains(&new_hex),
        "{}",
        stdout(&verified)
    );
    // A consistency proof from before the rotation to after it verifies from the genesis key.
    let size_after = head_size(&proof.stdout);
    let consistency = fabric(&[
        "proof",
        "--data",
        path(&data),
        "--consistency",
        &size_before.to_string(),
        &size_after.to_string(),
    ]);
    assert!(
        consistency.status.success(),
        "proof: {}",
        stderr(&consistency)
    );
    let consistency_file = dir.path().join("consistency.json");
    std::fs::write(&consistency_file, &consistency.stdout).expect("write the proof");
    let verified = verify(&consistency_file);
    assert!(
        verified.status.success(),
        "verify-proof: {}",
        stderr(&verified)
    );
    assert!(
        stdout(&verified).contains("rotated 1 time"),
        "{}",
        stdout(&verified)
    );

    let mut forged: Value = serde_json::from_slice(&proof.stdout).expect("proof JSON");
    assert_eq!(forged["ledger_rotations"][0]["seq"], rotated_at);
    let size = forged["tree_head"]["tree_size"].as_u64().expect("a size");
    let root = fabric_events::Hash32::from_hex(forged["tree_head"]["root"].as_str().expect("root"))
        .expect("a root");
    let head = fabric_ledger::SignedTreeHead::sign(size, root, &genesis_ledger_key());
    forged["tree_head"] = serde_json::to_value(head).expect("a head");
    let forged_file = dir.path().join("forged.json");
    std::fs::write(&forged_file, forged.to_string()).expect("write");
    let refused = verify(&forged_file);
    assert!(
        !refused.status.success(),
        "a head signed by the retired key verified"
    );
    assert!(
        stderr(&refused).contains("not by the ledger key in force"),
        "{}",
        stderr(&refused)
    );
    // Without its rotations, the forged head cannot be tied to the trusted key either way:
    // the verifier that knows the new key refuses the old key's head.
    forged["ledger_rotations"] = json!([]);
    std::fs::write(&forged_file, forged.to_string()).expect("write");
    let refused = fabric(&[
        "verify-proof",
        "--proof",
        path(&forged_file),
        "--ledger-key",
        &new_hex,
    ]);
    assert!(
        !refused.status.success(),
        "the new key accepted the old key's head"
    );

    // Without its staged secret, the fabric refuses to serve (it could not sign) and says why.
    let refused = fabric(&[
        "serve",
        "--data",
        path(&data),
        "--simulation",
        "--config",
        DEFAULT_CONFIG,
        "--seed",
        &SEED.to_string(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains(&new_hex), "{}", stderr(&refused));

    // With it, a restart (a restore from the checkpoint the new key signed) serves again.
    let restarted = Served::start_with(&data, None, &serve_args(&staged));
    let mut client = restarted.client();
    let (status, answer) = submit(&mut client, &client_key("luna"), "luna", "restarted", 3);
    assert_eq!(status, 202, "{answer}");
    wait_for_status(&mut client, job_id_of("restarted"), "completed");
    let lines = export_lines(&mut client);
    let signers: Vec<&Value> = lines
        .range(rotated_at + 1..)
        .filter(|(_, line)| line["body"]["role"] == "ledger" || line["kind"] == "owner_command")
        .map(|(_, line)| &line["author"])
        .collect();
    assert!(!signers.is_empty());
    assert!(
        signers.iter().all(|author| *author == new_hex.as_str()),
        "{signers:?}"
    );
}

#[test]
fn rotated_client_router_and_node_keys_are_refused_retired_key_and_the_new_keys_serve() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (router, router_file) = staged_key(dir.path(), "router-earth-2");
    let (node, node_file) = staged_key(dir.path(), "node-earth-core-alpha-2");
    let staged = vec![router_file, node_file];
    let served = Served::start_with(&data, None, &serve_args(&staged));
    let mut client = served.client();
    let ledger_hex = hex_of(&genesis_ledger_key());

    // The client key of earth is rotated to a key its client holds (nothing staged).
    let old_client = client_key("earth");
    let new_client = derive_signing_key(SEED, "tests/earth-client-2");
    for (nonce, target, new_key) in [
        (
            910,
            KeyTarget::Client {
                client: "earth.clients".to_owned(),
            },
            public(&new_client),
        ),
        (
            911,
            KeyTarget::Router {
                shard: "earth".to_owned(),
            },
            public(&router),
        ),
        (
            912,
            KeyTarget::Node {
                node: "earth.core-alpha".to_owned(),
            },
            public(&node),
        ),
    ] {
        let (status, answer) = command(
            &mut client,
            OwnerAction::RotateKey { target, new_key },
            nonce,
        );
        assert_eq!(status, 202, "{answer}");
    }
    // A node rotated to a key with no staged secret: refused `invalid`, stored.
    let (status, answer) = command(
        &mut client,
        OwnerAction::RotateKey {
            target: KeyTarget::Node {
                node: "earth.edge-europa".to_owned(),
            },
            new_key: public(&derive_signing_key(SEED, "tests/unstaged-node")),
        },
        913,
    );
    assert_eq!(status, 400, "{answer}");
    stored_rejection(&export_lines(&mut client), &answer, "invalid", &ledger_hex);

    // The old client key: refused `retired_key`, and its rejection names it.
    let (status, answer) = submit(&mut client, &old_client, "earth", "old-client", 50);
    assert_eq!(status, 401, "{answer}");
    let lines = export_lines(&mut client);
    let seq = stored_rejection(&lines, &answer, "retired_key", &ledger_hex);
    assert_eq!(
        lines[&seq]["body"]["data"]["claimed_author"],
        hex_of(&old_client).as_str()
    );

    // The new client key's jobs run on earth, routed and run under the rotated keys.
    let mut submitted = Vec::new();
    for index in 0..4 {
        let request_id = format!("new-client-{index}");
        let (status, answer) = submit(&mut client, &new_client, "earth", &request_id, 1 + index);
        assert_eq!(status, 202, "{answer}");
        submitted.push(job_id_of(&request_id));
    }
    for job in &submitted {
        wait_for_status(&mut client, *job, "completed");
    }
    let lines = export_lines(&mut client);
    let router_hex = hex_of(&router);
    let assigned_by: Vec<&Value> = lines
        .values()
        .filter(|line| {
            line["kind"] == "job_assigned"
                && submitted.contains(&line["body"]["data"]["job"].as_u64().unwrap_or(0))
        })
        .map(|line| &line["author"])
        .collect();
    assert_eq!(assigned_by.len(), submitted.len());
    assert!(assigned_by
        .iter()
        .all(|author| *author == router_hex.as_str()));
    let node_hex = hex_of(&node);
    let rotated_at = lines
        .iter()
        .find(|(_, line)| {
            line["kind"] == "owner_command"
                && line["body"]["data"]["action"]["target"]["holder"] == "node"
        })
        .map(|(seq, _)| *seq)
        .expect("the node's rotation");
    // The node heartbeats every 12 ticks: wait (bounded) for one after its rotation.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let authors = loop {
        let authors: Vec<Value> = export_lines(&mut client)
            .range(rotated_at + 1..)
            .filter(|(_, line)| {
                matches!(line["kind"].as_str(), Some("heartbeat" | "job_receipt"))
                    && line["body"]["data"]["node"] == "earth.core-alpha"
            })
            .map(|(_, line)| line["author"].clone())
            .collect();
        if authors.len() > 1 || std::time::Instant::now() > deadline {
            break authors;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!authors.is_empty(), "earth.core-alpha went silent");
    assert!(
        authors.iter().all(|author| *author == node_hex.as_str()),
        "{authors:?}"
    );
    drop(served);
    let audit = fabric(&["audit", "--data", path(&data)]);
    assert!(
        audit.status.success(),
        "audit: {}{}",
        stdout(&audit),
        stderr(&audit)
    );

    // Restarted without the staged secrets, the fabric refuses to serve and names the key it
    // could not sign with; with them, it serves the rotated keys again.
    let refused = fabric(&[
        "serve",
        "--data",
        path(&data),
        "--simulation",
        "--config",
        DEFAULT_CONFIG,
        "--seed",
        &SEED.to_string(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(&router_hex),
        "{}",
        stderr(&refused)
    );
    let restarted = Served::start_with(&data, None, &serve_args(&staged));
    let mut client = restarted.client();
    let (status, answer) = submit(&mut client, &new_client, "earth", "restarted", 100);
    assert_eq!(status, 202, "{answer}");
    wait_for_status(&mut client, job_id_of("restarted"), "completed");
}
