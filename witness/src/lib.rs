//! `fabric witness` (docs/FORMAT.md §17.4): a process with a key of its own that follows one
//! or more fabrics over HTTP, and cosigns a tree head only once it has checked that the head
//! extends the last one it cosigned for that log.
//!
//! Each round it asks every server it follows for its latest checkpoint note
//! (`GET /v0/checkpoints/latest`), and for each note:
//!
//! 1. reads it strictly and verifies its signature with a key it was told to trust for that
//!    origin (a note of an unknown origin, or that does not verify, is skipped: anyone can
//!    send bytes, only the log's key can make a fork);
//! 2. compares it with the last head it cosigned for the origin: the same head is nothing
//!    new; a bigger one needs a consistency proof from the cosigned size to its size
//!    (`GET /v0/proofs/consistency/{old}/{new}`, checked against the two notes' roots); a
//!    smaller one needs a proof from its size to the cosigned one;
//! 3. cosigns a consistent bigger head (C2SP tlog-cosignature, Ed25519, with the time), makes
//!    it durable in its state, and only then shows it.
//!
//! Two signed heads of one size with different roots, or a proof that does not hold, is a
//! **fork**: the log's key signed two histories. The witness keeps both signed notes in its
//! evidence folder, never cosigns that origin again, and says so on stderr, in its state, and
//! in its exit status. A proof it cannot get decides nothing: the head is not cosigned.

mod add;
pub mod http;
mod state;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabric_api::http_client::{Client, Target};
use fabric_audit::proof::ConsistencyDoc;
use fabric_events::{PublicKey, SigningKey};
use fabric_ledger::merkle::{verify_consistency, ConsistencyProof};
use fabric_ledger::note::{parse_verifier_key, CheckpointNote, ED25519_SIGNATURE_TYPE};
use thiserror::Error;

pub use add::{AddAnswer, AddRequest, ADD_PROOF_LINES_MAX, ADD_REQUEST_BYTES_MAX};
pub use state::{Fork, LogState, WitnessState};

/// How long one HTTP request to a followed server may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of a followed server's answer: a note, or a consistency proof document
/// (two signed heads, a path of at most 64 hashes, the log's key changes).
pub const ANSWER_BYTES_MAX: usize = 1024 * 1024;
/// The most logs one witness follows.
pub const LOGS_MAX: usize = 64;
/// The most servers one witness asks each round.
pub const SOURCES_MAX: usize = 64;

/// Why the witness cannot go on.
#[derive(Debug, Error)]
pub enum WitnessError {
    /// A setting is wrong.
    #[error("{0}")]
    Setting(String),
    /// Its state could not be read or made durable.
    #[error("the witness state in {}: {detail}", path.display())]
    State {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// A log the witness trusts the keys of: its origin, and every key it may be signed with.
#[derive(Clone, Debug)]
pub struct TrustedLog {
    /// The log's origin (its notes' first line and key name).
    pub origin: String,
    /// Its ledger keys (a rotated log has several).
    pub keys: Vec<PublicKey>,
}

/// What a witness is given.
pub struct WitnessConfig {
    /// Its key name (a schema-less URL, without spaces or `+`).
    pub name: String,
    /// Its cosigning key.
    pub secret: SigningKey,
    /// The logs it witnesses.
    pub logs: Vec<TrustedLog>,
    /// The servers it asks for notes.
    pub sources: Vec<Target>,
    /// Its state folder: `state.json` and `forks/`.
    pub state_dir: PathBuf,
}

impl WitnessConfig {
    /// The logs of verifier keys (`origin+key ID+base64(0x01 ‖ key)`, as `GET /v0/health`
    /// gives them), grouped by origin.
    pub fn logs_of(vkeys: &[String]) -> Result<Vec<TrustedLog>, WitnessError> {
        let mut logs: Vec<TrustedLog> = Vec::new();
        for vkey in vkeys {
            let (origin, kind, key) = parse_verifier_key(vkey)
                .map_err(|error| WitnessError::Setting(format!("--log-key: {error}")))?;
            if kind != ED25519_SIGNATURE_TYPE {
                return Err(WitnessError::Setting(format!(
                    "--log-key {vkey}: a log's key signs notes (type 0x01), not cosignatures"
                )));
            }
            match logs.iter_mut().find(|log| log.origin == origin) {
                Some(log) => log.keys.push(key),
                None => logs.push(TrustedLog {
                    origin,
                    keys: vec![key],
                }),
            }
        }
        if logs.is_empty() || logs.len() > LOGS_MAX {
            return Err(WitnessError::Setting(format!(
                "{} logs: give 1 to {LOGS_MAX} with --log-key",
                logs.len()
            )));
        }
        Ok(logs)
    }
}

/// What a note came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Cosigned: the first head of the log, or one that extends the last cosigned.
    Cosigned {
        /// The log.
        origin: String,
        /// Its size.
        tree_size: u64,
    },
    /// The head last cosigned, or an older one consistent with it.
    NothingNew,
    /// Not judged (and not cosigned), with why.
    Skipped(String),
    /// The log's key signed two histories: the evidence is kept.
    Fork(Fork),
}

/// What a witness last cosigned of a log.
enum Last {
    /// Nothing yet.
    None,
    /// Nothing more: the log forked (why, in words).
    Forked(String),
    /// This note.
    Cosigned(CheckpointNote),
}

/// A witness and its durable state.
pub struct Witness {
    config: WitnessConfig,
    state: WitnessState,
}

impl Outcome {
    fn cosigned(note: &CheckpointNote) -> Self {
        Self::Cosigned {
            origin: note.origin.clone(),
            tree_size: note.tree_size,
        }
    }
}

impl Witness {
    /// Opens the state folder (made when missing) and reads its state.
    pub fn open(config: WitnessConfig) -> Result<Self, WitnessError> {
        if config.sources.len() > SOURCES_MAX {
            return Err(WitnessError::Setting(format!(
                "{} servers to follow: give at most {SOURCES_MAX} with --follow",
                config.sources.len()
            )));
        }
        let state = WitnessState::load(&config.state_dir)?;
        Ok(Self { config, state })
    }

    /// The state as it is durable now.
    pub fn state(&self) -> &WitnessState {
        &self.state
    }

    /// Judges one note (see the module documentation); `prove(old, new)` fetches the
    /// consistency path between two sizes from where the note came from.
    pub fn observe(
        &mut self,
        text: &str,
        prove: impl FnOnce(u64, u64) -> Result<Vec<fabric_events::Hash32>, String>,
    ) -> Result<Outcome, WitnessError> {
        let note = match self.trusted_note(text) {
            Ok(note) => note,
            Err(why) => return Ok(Outcome::Skipped(why)),
        };
        let cosigned = match self.last_cosigned(&note.origin)? {
            // Trust on first use: the first head seen is the one later ones must extend.
            Last::None => return self.cosign(note).map(|note| Outcome::cosigned(&note)),
            Last::Forked(why) => return Ok(Outcome::Skipped(why)),
            Last::Cosigned(cosigned) => cosigned,
        };
        if note.tree_size == cosigned.tree_size {
            return match note.root == cosigned.root {
                true => Ok(Outcome::NothingNew),
                false => self.same_size_fork(cosigned, note).map(Outcome::Fork),
            };
        }
        let (older, newer) = match note.tree_size > cosigned.tree_size {
            true => (&cosigned, &note),
            false => (&note, &cosigned),
        };
        let path = match prove(older.tree_size, newer.tree_size) {
            Ok(path) => path,
            Err(why) => return Ok(Outcome::Skipped(why)),
        };
        let proof = ConsistencyProof {
            old_size: older.tree_size,
            new_size: newer.tree_size,
            path,
        };
        if let Err(error) = verify_consistency(&older.root, &newer.root, &proof) {
            let detail = format!(
                "the head at size {} does not extend the one at size {}: {error}",
                newer.tree_size, older.tree_size
            );
            return self
                .fork(cosigned, note, detail, proof.path)
                .map(Outcome::Fork);
        }
        match note.tree_size > cosigned.tree_size {
            true => self.cosign(note).map(|note| Outcome::cosigned(&note)),
            false => Ok(Outcome::NothingNew),
        }
    }

    /// What this witness last cosigned of `origin`.
    fn last_cosigned(&self, origin: &str) -> Result<Last, WitnessError> {
        let Some(last) = self.state.logs.get(origin) else {
            return Ok(Last::None);
        };
        if last.fork.is_some() {
            return Ok(Last::Forked(format!(
                "{origin} forked: this witness cosigns none of its heads any more"
            )));
        }
        CheckpointNote::parse(&last.note)
            .map(Last::Cosigned)
            .map_err(|error| WitnessError::State {
                path: self.config.state_dir.clone(),
                detail: format!("the note kept for {origin}: {error}"),
            })
    }

    /// `text` read as a note of a log this witness follows, signed by a key given for it; or
    /// why not.
    fn trusted_note(&self, text: &str) -> Result<CheckpointNote, String> {
        let note = CheckpointNote::parse(text).map_err(|error| error.to_string())?;
        let Some(log) = self
            .config
            .logs
            .iter()
            .find(|log| log.origin == note.origin)
        else {
            return Err(format!("{} is no log this witness follows", note.origin));
        };
        if !log
            .keys
            .iter()
            .any(|key| note.verify(&note.origin, key).is_ok())
        {
            return Err(format!(
                "the note of {} at size {} is not signed by a key given for it",
                note.origin, note.tree_size
            ));
        }
        Ok(note)
    }

    /// Cosigns `note` and makes it the head last cosigned of its log, durably: the note
    /// with its cosignature.
    fn cosign(&mut self, mut note: CheckpointNote) -> Result<CheckpointNote, WitnessError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        note.cosign(&self.config.name, &self.config.secret, now);
        // Durable before anyone sees it: after a crash the witness still knows what it
        // cosigned, and cosigns nothing inconsistent with it.
        self.state.logs.insert(
            note.origin.clone(),
            LogState {
                tree_size: note.tree_size,
                note: note.encode(),
                fork: None,
            },
        );
        self.state.save(&self.config.state_dir)?;
        Ok(note)
    }

    /// Two heads of one size with different roots, both signed by the log's key: a fork,
    /// whoever showed the second.
    fn same_size_fork(
        &mut self,
        cosigned: CheckpointNote,
        seen: CheckpointNote,
    ) -> Result<Fork, WitnessError> {
        let detail = "two signed heads of one size".to_owned();
        self.fork(cosigned, seen, detail, Vec::new())
    }

    fn fork(
        &mut self,
        cosigned: CheckpointNote,
        seen: CheckpointNote,
        detail: String,
        path: Vec<fabric_events::Hash32>,
    ) -> Result<Fork, WitnessError> {
        let fork = Fork {
            detail,
            cosigned: cosigned.encode(),
            seen: seen.encode(),
            path,
        };
        let evidence = self.state.keep_evidence(&self.config.state_dir, &fork)?;
        if let Some(log) = self.state.logs.get_mut(&seen.origin) {
            log.fork = Some(fork.clone());
        }
        self.state.save(&self.config.state_dir)?;
        eprintln!(
            "FORK: {} signed two histories ({}); both signed notes are kept in {}",
            seen.origin,
            fork.detail,
            evidence.display()
        );
        Ok(fork)
    }
}

/// A client of a followed server, which reads no more than [`ANSWER_BYTES_MAX`].
fn client_of(source: &Target) -> Client {
    Client::new(source.clone(), REQUEST_TIMEOUT).with_response_bytes_max(ANSWER_BYTES_MAX)
}

/// One round: each followed server asked once, in order; each note's outcome, with the
/// server it came from. No request is made while `witness` is locked, so that a slow server
/// never keeps a fabric's `add-checkpoint` waiting: the note and the proof it needs are
/// fetched first, then judged under the lock.
pub fn round(witness: &Mutex<Witness>) -> Result<Vec<(Target, Outcome)>, WitnessError> {
    let lock = || witness.lock().unwrap_or_else(|poison| poison.into_inner());
    let sources = lock().config.sources.clone();
    let mut outcomes = Vec::with_capacity(sources.len());
    for source in &sources {
        let text = match fetch(&mut client_of(source), "/v0/checkpoints/latest") {
            Ok(body) => String::from_utf8(body).map_err(|_| "the note is not UTF-8".to_owned()),
            Err(why) => Err(why),
        };
        let text = match text {
            Ok(text) => text,
            Err(why) => {
                outcomes.push((source.clone(), Outcome::Skipped(why)));
                continue;
            }
        };
        // The sizes a proof is needed between, if any: the note's and the one last cosigned.
        let sizes = CheckpointNote::parse(&text).ok().and_then(|note| {
            let cosigned = lock().state.logs.get(&note.origin)?.tree_size;
            (cosigned != note.tree_size)
                .then(|| (cosigned.min(note.tree_size), cosigned.max(note.tree_size)))
        });
        let fetched = sizes.map(|(old, new)| ((old, new), prove(source, &sources, old, new)));
        let outcome = lock().observe(&text, |old, new| match fetched {
            Some((sizes, path)) if sizes == (old, new) => path,
            _ => Err(format!(
                "the head last cosigned changed while the proof was fetched; asked again next \
                 round (sizes {old} to {new})"
            )),
        })?;
        outcomes.push((source.clone(), outcome));
    }
    Ok(outcomes)
}

/// The consistency path between two sizes, from any server that holds the bigger tree: the
/// note's own first (it holds its tree), then the others (a server behind the head last
/// cosigned cannot prove that head, another one can).
fn prove(
    source: &Target,
    sources: &[Target],
    old: u64,
    new: u64,
) -> Result<Vec<fabric_events::Hash32>, String> {
    let mut why = match consistency_path(&mut client_of(source), old, new) {
        Ok(path) => return Ok(path),
        Err(why) => why,
    };
    for other in sources.iter().filter(|other| *other != source) {
        match consistency_path(&mut client_of(other), old, new) {
            Ok(path) => return Ok(path),
            Err(also) => why = format!("{why}; {other}: {also}"),
        }
    }
    Err(why)
}

/// The body of a 200 answer to `GET path`, or why there is none.
fn fetch(client: &mut Client, path: &str) -> Result<Vec<u8>, String> {
    let response = client
        .request("GET", path, None)
        .map_err(|error| format!("GET {path}: {error}"))?;
    match response.status {
        200 => Ok(response.body),
        status => Err(format!("GET {path}: {status} {}", response.text())),
    }
}

/// The consistency path between two sizes as the server proves it (its document's heads are
/// not needed: the path is checked against the two notes' roots).
fn consistency_path(
    client: &mut Client,
    old: u64,
    new: u64,
) -> Result<Vec<fabric_events::Hash32>, String> {
    let body = fetch(client, &format!("/v0/proofs/consistency/{old}/{new}"))?;
    let doc: ConsistencyDoc = serde_json::from_slice(&body)
        .map_err(|error| format!("the consistency proof {old}..{new} does not parse: {error}"))?;
    if (doc.old_size, doc.new_size) != (old, new) {
        return Err(format!(
            "asked for the consistency proof {old}..{new}, got {}..{}",
            doc.old_size, doc.new_size
        ));
    }
    Ok(doc.path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_events::{keys, Hash32};
    use fabric_ledger::merkle;
    use fabric_ledger::note::verifier_key;

    const ORIGIN: &str = "fabric/0123456789abcdef0123456789abcdef";

    /// A log of `leaves` and the key that signs its notes.
    struct Log {
        leaves: Vec<Hash32>,
        key: SigningKey,
    }

    impl Log {
        fn new(key: &SigningKey, seed: u8, size: usize) -> Self {
            let leaves = (0..size)
                .map(|index| Hash32([seed ^ (index as u8); 32]))
                .collect();
            Self {
                leaves,
                key: key.clone(),
            }
        }

        fn note(&self, size: u64) -> String {
            let root = merkle::root(&self.leaves[..size as usize]);
            CheckpointNote::sign(ORIGIN, size, root, &self.key).encode()
        }

        fn prove(&self) -> impl FnOnce(u64, u64) -> Result<Vec<Hash32>, String> + '_ {
            |old, new| {
                merkle::consistency_proof(&self.leaves[..new as usize], old)
                    .map(|proof| proof.path)
                    .map_err(|error| error.to_string())
            }
        }
    }

    fn witness(dir: &std::path::Path, log_key: &SigningKey) -> Witness {
        let vkey = verifier_key(ORIGIN, &PublicKey::from(&log_key.verifying_key()));
        Witness::open(WitnessConfig {
            name: "witness.test/w1".to_owned(),
            secret: keys::generate(),
            logs: WitnessConfig::logs_of(&[vkey]).expect("a log"),
            sources: vec![Target::Tcp("127.0.0.1:1".to_owned())],
            state_dir: dir.to_path_buf(),
        })
        .expect("opens")
    }

    #[test]
    fn consistent_heads_are_cosigned_in_order_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = keys::generate();
        let log = Log::new(&key, 1, 40);
        let mut witness = witness(dir.path(), &key);
        let cosigned = |tree_size| Outcome::Cosigned {
            origin: ORIGIN.to_owned(),
            tree_size,
        };
        for (size, expected) in [
            (5, cosigned(5)),
            (17, cosigned(17)),
            (17, Outcome::NothingNew),
            (40, cosigned(40)),
            (12, Outcome::NothingNew),
        ] {
            let outcome = witness
                .observe(&log.note(size), log.prove())
                .expect("judged");
            assert_eq!(outcome, expected, "size {size}");
        }
        let kept = CheckpointNote::parse(&witness.state().logs[ORIGIN].note).expect("a note");
        assert_eq!(kept.tree_size, 40);
        kept.verify_cosignature(
            "witness.test/w1",
            &PublicKey::from(&witness.config.secret.verifying_key()),
        )
        .expect("cosigned by the witness");
        // Started again on its folder, it knows what it cosigned.
        let again = Witness::open(WitnessConfig {
            name: "witness.test/w1".to_owned(),
            secret: keys::generate(),
            logs: witness.config.logs.clone(),
            sources: witness.config.sources.clone(),
            state_dir: dir.path().to_path_buf(),
        })
        .expect("opens again");
        assert_eq!(again.state(), witness.state());
    }

    #[test]
    fn a_second_history_under_the_same_key_is_a_fork_with_both_notes_kept() {
        let key = keys::generate();
        let honest = Log::new(&key, 1, 30);
        // The same first 10 entries, then others: the same key signs both.
        let mut forked = Log::new(&key, 1, 30);
        for leaf in &mut forked.leaves[10..] {
            leaf.0[0] ^= 0xff;
        }
        for (first, second, detail) in [
            (20, 20, "two signed heads of one size"),
            (20, 25, "does not extend"),
            (25, 20, "does not extend"),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut witness = witness(dir.path(), &key);
            witness
                .observe(&honest.note(first), honest.prove())
                .expect("judged");
            let outcome = witness
                .observe(&forked.note(second), forked.prove())
                .expect("judged");
            let Outcome::Fork(fork) = outcome else {
                panic!("{first} then {second}: not a fork: {outcome:?}");
            };
            assert!(fork.detail.contains(detail), "{}", fork.detail);
            assert_eq!(
                CheckpointNote::parse(&fork.seen).expect("kept").tree_size,
                second
            );
            assert!(witness.state().forked());
            let evidence = std::fs::read_dir(dir.path().join(state::FORKS_DIR))
                .expect("the evidence folder")
                .count();
            assert_eq!(evidence, 1);
            // Nothing of that log is cosigned any more, not even its honest heads.
            let after = witness
                .observe(&honest.note(30), honest.prove())
                .expect("judged");
            assert!(matches!(after, Outcome::Skipped(ref why) if why.contains("forked")));
        }
    }

    #[test]
    fn a_pushed_head_is_cosigned_with_its_proof_and_refused_without_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = keys::generate();
        let log = Log::new(&key, 1, 30);
        let mut witness = witness(dir.path(), &key);
        let request = |old: u64, new: u64| {
            let path = match old {
                0 => Vec::new(),
                _ => {
                    merkle::consistency_proof(&log.leaves[..new as usize], old)
                        .expect("a proof")
                        .path
                }
            };
            let request = AddRequest {
                old_size: old,
                path,
                note: log.note(new),
            };
            AddRequest::parse(request.encode().as_bytes()).expect("reads back")
        };
        let add = |witness: &mut Witness, request: &AddRequest| {
            witness.add_checkpoint(request).expect("judged")
        };
        // A first head needs old 0; then each needs the size last cosigned and its path.
        assert_eq!(add(&mut witness, &request(4, 10)), AddAnswer::Conflict(0));
        assert!(
            matches!(add(&mut witness, &request(0, 10)), AddAnswer::Cosigned(ref line)
            if line.starts_with("\u{2014} witness.test/w1 "))
        );
        assert_eq!(add(&mut witness, &request(0, 20)), AddAnswer::Conflict(10));
        let mut wrong = request(10, 20);
        wrong.path[0].0[0] ^= 1;
        assert!(matches!(add(&mut witness, &wrong), AddAnswer::Unproved(_)));
        assert!(!witness.state().forked(), "a wrong path is no evidence");
        assert!(matches!(
            add(&mut witness, &request(10, 20)),
            AddAnswer::Cosigned(_)
        ));
        assert_eq!(witness.state().logs[ORIGIN].tree_size, 20);
        // The same head again: the same cosignature, nothing new.
        let again = add(&mut witness, &request(10, 20));
        assert_eq!(
            again,
            AddAnswer::Cosigned(witness.own_line(
                &CheckpointNote::parse(&witness.state().logs[ORIGIN].note).expect("note")
            ))
        );
        // Another note of that size under the log's key: a fork, kept.
        let mut other = Log::new(&key, 2, 30);
        other.leaves.truncate(20);
        let forked = AddRequest {
            old_size: 20,
            path: Vec::new(),
            note: other.note(20),
        };
        assert!(matches!(add(&mut witness, &forked), AddAnswer::Refused(_)));
        assert!(witness.state().forked());
        let stranger = AddRequest {
            old_size: 0,
            path: Vec::new(),
            note: Log::new(&keys::generate(), 1, 30).note(5),
        };
        assert!(matches!(
            add(&mut witness, &stranger),
            AddAnswer::Refused(_)
        ));
        assert!(AddRequest::parse(b"old x\n\nnote").is_err());
        assert!(AddRequest::parse(&vec![b'a'; ADD_REQUEST_BYTES_MAX + 1]).is_err());
    }

    #[test]
    fn notes_of_other_keys_or_origins_and_unproved_heads_are_skipped_not_cosigned() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = keys::generate();
        let log = Log::new(&key, 1, 30);
        let mut witness = witness(dir.path(), &key);
        let stranger = Log::new(&keys::generate(), 1, 30);
        let outcome = witness.observe(&stranger.note(5), stranger.prove());
        assert!(matches!(outcome, Ok(Outcome::Skipped(ref why)) if why.contains("not signed")));
        let other_origin = CheckpointNote::sign("fabric/other", 5, Hash32([1; 32]), &key).encode();
        let outcome = witness.observe(&other_origin, log.prove());
        assert!(matches!(outcome, Ok(Outcome::Skipped(ref why)) if why.contains("no log")));
        witness.observe(&log.note(5), log.prove()).expect("judged");
        let outcome = witness.observe(&log.note(9), |_, _| Err("no proof here".to_owned()));
        assert_eq!(
            outcome.ok(),
            Some(Outcome::Skipped("no proof here".to_owned()))
        );
        assert_eq!(witness.state().logs[ORIGIN].tree_size, 5);
        assert!(!witness.state().forked());
    }
}
