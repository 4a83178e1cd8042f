//! Tree heads as checkpoint notes (docs/FORMAT.md §17): a served fabric signs its latest
//! head in the C2SP tlog-checkpoint / signed-note text format, and a verifier written apart
//! from Fabric's code (Python's `cryptography`) accepts it, and refuses it changed.

use std::process::Command;

use fabric_events::PublicKey;
use fabric_ledger::note::{origin_of, verifier_key, CheckpointNote};
use fabric_ledger::{Frontier, LedgerReader};
use serde_json::Value;

use crate::serve::{get, json_of};
use crate::support::Ceremony;

/// A signed-note verifier of its own: reads a verifier key (`name+key ID+base64(0x01 ‖
/// key)`) and checks its key ID is SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4], reads the note,
/// finds the signature lines of that name and ID, checks their Ed25519 signatures over the
/// note text, and prints the size and the root in hex. Exits non-zero when anything fails.
const PYTHON_VERIFIER: &str = r#"
import base64, hashlib, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.exceptions import InvalidSignature

note = open(sys.argv[1], "rb").read().decode("utf-8")
name, key_id_hex, typed_key = sys.argv[2].split("+", 2)
typed_key = base64.b64decode(typed_key, validate=True)
assert len(typed_key) == 33 and typed_key[0] == 1, "not an Ed25519 verifier key"
key = typed_key[1:]
key_id = hashlib.sha256(name.encode() + b"\n\x01" + key).digest()[:4]
assert key_id.hex() == key_id_hex, "key ID %s, computed %s" % (key_id_hex, key_id.hex())
assert note.endswith("\n"), "no final newline"
text, _, signatures = note[:-1].rpartition("\n\n")
text += "\n"
origin, size, root = text[:-1].split("\n")
assert origin == name, "origin %r, key name %r" % (origin, name)
assert size == str(int(size)), "size %r" % size
root = base64.b64decode(root, validate=True)
assert len(root) == 32
verified = 0
for line in signatures.split("\n"):
    assert line.startswith("\u2014 "), "line %r" % line
    line_name, encoded = line[2:].split(" ")
    blob = base64.b64decode(encoded, validate=True)
    if line_name != name or blob[:4] != key_id:
        continue
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(blob[4:], text.encode())
    except InvalidSignature:
        sys.exit("the signature does not verify")
    verified += 1
if verified == 0:
    sys.exit("no signature of the key")
print(size, root.hex())
"#;

/// Runs the Python verifier on `note` for verifier key `vkey`: its stdout, or Err with what it
/// said.
fn python_verify(note: &str, vkey: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("checkpoint.txt");
    std::fs::write(&file, note).expect("note written");
    let output = Command::new("python3")
        .args(["-c", PYTHON_VERIFIER])
        .arg(&file)
        .arg(vkey)
        .output()
        .expect("python3 runs (scripts/test installs it with python3-cryptography)");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

#[test]
fn a_served_fabric_signs_its_latest_head_as_a_checkpoint_an_independent_verifier_accepts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run(dir.path());
    let mut served = ceremony.serve(&[]);
    let mut client = served.client();
    let health: Value = json_of(&get(&mut client, "/v0/health"));
    let text = |field: &str| {
        health["ledger"][field]
            .as_str()
            .unwrap_or_else(|| panic!("health has no ledger.{field}: {health}"))
            .to_owned()
    };
    let (origin, vkey) = (text("checkpoint_origin"), text("checkpoint_verifier_key"));
    let ledger_key: PublicKey = serde_json::from_value(health["ledger"]["ledger_key"].clone())
        .expect("health names the ledger key");
    assert_eq!(vkey, verifier_key(&origin, &ledger_key));

    let response = get(&mut client, "/v0/checkpoints/latest");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let note = response.text();
    let parsed = CheckpointNote::parse(&note).expect("Fabric reads its own note");
    assert!(parsed.tree_size > 0, "{note}");
    assert_eq!(parsed.signatures.len(), 1, "{note}");
    assert_eq!(parsed.origin, origin);

    // An independent verifier accepts it, and names the same size and root.
    let said = python_verify(&note, &vkey).expect("the note verifies");
    assert_eq!(said, format!("{} {}", parsed.tree_size, parsed.root));
    // ...and refuses it with the size changed, or checked against another key.
    let bigger = note.replacen(
        &format!("\n{}\n", parsed.tree_size),
        &format!("\n{}\n", parsed.tree_size + 1),
        1,
    );
    let refused = python_verify(&bigger, &vkey).expect_err("changed");
    assert!(refused.contains("does not verify"), "{refused}");
    let other_key = verifier_key(&origin, &PublicKey([0x11; 32]));
    let refused = python_verify(&note, &other_key).expect_err("other key");
    assert!(refused.contains("no signature of the key"), "{refused}");

    // Asked again at the same head, the same note (signed once per head).
    let again = get(&mut client, "/v0/checkpoints/latest").text();
    let again = CheckpointNote::parse(&again).expect("parses");
    if again.tree_size == parsed.tree_size {
        assert_eq!(again, parsed);
    }

    // The origin is the genesis entry's, and the root is the log's at that size.
    assert!(served.terminate(), "the server stops on SIGTERM");
    let reader = LedgerReader::open(ceremony.data.join("ledger")).expect("the ledger opens");
    let genesis = reader.get(0).expect("the genesis entry");
    assert_eq!(parsed.origin, origin_of(&genesis.hash()));
    let mut frontier = Frontier::new();
    for leaf in reader.leaf_hashes(0..parsed.tree_size).expect("the leaves") {
        frontier.push(leaf);
    }
    assert_eq!(frontier.root(), parsed.root);
}

/// `fabric witness` with `args`, to its end: (exit code, stdout, stderr).
fn witness(args: &[&str]) -> (Option<i32>, String, String) {
    let output = crate::support::fabric(&[&["witness"], args].concat());
    (
        output.status.code(),
        crate::support::stdout(&output),
        crate::support::stderr(&output),
    )
}

#[test]
fn a_witness_cosigns_a_fabrics_heads_and_catches_a_second_history_under_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run(dir.path());
    // The same fabric, copied before it serves: served with the same ledger key, it will be
    // made to tell another history from the same genesis.
    let copy = dir.path().join("copy");
    crate::audit::copy_dir(&ceremony.data, &copy);
    let honest = ceremony.serve(&[]);
    let (ledger_key, routers) = (ceremony.ledger_key(), ceremony.router_keys());
    let forked = crate::support::Served::spawn(&[
        "--data",
        crate::support::path(&copy),
        "--ledger-key",
        crate::support::path(&ledger_key),
        "--router-keys",
        crate::support::path(&routers),
        "--tick-ms",
        "10",
    ]);
    let mut honest_client = honest.client();
    let health: Value = json_of(&get(&mut honest_client, "/v0/health"));
    let vkey = health["ledger"]["checkpoint_verifier_key"]
        .as_str()
        .expect("a verifier key")
        .to_owned();
    let witness_key = dir.path().join("witness.key");
    crate::support::succeed(&["keygen", "--out", crate::support::path(&witness_key)]);
    let state = dir.path().join("witness");
    let honest_address = honest.tcp.clone().expect("tcp").to_string();
    let forked_address = forked.tcp.clone().expect("tcp").to_string();
    let base = [
        "--key",
        crate::support::path(&witness_key),
        "--name",
        "witness.test/w1",
        "--log-key",
        &vkey,
        "--state",
        crate::support::path(&state),
        "--poll-ms",
        "50",
    ];

    // Following the honest server: its head is cosigned.
    let (code, out, err) =
        witness(&[&base[..], &["--follow", &honest_address, "--rounds", "2"]].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("cosigned fabric/"), "{out}{err}");
    let witness_public = fabric_events::keys::load_secret(&witness_key).expect("the key");
    let witness_public = PublicKey::from(&witness_public.verifying_key());
    let kept: Value =
        serde_json::from_slice(&std::fs::read(state.join("state.json")).expect("the state"))
            .expect("JSON");
    let (origin, log) = kept["logs"]
        .as_object()
        .and_then(|logs| logs.iter().next())
        .expect("one log");
    let cosigned = CheckpointNote::parse(log["note"].as_str().expect("a note")).expect("a note");
    cosigned
        .verify_cosignature("witness.test/w1", &witness_public)
        .expect("cosigned by the witness");
    assert_eq!(&cosigned.origin, origin);

    // Each server appends its own owner command: one key, two histories.
    let approvers = [
        crate::ceremony::load_owner(&ceremony, 0),
        crate::ceremony::load_owner(&ceremony, 1),
    ];
    let mut forked_client = forked.client();
    for (client, shard) in [(&mut honest_client, "mars"), (&mut forked_client, "luna")] {
        let tick = crate::serve::current_tick(client);
        let command = crate::ceremony::pause_command(shard, 77, tick, &approvers);
        let response = crate::serve::post(client, "/v0/owner/commands", command.as_bytes());
        assert_eq!(response.status, 202, "{}", response.text());
    }

    // Following both, as two auditors would be shown them: the fork is caught, and its API
    // says so.
    let origin = origin.clone();
    let mut running = Command::new(env!("CARGO_BIN_EXE_fabric"))
        .arg("witness")
        .args(base)
        .args(["--follow", &honest_address, "--follow", &forked_address])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fabric witness starts");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        running.stdout.take().expect("stdout"),
    ));
    let address = lines
        .find_map(|line| {
            line.ok()?
                .strip_prefix("listening on http://")
                .map(str::to_owned)
        })
        .expect("the witness says where it listens");
    // Read on to its end, so that the witness never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let mut api = fabric_api::http_client::Client::new(
        fabric_api::http_client::Target::Tcp(address),
        std::time::Duration::from_secs(10),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let status: Value = json_of(&get(&mut api, "/v0/witness"));
        if status["forked"] == true {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no fork seen: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status["logs"][0]["forked"], true, "{status}");
    let metrics = get(&mut api, "/metrics").text();
    assert!(
        metrics.contains(&format!("fabric_witness_forked{{origin=\"{origin}\"}} 1")),
        "{metrics}"
    );
    let forks: Value = json_of(&get(&mut api, "/v0/forks"));
    assert!(forks[origin.as_str()]["seen"].is_string(), "{forks}");
    let shown = get(&mut api, &format!("/v0/cosigned?origin={origin}"));
    assert_eq!(shown.status, 200, "{}", shown.text());
    CheckpointNote::parse(&shown.text())
        .expect("a note")
        .verify_cosignature("witness.test/w1", &witness_public)
        .expect("its last cosignature, from before the fork");
    let _ = running.kill();
    let _ = running.wait();
    let evidence = state.join("forks").join("fork-1.json");
    let fork: Value =
        serde_json::from_slice(&std::fs::read(&evidence).expect("the evidence")).expect("JSON");
    let log_key: PublicKey =
        serde_json::from_value(health["ledger"]["ledger_key"].clone()).expect("the key");
    let notes: Vec<CheckpointNote> = ["cosigned", "seen"]
        .iter()
        .map(|field| CheckpointNote::parse(fork[field].as_str().expect("a note")).expect("a note"))
        .collect();
    for note in &notes {
        note.verify(&note.origin, &log_key)
            .expect("both heads are signed by the fabric's own key");
    }
    assert_ne!(
        (notes[0].tree_size, notes[0].root),
        (notes[1].tree_size, notes[1].root)
    );
    // Started again, it cosigns nothing of that log, says it forked, and exits 3.
    let (code, _, err) =
        witness(&[&base[..], &["--follow", &honest_address, "--rounds", "1"]].concat());
    assert_eq!(code, Some(3), "a fork is exit status 3: {err}");
    assert!(
        err.contains("forked") && err.contains("FORK: fabric/"),
        "{err}"
    );
}

/// A `fabric witness` serving on a free port with no server to follow: fabrics push to it.
struct PushedWitness {
    child: std::process::Child,
    address: String,
    cosigner_key: String,
}

impl PushedWitness {
    fn start(dir: &std::path::Path, name: &str, log_key: &str) -> Self {
        let key = dir.join(format!("{}.key", name.replace('/', "-")));
        crate::support::succeed(&["keygen", "--out", crate::support::path(&key)]);
        let state = dir.join(name.replace('/', "-"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_fabric"))
            .arg("witness")
            .args(["--key", crate::support::path(&key), "--name", name])
            .args([
                "--log-key",
                log_key,
                "--state",
                crate::support::path(&state),
            ])
            .args(["--listen", "127.0.0.1:0", "--poll-ms", "100"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("fabric witness starts");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
            child.stdout.take().expect("stdout"),
        ));
        let mut cosigner_key = None;
        let mut address = None;
        while address.is_none() {
            let line = lines
                .next()
                .and_then(Result::ok)
                .expect("the witness says who it is and where it listens");
            if let Some(rest) = line.split_once("(cosigner key ") {
                cosigner_key = Some(rest.1.trim_end_matches(')').to_owned());
            }
            address = line.strip_prefix("listening on ").map(str::to_owned);
        }
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            address: address.expect("an address"),
            cosigner_key: cosigner_key.expect("a cosigner key"),
        }
    }

    fn flag(&self) -> String {
        format!("{}={}", self.address, self.cosigner_key)
    }
}

impl Drop for PushedWitness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The final note `GET /v0/checkpoints/latest` serves once it is at least `size`, within a
/// minute.
fn final_note_from(client: &mut fabric_api::http_client::Client, size: u64) -> CheckpointNote {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let response = get(client, "/v0/checkpoints/latest");
        if response.status == 200 {
            let note = CheckpointNote::parse(&response.text()).expect("a note");
            if note.tree_size >= size {
                return note;
            }
        } else {
            assert_eq!(response.status, 503, "{}", response.text());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no final note of size {size} or more: {}",
            response.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_fabric_calls_a_head_final_once_its_witnesses_cosigned_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run(dir.path());
    // The log's verifier key, as `fabric init --commit` printed it before the fabric is
    // served, and as its folder gives it.
    let log_key = ceremony
        .checkpoint_verifier_key
        .clone()
        .expect("init --commit printed the checkpoint verifier key");
    let derived = {
        let reader = LedgerReader::open(ceremony.data.join("ledger")).expect("the ledger opens");
        let origin = origin_of(&reader.get(0).expect("genesis").hash());
        let secret = fabric_events::keys::load_secret(&ceremony.ledger_key()).expect("the key");
        verifier_key(&origin, &PublicKey::from(&secret.verifying_key()))
    };
    assert_eq!(log_key, derived);
    let witnesses = [
        PushedWitness::start(dir.path(), "witness.test/a", &log_key),
        PushedWitness::start(dir.path(), "witness.test/b", &log_key),
    ];
    let (first, second) = (witnesses[0].flag(), witnesses[1].flag());
    let served = ceremony.serve(&[
        "--witness",
        &first,
        "--witness",
        &second,
        "--witness-quorum",
        "2",
    ]);
    let mut client = served.client();
    let cosigners: Vec<(String, PublicKey)> = witnesses
        .iter()
        .map(|witness| {
            let (name, _, key) = fabric_ledger::note::parse_verifier_key(&witness.cosigner_key)
                .expect("a cosigner key");
            (name, key)
        })
        .collect();
    let log_public = fabric_ledger::note::parse_verifier_key(&log_key)
        .expect("the log key")
        .2;
    let check = |note: &CheckpointNote| {
        note.verify(&note.origin, &log_public)
            .expect("the log's signature");
        for (name, key) in &cosigners {
            note.verify_cosignature(name, key)
                .unwrap_or_else(|error| panic!("{name}: {error}"));
        }
    };
    let before = final_note_from(&mut client, 1);
    check(&before);

    // The log grows: its new head is pushed with the path from the one each witness
    // cosigned, and becomes final in turn.
    let approvers = [
        crate::ceremony::load_owner(&ceremony, 0),
        crate::ceremony::load_owner(&ceremony, 1),
    ];
    let pause = |client: &mut fabric_api::http_client::Client, shard: &str, nonce: u64| {
        let tick = crate::serve::current_tick(client);
        let command = crate::ceremony::pause_command(shard, nonce, tick, &approvers);
        let response = crate::serve::post(client, "/v0/owner/commands", command.as_bytes());
        assert_eq!(response.status, 202, "{}", response.text());
        json_of(&response)["seq"].as_u64().expect("a seq")
    };
    let seq = pause(&mut client, "mars", 91);
    let grown = final_note_from(&mut client, seq + 1);
    check(&grown);
    assert!(grown.tree_size > before.tree_size);

    // A file recorded now has a bundle with both witnesses' cosignatures, once its head is
    // final; verify-full checks them with the witnesses' keys.
    let server = served.tcp.clone().expect("tcp").to_string();
    let file = dir.path().join("decision.md");
    std::fs::write(&file, "witnessed\n").expect("a file");
    let recorded = crate::support::fabric(&[
        "record",
        crate::support::path(&file),
        "--kind",
        "decision",
        "--key",
        crate::support::path(&ceremony.owners[2]),
        "--server",
        &server,
    ]);
    assert!(
        recorded.status.success(),
        "{}",
        crate::support::stderr(&recorded)
    );
    let seq: Value = serde_json::from_str(&crate::support::stdout(&recorded)).expect("JSON");
    let seq = seq["seq"].as_u64().expect("a seq");
    check(&final_note_from(&mut client, seq + 1));
    let bundle = dir.path().join("bundle.json");
    crate::support::succeed(&[
        "export-proof",
        crate::support::path(&file),
        "--out",
        crate::support::path(&bundle),
        "--server",
        &server,
    ]);
    let verify = |witness_keys: &[&str]| {
        let mut args = vec![
            "verify-full",
            crate::support::path(&file),
            "--bundle",
            crate::support::path(&bundle),
            "--ledger-key",
            &log_key,
        ];
        for key in witness_keys {
            args.extend(["--witness", key]);
        }
        crate::support::fabric(&args)
    };
    let keys: Vec<&str> = witnesses.iter().map(|w| w.cosigner_key.as_str()).collect();
    let verified = verify(&keys);
    assert!(
        verified.status.success(),
        "{}",
        crate::support::stderr(&verified)
    );
    let said = crate::support::stdout(&verified);
    assert!(said.contains("ok: cosigned by witness.test/a"), "{said}");
    // A witness key the note has no cosignature of: refused.
    let stranger =
        fabric_ledger::note::cosigner_verifier_key("witness.test/a", &PublicKey([0x42; 32]));
    let refused = verify(&[&stranger]);
    assert!(!refused.status.success());
    assert!(
        crate::support::stderr(&refused).contains("cosignature of witness"),
        "{}",
        crate::support::stderr(&refused)
    );

    // One witness of the two gone: no head after it is final.
    let [kept, gone] = witnesses;
    drop(gone);
    let seq = pause(&mut client, "luna", 92);
    let health: Value = json_of(&get(&mut client, "/v0/health"));
    assert!(health["ledger"]["size"].as_u64() > Some(seq));
    // Four rounds of asking the witnesses (every 500 ms): enough for the head to be final,
    // were one cosignature enough.
    std::thread::sleep(std::time::Duration::from_millis(2_000));
    let still = final_note_from(&mut client, 1);
    assert!(
        still.tree_size <= seq,
        "a head after the loss of a witness is final with one cosignature of two"
    );
    drop(kept);
}

#[test]
fn whoever_reaches_a_witness_cannot_make_it_cosign_or_cry_fork() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A log of the attacker's choosing is no log the witness follows; the log it follows is
    // one whose key the attacker does not hold (it knows the public key, as everyone does).
    let log_secret = fabric_events::keys::generate();
    let log_public = PublicKey::from(&log_secret.verifying_key());
    let origin = origin_of(&fabric_events::Hash32([4; 32]));
    let witness = PushedWitness::start(
        dir.path(),
        "witness.test/h",
        &verifier_key(&origin, &log_public),
    );
    let mut api = fabric_api::http_client::Client::new(
        fabric_api::http_client::Target::parse(&witness.address).expect("an address"),
        std::time::Duration::from_secs(10),
    );
    let post = |api: &mut fabric_api::http_client::Client, body: &[u8]| {
        api.request("POST", "/v0/add-checkpoint", Some(("text/plain", body)))
            .expect("the witness answers")
    };
    let request = |old: u64, note: &str| fabric_witness::AddRequest {
        old_size: old,
        path: Vec::new(),
        note: note.to_owned(),
    };
    let attacker = fabric_events::keys::generate();
    let forged = CheckpointNote::sign(&origin, 10, fabric_events::Hash32([1; 32]), &attacker);
    for (body, status, case) in [
        (b"not a request".to_vec(), 400, "garbage"),
        (vec![b'x'; 64 * 1024], 413, "too big"),
        (
            request(0, &forged.encode()).encode().into_bytes(),
            403,
            "signed by another key",
        ),
        (
            request(0, &forged.encode().replacen(&origin, "fabric/other", 2))
                .encode()
                .into_bytes(),
            403,
            "another origin",
        ),
    ] {
        let response = post(&mut api, &body);
        assert_eq!(response.status, status, "{case}: {}", response.text());
    }
    // Genuine heads of the log (replayed by anyone): the first is cosigned, then one
    // further on with a path that does not hold is refused, and is no fork.
    let genuine = |size: u64, root: u8| {
        CheckpointNote::sign(
            &origin,
            size,
            fabric_events::Hash32([root; 32]),
            &log_secret,
        )
        .encode()
    };
    assert_eq!(
        post(&mut api, request(0, &genuine(5, 1)).encode().as_bytes()).status,
        200
    );
    let mut unproved = request(5, &genuine(9, 2));
    unproved.path = vec![fabric_events::Hash32([3; 32]); 3];
    let response = post(&mut api, unproved.encode().as_bytes());
    assert_eq!(response.status, 422, "{}", response.text());
    let conflict = post(&mut api, request(0, &genuine(9, 2)).encode().as_bytes());
    assert_eq!(conflict.status, 409, "{}", conflict.text());
    assert_eq!(conflict.text().trim(), "5");
    let status: Value = json_of(&get(&mut api, "/v0/witness"));
    assert_eq!(status["forked"], false, "{status}");
    assert_eq!(status["logs"][0]["tree_size"], 5, "{status}");
    // Only the log's own key, signing two heads of one size, makes a fork.
    let response = post(&mut api, request(5, &genuine(5, 7)).encode().as_bytes());
    assert_eq!(response.status, 403, "{}", response.text());
    let status: Value = json_of(&get(&mut api, "/v0/witness"));
    assert_eq!(status["forked"], true, "{status}");
}
