//! `POST /v0/jobs/batch` as clients meet it, and as an attacker does: the jobs of a batch are
//! sequenced in order in one tick and each is answered as `POST /v0/jobs` would answer it
//! alone; a batch cannot carry what a single request may not, cannot be larger than its
//! limits, and pays for each refused item from its peer's allowance.

use serde_json::{json, Value};

use crate::serve::{
    client_key, current_tick, envelope, export_lines, get, job_id_of, json_of, post, signed_job,
};
use crate::support::Served;
use fabric_events::derive_signing_key;

fn batch(items: &[Value]) -> Vec<u8> {
    json!({ "jobs": items }).to_string().into_bytes()
}

#[test]
fn a_batch_is_sequenced_in_order_and_each_job_is_answered_as_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(&dir.path().join("data"), None);
    let mut client = served.client();
    let tick = current_tick(&mut client);
    let earth = client_key("earth");
    let stranger = derive_signing_key(99, "not registered");
    let first = envelope("first", &signed_job(&earth, "earth", "first", tick, 1));
    let items = [
        first.clone(),
        envelope("second", &signed_job(&earth, "earth", "second", tick, 2)),
        // The first one again: its nonce is spent by the item before it, in the same tick.
        first,
        envelope(
            "stranger",
            &signed_job(&stranger, "earth", "stranger", tick, 1),
        ),
        json!({ "request_id": "not a job request" }),
        json!({ "request_id": "padded", "padding": " ".repeat(70 * 1024) }),
        envelope("third", &signed_job(&earth, "earth", "third", tick, 3)),
    ];
    let response = post(&mut client, "/v0/jobs/batch", &batch(&items));
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = json_of(&response);
    let results = answer["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|item| item["status"].as_u64().expect("a status"))
        .collect();
    assert_eq!(statuses, [202, 202, 409, 401, 400, 413, 202], "{answer}");
    let codes: Vec<&str> = results
        .iter()
        .filter_map(|item| item["error"]["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        [
            "replayed_nonce",
            "unknown_key",
            "bad_body",
            "payload_too_large"
        ],
        "{answer}"
    );
    assert!(
        results[4]["error"]["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("jobs[4]: ")),
        "an unreadable item is named by its place: {answer}"
    );
    assert_eq!(
        (answer["accepted"].as_u64(), answer["refused"].as_u64()),
        (Some(3), Some(4))
    );

    // The accepted jobs are stored in the batch's order, in one tick; the replay is recorded
    // as evidence against its signer, the stranger only counted.
    let accepted: Vec<&Value> = [0, 1, 6]
        .iter()
        .map(|&at| &results[at]["accepted"])
        .collect();
    let seqs: Vec<u64> = accepted
        .iter()
        .map(|a| a["seq"].as_u64().expect("a seq"))
        .collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    assert!(
        accepted.iter().all(|a| a["tick"] == accepted[0]["tick"]),
        "{answer}"
    );
    for (accepted, request_id) in accepted.iter().zip(["first", "second", "third"]) {
        assert_eq!(accepted["request_id"], request_id);
        assert_eq!(accepted["job"], job_id_of(request_id));
        let job = get(&mut client, &format!("/v0/jobs/{}", job_id_of(request_id)));
        assert_eq!(job.status, 200, "{request_id}: {}", job.text());
    }
    let lines = export_lines(&mut client);
    let rejected_seq = results[2]["error"]["rejected_seq"]
        .as_u64()
        .expect("recorded");
    assert_eq!(lines[&rejected_seq]["kind"], "rejected");
    let counted_seq = results[3]["error"]["counted_seq"]
        .as_u64()
        .expect("counted");
    assert_eq!(lines[&counted_seq]["kind"], "refusals_counted");
    let submitted = lines
        .values()
        .filter(|line| line["kind"] == "job_submitted")
        .count();
    assert_eq!(submitted, 3, "only the accepted jobs are in the log");
}

#[test]
fn a_batch_past_its_limits_stores_nothing_and_its_refusals_spend_the_allowance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(&dir.path().join("data"), None);
    let mut client = served.client();
    let size_before = export_lines(&mut client).len();

    let refused = |client: &mut fabric_api::Client, body: &[u8]| {
        let response = post(client, "/v0/jobs/batch", body);
        (response.status, json_of(&response)["error"]["code"].clone())
    };
    let item = json!({ "request_id": "x" });
    assert_eq!(refused(&mut client, &batch(&[])), (400, json!("bad_batch")));
    assert_eq!(
        refused(&mut client, &batch(&vec![item.clone(); 257])),
        (400, json!("bad_batch"))
    );
    assert_eq!(
        refused(&mut client, br#"{"jobs": [], "more": 1}"#),
        (400, json!("bad_body"))
    );
    assert_eq!(refused(&mut client, b"[1, 2"), (400, json!("bad_body")));
    let padding = " ".repeat(60 * 1024);
    let over_a_mebibyte: Vec<Value> = (0..20)
        .map(|_| json!({ "request_id": "x", "padding": padding }))
        .collect();
    assert_eq!(
        refused(&mut client, &batch(&over_a_mebibyte)),
        (413, json!("payload_too_large"))
    );

    // A batch is heard while its peer's allowance lasts, and each refused item takes one:
    // a batch of 200 refusals puts the peer in debt, so even its next single request waits.
    let tick = current_tick(&mut client);
    let stranger = derive_signing_key(99, "not registered");
    let strangers: Vec<Value> = (0..200)
        .map(|nonce| {
            let request_id = format!("stranger-{nonce}");
            envelope(
                &request_id,
                &signed_job(&stranger, "earth", &request_id, tick, nonce + 1),
            )
        })
        .collect();
    let response = post(&mut client, "/v0/jobs/batch", &batch(&strangers));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(json_of(&response)["refused"], 200);
    let earth = client_key("earth");
    let honest = envelope("honest", &signed_job(&earth, "earth", "honest", tick, 1));
    let limited = post(&mut client, "/v0/jobs", honest.to_string().as_bytes());
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(json_of(&limited)["error"]["code"], "rate_limited");
    let limited = post(&mut client, "/v0/jobs/batch", &batch(&[honest]));
    assert_eq!(limited.status, 429, "{}", limited.text());

    // Nothing of it reached the log but the counts of the refusals.
    let lines = export_lines(&mut client);
    let grown: Vec<&str> = lines
        .values()
        .skip(size_before)
        .filter_map(|line| line["kind"].as_str())
        .collect();
    assert!(grown.contains(&"refusals_counted"), "{grown:?}");
    assert!(
        !grown
            .iter()
            .any(|kind| *kind == "job_submitted" || *kind == "rejected"),
        "{grown:?}"
    );
}
