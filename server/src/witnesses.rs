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
        let (target, vkey) = address_and_key(text)?;
        let (name, kind, key) = parse_verifier_key(vkey).map_err(|error| error.to_string())?;
        if kind != COSIGNATURE_TYPE {
            return Err(format!(
                "{vkey} is no witness's cosigner key (type 0x04): fabric witness prints it"
            ));
        }
        Ok(Self { target, name, key })
    }
}

/// `URL=VKEY` (a witness's or a federation peer's flag): the address, parsed, and the key.
pub(crate) fn address_and_key(text: &str) -> Result<(Target, &str), String> {
    let (url, vkey) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not URL=VERIFIER_KEY"))?;
    let target = Target::parse(url).map_err(|error| format!("{url}: {error}"))?;
    Ok((target, vkey))
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
    /// The latest head with a quorum of cosignatures, and its note with their lines.
    pub(crate) final_head: Mutex<Option<(SignedTreeHead, Arc<str>)>>,
}

impl Finality {
    /// The latest final head and its note, if any head is final yet.
    pub(crate) fn latest(&self) -> Option<(SignedTreeHead, Arc<str>)> {
        self.final_head
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }
}

/// Starts the thread that takes heads to the witnesses, for as long as `shared` lives.
pub(crate) fn start(shared: Weak<Shared>, witnessing: Witnessing) -> std::io::Result<()> {
    debug_assert!(witnessing.quorum >= 1 && witnessing.quorum <= witnessing.peers.len());
    std::thread::Builder::new()
        .name("witnesses".to_owned())
        .spawn(move || {
            let mut pusher = Pusher::new(witnessing);
            while let Some(shared) = shared.upgrade() {
                pusher.push(&shared);
                drop(shared);
                std::thread::sleep(PUSH_EVERY);
            }
        })
        .map(drop)
}

/// What the pushing thread knows of each witness, and of the head it takes to them.
struct Pusher {
    witnessing: Witnessing,
    /// Per witness: the size it last cosigned, as far as this fabric knows.
    known: Vec<u64>,
    /// Per witness: the last failure said (said once, not every half second).
    said: Vec<String>,
    /// The head being taken to the witnesses, its note, and each witness's cosignature line
    /// of it so far: a witness that gave one is not asked again for that head.
    current: Option<(SignedTreeHead, Arc<str>, Vec<Option<String>>)>,
    /// The last head called final.
    last_final: Option<SignedTreeHead>,
    /// Consistency paths to the current head, by old size: computed once (O(size) each),
    /// however often a witness that is away is asked again.
    paths: std::collections::HashMap<u64, Vec<fabric_events::Hash32>>,
}

impl Pusher {
    fn new(witnessing: Witnessing) -> Self {
        let count = witnessing.peers.len();
        Self {
            witnessing,
            known: vec![0; count],
            said: vec![String::new(); count],
            current: None,
            last_final: None,
            paths: Default::default(),
        }
    }

    /// One pass: the latest head asked of each witness that has not cosigned it yet, and
    /// called final once the quorum's lines verify.
    fn push(&mut self, shared: &Shared) {
        let head = shared.latest_head();
        if self.last_final == Some(head) {
            return;
        }
        if self.current.as_ref().map(|(current, _, _)| *current) != Some(head) {
            let Some(note) = shared.checkpoints.note(&head) else {
                return;
            };
            let count = self.witnessing.peers.len();
            self.current = Some((head, note, vec![None; count]));
            self.paths.clear();
        }
        let Some((_, note, mut lines)) = self.current.take() else {
            return;
        };
        if let Ok(parsed) = CheckpointNote::parse(&note) {
            for (index, line) in lines.iter_mut().enumerate() {
                if line.is_none() {
                    *line = self.ask_until_answered(shared, index, &parsed, &note);
                }
            }
        }
        let cosigned: Vec<&String> = lines.iter().flatten().collect();
        if cosigned.len() >= self.witnessing.quorum {
            let mut full = note.to_string();
            full.extend(cosigned.into_iter().map(String::as_str));
            *shared
                .finality
                .final_head
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = Some((head, full.into()));
            self.last_final = Some(head);
        }
        self.current = Some((head, note, lines));
    }

    /// Witness `index`'s cosignature line of `note`, asked from the size it is known to have
    /// cosigned, and once more from the size a 409 names; none (said once) when it fails.
    fn ask_until_answered(
        &mut self,
        shared: &Shared,
        index: usize,
        parsed: &CheckpointNote,
        note: &str,
    ) -> Option<String> {
        let mut answer = self.ask(shared, index, parsed, note);
        if let Err(Asked::Conflict(size)) = answer {
            self.known[index] = size;
            answer = self.ask(shared, index, parsed, note);
        }
        match answer {
            Ok(line) => {
                self.known[index] = parsed.tree_size;
                self.said[index].clear();
                Some(line)
            }
            Err(Asked::Conflict(size)) => {
                self.known[index] = size;
                None
            }
            Err(Asked::Failed(why)) => {
                if self.said[index] != why {
                    eprintln!("witness {}: {why}", self.witnessing.peers[index].name);
                    self.said[index] = why;
                }
                None
            }
        }
    }

    /// One `POST /v0/add-checkpoint` to witness `index`: its cosignature line, checked.
    fn ask(
        &mut self,
        shared: &Shared,
        index: usize,
        parsed: &CheckpointNote,
        note: &str,
    ) -> Result<String, Asked> {
        let old_size = self.known[index];
        let path = match old_size {
            0 => Vec::new(),
            old if old >= parsed.tree_size => Vec::new(),
            old => match self.paths.get(&old) {
                Some(path) => path.clone(),
                None => {
                    let path = shared
                        .reader
                        .consistency_proof(old, parsed.tree_size)
                        .map(|(proof, _, _)| proof.path)
                        .map_err(|error| {
                            Asked::Failed(format!("no proof from size {old}: {error}"))
                        })?;
                    self.paths.insert(old, path.clone());
                    path
                }
            },
        };
        post(&self.witnessing.peers[index], old_size, path, note)
    }
}

enum Asked {
    Conflict(u64),
    Failed(String),
}

/// Sends witness `peer` the request for `note` from `old_size` with `path`: its cosignature
/// line, checked with its key over that very note.
fn post(
    peer: &WitnessPeer,
    old_size: u64,
    path: Vec<fabric_events::Hash32>,
    note: &str,
) -> Result<String, Asked> {
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
