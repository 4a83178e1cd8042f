//! Federation and artifacts (docs/FORMAT.md §18, §19): two served fabrics with their own
//! ledger keys exchange dual-signed receipts while both keep appending, and catch a peer that
//! tells another history; a recorded file's bundle verifies offline and fails when anything
//! in it, the file or the key changes.

use std::path::Path;
use std::process::Output;

use fabric_events::{FederationReceipt, OwnerAction, OwnerCommand, PublicKey};
use serde_json::{json, Value};

use crate::serve::{get, json_of, post};
use crate::support::{fabric, path, stderr, stdout, succeed, Ceremony, Served};

/// A loopback port free now (the server binds it a moment later).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Serves `ceremony` on `port`, federating with `peers` (URL=VKEY).
fn serve_federated(ceremony: &Ceremony, port: u16, peers: &[String]) -> Served {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", &listen, "--federation-interval-ms", "200"];
    for peer in peers {
        args.extend(["--federation-peer", peer.as_str()]);
    }
    ceremony.serve(&args)
}

fn vkey(ceremony: &Ceremony) -> String {
    ceremony
        .checkpoint_verifier_key
        .clone()
        .expect("fabric init --commit printed the checkpoint verifier key")
}

fn origin_of_vkey(vkey: &str) -> String {
    vkey.split('+').next().expect("a name").to_owned()
}

/// `fabric record FILE` by `key` at `server`.
fn record(server: &str, file: &Path, kind: &str, key: &Path) -> Output {
    fabric(&[
        "record",
        path(file),
        "--kind",
        kind,
        "--key",
        path(key),
        "--server",
        server,
    ])
}

/// `fabric federation sync` of `server` with `peer`, retried while the interval since the
/// last receipt has not passed (429): the final output.
fn sync(server: &str, peer: &str) -> Output {
    for _ in 0..100 {
        let output = fabric(&["federation", "sync", "--server", server, "--peer", peer]);
        if !stderr(&output).contains("too_soon") {
            return output;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the interval never passed");
}

/// Every federation receipt of `server`'s log, by `fabric federation status --out`.
fn receipts(server: &str, dir: &Path) -> Vec<(String, FederationReceipt)> {
    succeed(&[
        "federation",
        "status",
        "--server",
        server,
        "--out",
        path(dir),
    ]);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("the receipts folder")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("a receipt file");
            (
                path(&file).to_owned(),
                serde_json::from_str(&text).expect("a receipt"),
            )
        })
        .collect()
}

#[test]
fn two_fabrics_sync_three_times_while_appending_and_a_forked_peer_is_refused_and_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    for side in ["a", "b"] {
        std::fs::create_dir(dir.path().join(side)).expect("a folder");
    }
    let (a, b) = (
        Ceremony::run(&dir.path().join("a")),
        Ceremony::run(&dir.path().join("b")),
    );
    // B as it was before it served: served later with the same key, it tells another history.
    let b_copy = dir.path().join("b-copy");
    crate::audit::copy_dir(&b.data, &b_copy);
    let (a_port, b_port) = (free_port(), free_port());
    let (a_url, b_url) = (
        format!("http://127.0.0.1:{a_port}"),
        format!("http://127.0.0.1:{b_port}"),
    );
    let (a_vkey, b_vkey) = (vkey(&a), vkey(&b));
    // A simulation's keys are public: its receipts would be anyone's word.
    let simulated = dir.path().join("simulated");
    let peer = format!("{b_url}={b_vkey}");
    let said = Served::refused(&[
        "--data",
        path(&simulated),
        "--simulation",
        "--federation-peer",
        &peer,
    ]);
    assert!(said.contains("simulation's keys are public"), "{said}");
    let served_a = serve_federated(&a, a_port, &[format!("{b_url}={b_vkey}")]);
    let mut served_b = serve_federated(&b, b_port, &[format!("{a_url}={a_vkey}")]);
    let notes = dir.path().join("note.txt");

    // Three syncs, both fabrics appending records between them; the third started by B.
    for round in 0..3 {
        std::fs::write(&notes, format!("round {round}")).expect("a file");
        for (url, ceremony) in [(&a_url, &a), (&b_url, &b)] {
            let recorded = record(url, &notes, "report", &ceremony.owners[0]);
            assert!(recorded.status.success(), "{}", stderr(&recorded));
        }
        let (from, to) = if round == 2 {
            (&b_url, &a_url)
        } else {
            (&a_url, &b_url)
        };
        let synced = sync(from, to);
        assert!(synced.status.success(), "sync {round}: {}", stderr(&synced));
        let answer: Value = serde_json::from_str(&stdout(&synced)).expect("JSON");
        assert!(answer["seq"].as_u64().is_some(), "{answer}");
        assert!(answer["peer_seq"].as_u64().is_some(), "{answer}");
    }

    // Both logs hold the same three receipts, with the same merged roots.
    let held_a = receipts(&a_url, &dir.path().join("receipts-a"));
    let held_b = receipts(&b_url, &dir.path().join("receipts-b"));
    assert_eq!(held_a.len(), 3, "{held_a:?}");
    let only = |held: &[(String, FederationReceipt)]| -> Vec<FederationReceipt> {
        held.iter().map(|(_, receipt)| receipt.clone()).collect()
    };
    assert_eq!(only(&held_a), only(&held_b));
    let mut sizes = Vec::new();
    for (file, receipt) in &held_a {
        let verified = fabric(&[
            "federation",
            "verify",
            file,
            "--key",
            &a_vkey,
            "--key",
            &b_vkey,
        ]);
        assert!(verified.status.success(), "{}", stderr(&verified));
        assert!(
            stdout(&verified).starts_with("ok: "),
            "{}",
            stdout(&verified)
        );
        sizes.push((receipt.left.tree_size, receipt.right.tree_size));
    }
    // Each receipt moves both heads forward: both fabrics kept appending.
    for pair in sizes.windows(2) {
        assert!(pair[1].0 > pair[0].0 && pair[1].1 > pair[0].1, "{sizes:?}");
    }

    // One byte changed, one signature missing, one key missing: refused.
    let (file, receipt) = &held_a[0];
    let text = std::fs::read_to_string(file).expect("the receipt");
    let changed = dir.path().join("changed.json");
    let size = receipt.left.tree_size.to_string();
    let bumped = (receipt.left.tree_size + 1).to_string();
    std::fs::write(
        &changed,
        text.replacen(&format!(": {size},"), &format!(": {bumped},"), 1),
    )
    .expect("written");
    let unsigned = dir.path().join("unsigned.json");
    let mut missing = receipt.clone();
    missing.right_signature = fabric_events::SignatureBytes([0; 64]);
    std::fs::write(&unsigned, serde_json::to_string(&missing).expect("JSON")).expect("written");
    for (bad, keys) in [
        (&changed, vec![&a_vkey, &b_vkey]),
        (&unsigned, vec![&a_vkey, &b_vkey]),
        (&dir.path().join("receipts-a").join(file), vec![&a_vkey]),
    ] {
        let mut args = vec!["federation", "verify", path(bad)];
        for key in keys {
            args.extend(["--key", key.as_str()]);
        }
        let refused = fabric(&args);
        assert!(!refused.status.success(), "{bad:?} verified");
    }

    // The last file A recorded is covered by the third receipt: its bundle holds it, and
    // verify-full checks it with B's key.
    let bundle = dir.path().join("bundle.json");
    let exported = succeed(&[
        "export-proof",
        path(&notes),
        "--out",
        path(&bundle),
        "--server",
        &a_url,
    ]);
    assert!(
        stdout(&exported).contains("1 federation receipt"),
        "{}",
        stdout(&exported)
    );
    let verify_full = |peer: &str| {
        fabric(&[
            "verify-full",
            path(&notes),
            "--bundle",
            path(&bundle),
            "--ledger-key",
            &a_vkey,
            "--peer",
            peer,
        ])
    };
    let verified = verify_full(&b_vkey);
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(
        stdout(&verified).contains("covers the event"),
        "{}",
        stdout(&verified)
    );
    let b_origin = origin_of_vkey(&b_vkey);
    let a_key = fabric_ledger::note::parse_verifier_key(&a_vkey)
        .expect("A's key")
        .2;
    let wrong_peer = fabric_ledger::note::verifier_key(&b_origin, &a_key);
    assert!(!verify_full(&wrong_peer).status.success());

    // An attacker at A's port: garbage, an unknown peer, a receipt under another key, a
    // replayed genuine receipt. Nothing is appended.
    let mut attacker = served_a.client();
    let receipts_before = receipt_count(&mut attacker);
    let answer = post(&mut attacker, "/v0/federation/countersign", b"{not json");
    assert_eq!(answer.status, 400, "{}", answer.text());
    let answer = post(
        &mut attacker,
        "/v0/federation/sync",
        br#"{"peer":"fabric/00"}"#,
    );
    assert_eq!(answer.status, 404, "{}", answer.text());
    let stranger = fabric_events::derive_signing_key(7, "stranger");
    let mut forged = held_a[2].1.clone();
    let b_side = if forged.left.origin == b_origin {
        &mut forged.left
    } else {
        &mut forged.right
    };
    b_side.tree_size += 1000;
    b_side.ledger_key = PublicKey::from(&stranger.verifying_key());
    let forged = FederationReceipt::unsigned(forged.left.clone(), forged.right.clone());
    let mut forged = forged;
    forged.sign_as(&b_origin, &stranger);
    let body = serde_json::to_vec(&forged).expect("JSON");
    let answer = post(&mut attacker, "/v0/federation/countersign", &body);
    assert_eq!(answer.status, 403, "{}", answer.text());
    std::thread::sleep(std::time::Duration::from_millis(250));
    let replayed = serde_json::to_vec(&held_a[0].1).expect("JSON");
    let answer = post(&mut attacker, "/v0/federation/countersign", &replayed);
    assert_eq!(answer.status, 409, "{}", answer.text());
    assert_eq!(receipt_count(&mut attacker), receipts_before);

    // B's copy, served with B's key on B's address, tells another history: A refuses it,
    // records the evidence once, and federates with B no more.
    assert!(served_b.terminate(), "B stops");
    let b_key = b.ledger_key();
    let b_routers = b.router_keys();
    let b_listen = format!("127.0.0.1:{b_port}");
    let _forked = Served::spawn(&[
        "--data",
        path(&b_copy),
        "--ledger-key",
        path(&b_key),
        "--router-keys",
        path(&b_routers),
        "--tick-ms",
        "10",
        "--listen",
        &b_listen,
    ]);
    let federated = held_a
        .last()
        .map(|(_, receipt)| {
            receipt
                .sides_of(&origin_of_vkey(&b_vkey))
                .expect("B")
                .0
                .tree_size
        })
        .expect("a receipt");
    // Past B's federated size, so only a consistency proof can tell.
    loop {
        let mut client = fabric_api::http_client::Client::new(
            fabric_api::http_client::Target::parse(&b_url).expect("a URL"),
            std::time::Duration::from_secs(10),
        );
        let health: Value = json_of(&get(&mut client, "/v0/health"));
        if health["ledger"]["size"].as_u64().expect("a size") > federated {
            break;
        }
        let recorded = record(&b_url, &notes, "report", &b.owners[1]);
        assert!(recorded.status.success(), "{}", stderr(&recorded));
    }
    let refused = sync(&a_url, &b_url);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("peer_forked"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("recorded at seq"),
        "{}",
        stderr(&refused)
    );
    let again = sync(&a_url, &b_url);
    assert_eq!(again.status.code(), Some(3));
    assert!(
        !stderr(&again).contains("recorded at seq"),
        "{}",
        stderr(&again)
    );
    let status = succeed(&["federation", "status", "--server", &a_url]);
    let status: Value = serde_json::from_str(&stdout(&status)).expect("JSON");
    assert_eq!(status["peers"][0]["forked"], true, "{status}");
    assert_eq!(status["peers"][0]["receipts"], 3, "{status}");
    let timeline = succeed(&["timeline", "--server", &a_url]);
    let forks = stdout(&timeline).matches("FEDERATION FORK").count();
    assert_eq!(forks, 1, "{}", stdout(&timeline));

    // Replayed by an auditor, both logs hold: receipts, the fork's evidence, the records.
    let mut served_a = served_a;
    assert!(served_a.terminate(), "A stops");
    for data in [&a.data, &b.data] {
        let audited = fabric(&["audit", "--data", path(data)]);
        assert!(audited.status.success(), "{}", stderr(&audited));
    }
}

/// The receipts `GET /v0/federation` counts with every peer.
fn receipt_count(client: &mut fabric_api::http_client::Client) -> u64 {
    let status: Value = json_of(&get(client, "/v0/federation"));
    status["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|peer| peer["receipts"].as_u64().expect("a count"))
        .sum()
}

/// An owner command of `ceremony`'s first two owners, as the JSON body of
/// `POST /v0/owner/commands`.
fn owner_command(ceremony: &Ceremony, action: OwnerAction, nonce: u64, tick: u64) -> String {
    let mut command = OwnerCommand {
        action,
        expiry_tick: tick + 10_000,
        approvals: Vec::new(),
    };
    for index in 0..2 {
        command.approve(nonce, &crate::ceremony::load_owner(ceremony, index));
    }
    json!({"nonce": nonce, "command": command}).to_string()
}

#[test]
fn a_recorded_file_has_a_bundle_that_verifies_offline_and_fails_when_anything_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run(dir.path());
    let served = ceremony.serve(&[]);
    let server = served.tcp.clone().expect("tcp").to_string();
    let mut client = served.client();

    // A registered recorder records; a key no one registered does not, and its attempt is
    // counted, not stored.
    let recorder = dir.path().join("recorder.key");
    let stranger = dir.path().join("stranger.key");
    for key in [&recorder, &stranger] {
        succeed(&["keygen", "--out", path(key)]);
    }
    let recorder_public = fabric_events::keys::load_secret(&recorder).expect("the key");
    let tick = crate::serve::current_tick(&mut client);
    let register = owner_command(
        &ceremony,
        OwnerAction::RegisterRecorder {
            recorder: "release-bot".to_owned(),
            key: PublicKey::from(&recorder_public.verifying_key()),
        },
        500,
        tick,
    );
    let answer = post(&mut client, "/v0/owner/commands", register.as_bytes());
    assert_eq!(answer.status, 202, "{}", answer.text());

    let release = dir.path().join("release.tar");
    std::fs::write(&release, b"the bytes of a release, v1.2.3\n".repeat(1000)).expect("a file");
    let recorded = record(&server, &release, "deploy", &recorder);
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let answer: Value = serde_json::from_str(&stdout(&recorded)).expect("JSON");
    let seq = answer["seq"].as_u64().expect("a seq");
    let refused = record(&server, &release, "deploy", &stranger);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unknown_key"),
        "{}",
        stderr(&refused)
    );
    let decision = dir.path().join("decision.md");
    std::fs::write(&decision, "we ship on Tuesday\n").expect("a file");
    let by_owner = record(&server, &decision, "decision", &ceremony.owners[2]);
    assert!(by_owner.status.success(), "{}", stderr(&by_owner));
    let bad_kind = record(&server, &decision, "Decision!", &ceremony.owners[2]);
    assert!(!bad_kind.status.success());

    // Read back in order, and by kind.
    let timeline = stdout(&succeed(&["timeline", "--server", &server]));
    let deploy_at = timeline.find("deploy\trelease.tar").expect("the deploy");
    let decision_at = timeline
        .find("decision\tdecision.md")
        .expect("the decision");
    assert!(deploy_at < decision_at, "{timeline}");
    let listed = stdout(&succeed(&[
        "list", "--server", &server, "--kind", "decision",
    ]));
    assert!(
        listed.contains("decision.md") && !listed.contains("release.tar"),
        "{listed}"
    );

    // The bundle, once the record is under a signed head.
    let bundle = dir.path().join("bundle.json");
    let mut exported = None;
    for _ in 0..200 {
        let output = fabric(&[
            "export-proof",
            path(&release),
            "--out",
            path(&bundle),
            "--server",
            &server,
        ]);
        if output.status.success() {
            exported = Some(output);
            break;
        }
        assert!(
            stderr(&output).contains("not yet under"),
            "{}",
            stderr(&output)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        exported.is_some(),
        "the record never came under a checkpoint"
    );
    let text = std::fs::read_to_string(&bundle).expect("the bundle");
    let parsed: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(parsed["inclusion"]["seq"], seq);

    let ledger_key = fabric_events::keys::public_path(&ceremony.ledger_key());
    let verify = |file: &Path, bundle: &Path, key: &str| {
        fabric(&[
            "verify-full",
            path(file),
            "--bundle",
            path(bundle),
            "--ledger-key",
            key,
        ])
    };
    let verified = verify(&release, &bundle, path(&ledger_key));
    assert!(verified.status.success(), "{}", stderr(&verified));
    let said = stdout(&verified);
    assert!(
        said.contains("as recorded") && said.contains("checkpoint note"),
        "{said}"
    );
    let by_vkey = verify(
        &release,
        &bundle,
        ceremony.checkpoint_verifier_key.as_deref().expect("vkey"),
    );
    assert!(by_vkey.status.success(), "{}", stderr(&by_vkey));
    // The same key under another log's origin: not this fabric's checkpoint.
    let log_key = ceremony.checkpoint_verifier_key.as_deref().expect("vkey");
    let (_, key) = fabric_ledger::note::parse_log_verifier_key(log_key).expect("a vkey");
    let elsewhere = fabric_ledger::note::verifier_key(&format!("fabric/{}", "0".repeat(32)), &key);
    let failed = verify(&release, &bundle, &elsewhere);
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("the key given is"),
        "{}",
        stderr(&failed)
    );

    // A changed file, a changed bundle, another ledger key: each fails.
    let changed_file = dir.path().join("changed.tar");
    let mut bytes = std::fs::read(&release).expect("the file");
    bytes[7] ^= 1;
    std::fs::write(&changed_file, bytes).expect("written");
    let failed = verify(&changed_file, &bundle, path(&ledger_key));
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("file:"), "{}", stderr(&failed));

    let changed_bundle = dir.path().join("changed.json");
    let mut value = parsed.clone();
    value["artifact"]["name"] = json!("release-v2.tar");
    std::fs::write(&changed_bundle, value.to_string()).expect("written");
    let failed = verify(&release, &changed_bundle, path(&ledger_key));
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("event:"), "{}", stderr(&failed));
    let mut value = parsed.clone();
    let root = value["inclusion"]["root"]
        .as_str()
        .expect("a root")
        .to_owned();
    let flipped = format!(
        "{}{}",
        if root.starts_with('0') { "1" } else { "0" },
        &root[1..]
    );
    value["inclusion"]["root"] = json!(flipped);
    std::fs::write(&changed_bundle, value.to_string()).expect("written");
    assert!(!verify(&release, &changed_bundle, path(&ledger_key))
        .status
        .success());

    let other = dir.path().join("other.key");
    succeed(&["keygen", "--out", path(&other)]);
    let other_public = fabric_events::keys::public_path(&other);
    let failed = verify(&release, &bundle, path(&other_public));
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("FAILED"), "{}", stderr(&failed));
}
