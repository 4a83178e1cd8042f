//! A fabric's witnesses (docs/FORMAT.md §17.5): the key holder asks each one, every
//! [`PUSH_EVERY`], to cosign its latest checkpoint note (`POST /v0/add-checkpoint`, with the
//! consistency path from the size the witness last cosigned), checks each cosignature with
//! the witness's key, and calls the note final once `quorum` witnesses cosigned it:
//! `GET /v0/checkpoints/latest` then serves the final note with their cosignatures.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fabric_api::http_client::{Client, Target};
use fabric_events::PublicKey;
use fabric_ledger::note::{parse_verifier_key, CheckpointNote, COSIGNATURE_TYPE};
use fabric_ledger::SignedTreeHead;

use crate::handlers::Shared;

/// How often the latest head is taken to the witnesses.
pub const PUSH_EVERY: Duration = Duration::from_millis(500);
/// How long one witness may take to answer.
const WITNESS_TIMEOUT: Duration = Duration::from_secs(5);
/// The most witnesses a fabric asks.
pub const WITNESSES_MAX: usize = 32;
/// The most bytes of a witness's answer (a cosignature line, or a reason).
const ANSWER_BYTES_MAX: usize = 1024;

/// A witness the fabric asks, and trusts the cosignatures of.
#[derive(Clone, Debug)]
pub struct WitnessPeer {
    /// Where it listens.
    pub target: Target,
    /// Its key name.
    pub name: String,
    /// Its cosigning key.
    pub key: PublicKey,
}

impl WitnessPeer {
    /// `URL=VKEY`: the witness's address and its cosigner verifier key (§17.4).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (url, vkey) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not URL=VERIFIER_KEY"))?;
        let target = Target::parse(url).map_err(|error| format!("{url}: {error}"))?;
        let (name, kind, key) = parse_verifier_key(vkey).map_err(|error| error.to_string())?;
        if kind != COSIGNATURE_TYPE {
            return Err(format!(
                "{vkey} is no witness's cosigner key (type 0x04): fabric witness prints it"
            ));
        }
        Ok(Self { target, name, key })
    }
}

/// The witnesses and how many must cosign a head for it to be final.
#[derive(Clone, Debug, Default)]
pub struct Witnessing {
    /// The witnesses.
    pub peers: Vec<WitnessPeer>,
    /// Cosignatures a final head has (1 to the number of peers).
    pub quorum: usize,
}

/// Whether heads must be witnessed to be final, and the latest final note.
#[derive(Default)]
pub(crate) struct Finality {
    /// Witnesses are asked: `GET /v0/checkpoints/latest` serves only final notes.
    pub(crate) required: bool,
    /// The latest note with a quorum of cosignatures.
    pub(crate) final_note: Mutex<Option<Arc<str>>>,
}

/// Starts the thread that takes heads to the witnesses, for as long as `shared` lives.
pub(crate) fn start(shared: Weak<Shared>, witnessing: Witnessing) -> std::io::Result<()> {
    debug_assert!(witnessing.quorum >= 1 && witnessing.quorum <= witnessing.peers.len());
    std::thread::Builder::new()
        .name("witnesses".to_owned())
        .spawn(move || {
            let mut known = vec![0u64; witnessing.peers.len()];
            let mut said = vec![String::new(); witnessing.peers.len()];
            let mut last: Option<SignedTreeHead> = None;
            while let Some(shared) = shared.upgrade() {
                let head = shared.latest_head();
                if last != Some(head) {
                    if let Some(note) = shared.checkpoints.note(&head) {
                        let lines = push(&shared, &witnessing, &note, &mut known, &mut said);
                        if lines.len() >= witnessing.quorum {
                            let mut full = note.to_string();
                            full.extend(lines);
                            *shared
                                .finality
                                .final_note
                                .lock()
                                .unwrap_or_else(|poison| poison.into_inner()) = Some(full.into());
                            last = Some(head);
                        }
                    }
                }
                drop(shared);
                std::thread::sleep(PUSH_EVERY);
            }
        })
        .map(drop)
}

/// Asks every witness to cosign `note`: the cosignature lines that verify.
fn push(
    shared: &Shared,
    witnessing: &Witnessing,
    note: &str,
    known: &mut [u64],
    said: &mut [String],
) -> Vec<String> {
    let Ok(parsed) = CheckpointNote::parse(note) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (index, peer) in witnessing.peers.iter().enumerate() {
        // A witness that knew another size says which: ask once more from there.
        let mut answer = ask(shared, peer, &parsed, note, known[index]);
        if let Err(Asked::Conflict(size)) = answer {
            known[index] = size;
            answer = ask(shared, peer, &parsed, note, size);
        }
        match answer {
            Ok(line) => {
                known[index] = parsed.tree_size;
                said[index].clear();
                lines.push(line);
            }
            Err(Asked::Conflict(size)) => known[index] = size,
            Err(Asked::Failed(why)) => {
                // Said once, not every half second.
                if said[index] != why {
                    eprintln!("witness {}: {why}", peer.name);
                    said[index] = why;
                }
            }
        }
    }
    lines
}

enum Asked {
    Conflict(u64),
    Failed(String),
}

/// One `POST /v0/add-checkpoint`: the witness's cosignature line, checked.
fn ask(
    shared: &Shared,
    peer: &WitnessPeer,
    parsed: &CheckpointNote,
    note: &str,
    old_size: u64,
) -> Result<String, Asked> {
    let path = match old_size {
        0 => Vec::new(),
        old if old >= parsed.tree_size => Vec::new(),
        old => shared
            .reader
            .consistency_proof(old, parsed.tree_size)
            .map(|(proof, _, _)| proof.path)
            .map_err(|error| Asked::Failed(format!("no proof from size {old}: {error}")))?,
    };
    let request = fabric_witness::AddRequest {
        old_size,
        path,
        note: note.to_owned(),
    }
    .encode();
    let mut client =
        Client::new(peer.target.clone(), WITNESS_TIMEOUT).with_response_bytes_max(ANSWER_BYTES_MAX);
    let response = client
        .request(
            "POST",
            "/v0/add-checkpoint",
            Some(("text/plain; charset=utf-8", request.as_bytes())),
        )
        .map_err(|error| Asked::Failed(format!("{}: {error}", peer.target)))?;
    let body = String::from_utf8_lossy(&response.body).into_owned();
    match response.status {
        200 => {}
        409 => {
            return body
                .trim()
                .parse()
                .map_err(|_| Asked::Failed(format!("409 without a size: {body}")))
                .and_then(|size| Err(Asked::Conflict(size)))
        }
        status => return Err(Asked::Failed(format!("{status} {}", body.trim()))),
    }
    // The answer must be one cosignature line by this witness's key of this very note.
    let mut cosigned = CheckpointNote::parse(&format!("{}{}", note, body))
        .map_err(|error| Asked::Failed(format!("its answer: {error}")))?;
    cosigned.signatures.retain(|line| line.name == peer.name);
    cosigned
        .verify_cosignature(&peer.name, &peer.key)
        .map_err(|error| Asked::Failed(format!("its answer: {error}")))?;
    Ok(body)
}
