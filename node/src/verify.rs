//! What a node checks before it runs anything: each order of a [`WorkBatch`] has its two
//! entries in the log (each entry's hash, its audit path, and the tree head signed by the
//! ledger key), the assignment's event is signed by its author, the assignment is a router's
//! `job_assigned` naming this node, the submission is that job's, and the model entry (proved
//! the same way, its signature checked too) registers the job's model. Only a [`VerifiedJob`]
//! runs.
//!
//! The submission's signature is not checked again: the node does not know the fabric's
//! clients, so that signature would only show that some key signed the entry, which the log
//! already vouches for (the gate admits a submission only when a registered client signed it,
//! and the tree head signed by the ledger key proves the entry is in the log).
//!
//! The [`OrderVerifier`] remembers what it verified that cannot change in an append-only log:
//! the signed tree heads (one per tick, shared by every order of the tick), the model
//! registrations (by seq and entry hash) and the authors' decompressed keys. The assignments'
//! signatures of a batch are checked together with ed25519 batch verification.

use std::collections::HashMap;

use fabric_events::{
    entry_hash, Body, Entry, Event, Hash32, JobId, JobType, ModelRegistered, OwnerAction,
    PublicKey, Role,
};
use fabric_ledger::merkle::{self, InclusionProof};
use fabric_ledger::{KeyCache, SignedTreeHead};
use thiserror::Error;

use crate::work::{ProvedEntry, WorkBatch, WorkOrder};

/// Signed tree heads remembered as verified (a tick's head serves all its orders).
const HEADS_REMEMBERED_MAX: usize = 256;
/// Model registrations remembered as verified.
const MODELS_REMEMBERED_MAX: usize = 1_024;
/// Authors whose decompressed keys are remembered (routers and owners).
const KEYS_REMEMBERED_MAX: usize = 4_096;

/// A job whose every part the node has verified in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedJob {
    /// The job.
    pub job: JobId,
    /// The seq of its assignment (one attempt of the job).
    pub assignment_seq: u64,
    /// The tick of its assignment.
    pub assigned_tick: u64,
    /// BLAKE3 of its input.
    pub input_hash: Hash32,
    /// `model_id@model_version`.
    pub workload: String,
    /// The model's job type.
    pub job_type: JobType,
    /// The model's weights.
    pub weights: Vec<u8>,
}

/// Why a work order is refused; the node runs nothing of it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OrderRefused {
    /// An entry is not proved in the log under a tree head the ledger key signed.
    #[error("the {which} entry is not proved in the log: {detail}")]
    NotInLog {
        /// `assignment`, `submission` or `model`.
        which: &'static str,
        /// What failed (signature, tree head, audit path).
        detail: String,
    },
    /// An entry proved in the log says something else than an order needs.
    #[error("the {which} entry {detail}")]
    Contents {
        /// `assignment`, `submission` or `model`.
        which: &'static str,
        /// What it says instead.
        detail: String,
    },
}

fn not_in_log(which: &'static str, detail: impl Into<String>) -> OrderRefused {
    OrderRefused::NotInLog {
        which,
        detail: detail.into(),
    }
}

fn contents(which: &'static str, detail: String) -> OrderRefused {
    OrderRefused::Contents { which, detail }
}

/// Whether `head` is signed by one of `keys` (the key it names must be one of them, and its
/// signature verify).
pub fn trusted(keys: &[PublicKey], head: &SignedTreeHead) -> bool {
    keys.contains(&head.ledger_key) && head.verify(&head.ledger_key).is_ok()
}

/// Verifies work orders against the ledger keys a node trusts: its fabric's genesis key, and
/// the sequencer keys of a replicated fabric.
pub struct OrderVerifier {
    ledger_keys: Vec<PublicKey>,
    heads: HashMap<u64, SignedTreeHead>,
    models: HashMap<u64, (Hash32, ModelRegistered)>,
    keys: KeyCache,
}

/// An entry whose place in the log is proved (an assignment's or a model's signature is still
/// to be checked).
struct Placed {
    which: &'static str,
    entry: Entry,
}

impl OrderVerifier {
    /// A verifier trusting tree heads signed by `ledger_key`.
    pub fn new(ledger_key: PublicKey) -> Self {
        Self::trusting(vec![ledger_key])
    }

    /// A verifier trusting tree heads signed by any of `ledger_keys` (a replicated fabric's
    /// sequencers: the acting one signs).
    pub fn trusting(ledger_keys: Vec<PublicKey>) -> Self {
        Self {
            ledger_keys,
            heads: HashMap::new(),
            models: HashMap::new(),
            keys: KeyCache::new(KEYS_REMEMBERED_MAX),
        }
    }

    /// Verifies every order of `batch` for node `node`: one result per order, in order.
    pub fn verify(
        &mut self,
        batch: &WorkBatch,
        node: &str,
    ) -> Vec<Result<VerifiedJob, OrderRefused>> {
        let models: HashMap<u64, Result<ModelRegistered, OrderRefused>> = batch
            .models
            .iter()
            .map(|doc| (doc.seq, self.model(doc)))
            .collect();
        let placed: Vec<Result<[Placed; 2], OrderRefused>> = batch
            .orders
            .iter()
            .map(|order| {
                Ok([
                    self.place("assignment", &order.assignment)?,
                    self.place("submission", &order.submission)?,
                ])
            })
            .collect();
        // The assignments' signatures, checked in one batch: order i's is entries[at[i]] (an
        // order already refused has none).
        let mut entries: Vec<Entry> = Vec::with_capacity(placed.len());
        let at: Vec<usize> = placed
            .iter()
            .map(|pair| {
                let at = entries.len();
                if let Ok([assignment, _]) = pair {
                    entries.push(assignment.entry.clone());
                }
                at
            })
            .collect();
        let refused: HashMap<usize, String> = fabric_ledger::verify_batch(&entries, &mut self.keys)
            .into_iter()
            .map(|refusal| (refusal.index, refusal.reason.to_string()))
            .collect();
        batch
            .orders
            .iter()
            .zip(placed)
            .zip(at)
            .map(|((order, placed), at)| {
                let [assignment, submission] = placed?;
                if let Some(why) = refused.get(&at) {
                    return Err(not_in_log(assignment.which, why.clone()));
                }
                let model = match models.get(&order.model_seq) {
                    Some(model) => model.clone()?,
                    None => self.remembered_model(order.model_seq)?,
                };
                judge(order, &assignment.entry, &submission.entry, &model, node)
            })
            .collect()
    }

    /// The registration of a model the node verified before (a batch names it without
    /// carrying it).
    fn remembered_model(&self, seq: u64) -> Result<ModelRegistered, OrderRefused> {
        self.models
            .get(&seq)
            .map(|(_, registration)| registration.clone())
            .ok_or_else(|| {
                not_in_log(
                    "model",
                    format!("entry {seq} is neither in the batch nor verified before"),
                )
            })
    }

    /// A model's registration, proved in the log (or remembered: the same entry at the same
    /// seq, which an append-only log cannot change).
    fn model(&mut self, proved: &ProvedEntry) -> Result<ModelRegistered, OrderRefused> {
        let leaf = entry_hash(&proved.entry);
        if let Some((known, registration)) = self.models.get(&proved.seq) {
            if *known == leaf {
                return Ok(registration.clone());
            }
        }
        let placed = self.place("model", proved)?;
        if let Some(refusal) =
            fabric_ledger::verify_batch(std::slice::from_ref(&placed.entry), &mut self.keys).first()
        {
            return Err(not_in_log("model", refusal.reason.to_string()));
        }
        let event = event_of("model", &placed.entry)?;
        let registration = match event.body {
            Body::OwnerCommand(command) => match command.action {
                OwnerAction::RegisterModel { registration } => registration,
                other => {
                    return Err(contents(
                        "model",
                        format!("is an owner command of another action ({other:?})"),
                    ))
                }
            },
            other => {
                return Err(contents(
                    "model",
                    format!("is a {}, not an owner command", other.kind().as_str()),
                ))
            }
        };
        if self.models.len() >= MODELS_REMEMBERED_MAX {
            self.models.clear();
        }
        self.models.insert(proved.seq, (leaf, registration.clone()));
        Ok(registration)
    }

    /// Proves an entry's place in the log: its tree head is signed by the ledger key, and the
    /// audit path leads from the entry's hash to the head's root.
    fn place(&mut self, which: &'static str, proved: &ProvedEntry) -> Result<Placed, OrderRefused> {
        let head = proved.tree_head;
        self.check_head(which, &head)?;
        let leaf = entry_hash(&proved.entry);
        let entry =
            Entry::decode(&proved.entry).map_err(|err| not_in_log(which, err.to_string()))?;
        if entry.seq != proved.seq {
            return Err(not_in_log(
                which,
                format!(
                    "the entry is seq {}, the proof says {}",
                    entry.seq, proved.seq
                ),
            ));
        }
        let proof = InclusionProof {
            index: proved.seq,
            tree_size: head.tree_size,
            path: proved.audit_path.clone(),
        };
        merkle::verify_inclusion(&leaf, &proof, &head.root).map_err(|err| {
            not_in_log(
                which,
                format!(
                    "audit path of {} hashes does not prove entry {} under the signed root: {err}",
                    proved.audit_path.len(),
                    proved.seq
                ),
            )
        })?;
        Ok(Placed { which, entry })
    }

    /// A tree head signed by the ledger key (each one verified once).
    fn check_head(
        &mut self,
        which: &'static str,
        head: &SignedTreeHead,
    ) -> Result<(), OrderRefused> {
        if self.heads.get(&head.tree_size) == Some(head) {
            return Ok(());
        }
        if !trusted(&self.ledger_keys, head) {
            return Err(not_in_log(
                which,
                format!(
                    "its tree head of {} entries is signed by {}, not by a ledger key this node \
                     trusts",
                    head.tree_size, head.ledger_key
                ),
            ));
        }
        if self.heads.len() >= HEADS_REMEMBERED_MAX {
            self.heads.clear();
        }
        self.heads.insert(head.tree_size, *head);
        Ok(())
    }
}

fn event_of(which: &'static str, entry: &Entry) -> Result<Event, OrderRefused> {
    entry
        .event()
        .map_err(|err| not_in_log(which, format!("the entry's event does not decode: {err}")))
}

/// What the proved entries of an order must say: a router's assignment of the submitted job
/// to this node, of a job of the model.
fn judge(
    order: &WorkOrder,
    assignment: &Entry,
    submission: &Entry,
    registration: &ModelRegistered,
    node: &str,
) -> Result<VerifiedJob, OrderRefused> {
    let assignment_event = event_of("assignment", assignment)?;
    let submission_event = event_of("submission", submission)?;
    let Body::JobAssigned(assigned) = &assignment_event.body else {
        return Err(contents(
            "assignment",
            format!(
                "is a {}, not a job_assigned",
                assignment_event.kind().as_str()
            ),
        ));
    };
    if assignment_event.header.role != Role::Router {
        return Err(contents(
            "assignment",
            format!(
                "is authored as a {}, not a router",
                assignment_event.header.role.as_str()
            ),
        ));
    }
    if assigned.node != node {
        return Err(contents(
            "assignment",
            format!(
                "assigns job {} to node `{}`, not to `{node}`",
                assigned.job, assigned.node
            ),
        ));
    }
    let Body::JobSubmitted(submitted) = &submission_event.body else {
        return Err(contents(
            "submission",
            format!(
                "is a {}, not a job_submitted",
                submission_event.kind().as_str()
            ),
        ));
    };
    if submitted.job != assigned.job {
        return Err(contents(
            "submission",
            format!(
                "is of job {}, the assignment of job {}",
                submitted.job, assigned.job
            ),
        ));
    }
    if registration.workload() != submitted.workload {
        return Err(contents(
            "model",
            format!(
                "entry {} registers {}, the job's workload is {}",
                order.model_seq,
                registration.workload(),
                submitted.workload
            ),
        ));
    }
    Ok(VerifiedJob {
        job: assigned.job,
        assignment_seq: assignment.seq,
        assigned_tick: assignment_event.header.tick,
        input_hash: submitted.input_hash,
        workload: submitted.workload.clone(),
        job_type: registration.job_type,
        weights: registration.weights.clone(),
    })
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use fabric_audit::proof::inclusion_doc;
    use fabric_events::{
        derive_signing_key, JobAssigned, JobSubmitted, ModelRegistered, OwnerCommand, SignedEvent,
        SigningKey,
    };
    use fabric_ledger::{Ledger, SignedTreeHead};

    use super::*;

    fn public(key: &SigningKey) -> PublicKey {
        PublicKey::from(&key.verifying_key())
    }

    fn signed(role: Role, nonce: u64, body: impl Into<Body>, key: &SigningKey) -> SignedEvent {
        SignedEvent::sign(&Event::new(role, 3, nonce, body), key).expect("small")
    }

    /// A real ledger holding a model, a job and its assignment to `node-a`, and the batch of
    /// its order.
    fn order() -> (WorkBatch, SigningKey, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger_key = derive_signing_key(5, "tests/ledger");
        let router = derive_signing_key(5, "tests/router");
        let client = derive_signing_key(5, "tests/client");
        let registration = ModelRegistered {
            model_id: "vision".to_owned(),
            model_version: "1".to_owned(),
            job_type: JobType::EncodeState,
            weights: vec![3; JobType::EncodeState.weights_bytes()],
        };
        let command = OwnerCommand {
            action: OwnerAction::RegisterModel { registration },
            expiry_tick: 100,
            approvals: Vec::new(),
        };
        let events = vec![
            signed(Role::Owner, 1, command, &ledger_key),
            signed(
                Role::Client,
                1,
                JobSubmitted {
                    job: 7,
                    shard: "earth".to_owned(),
                    workload: "vision@1".to_owned(),
                    skills: Vec::new(),
                    duration_ticks: 1,
                    deadline_tick: 50,
                    budget_micros: 1,
                    input_hash: Hash32([9; 32]),
                },
                &client,
            ),
            signed(
                Role::Router,
                1,
                JobAssigned {
                    job: 7,
                    shard: "earth".to_owned(),
                    node: "earth.node-a".to_owned(),
                },
                &router,
            ),
        ];
        let mut ledger = Ledger::open(dir.path().join("ledger"), ledger_key.clone()).expect("open");
        ledger.append(&events).expect("appended");
        let reader = ledger.reader();
        let doc = |seq| {
            let doc = inclusion_doc(&reader, &public(&ledger_key), 3, seq, 3).expect("proof");
            ProvedEntry {
                seq: doc.seq,
                tree_head: doc.tree_head,
                entry: BASE64.decode(&doc.entry).expect("base64"),
                audit_path: doc.audit_path,
            }
        };
        let batch = WorkBatch {
            models: vec![doc(0)],
            orders: vec![WorkOrder {
                assignment: doc(2),
                input: None,
                model_seq: 0,
                submission: doc(1),
            }],
        };
        (batch, ledger_key, dir)
    }

    #[test]
    fn an_order_proved_in_the_log_is_run() {
        let (batch, ledger_key, _dir) = order();
        let mut verifier = OrderVerifier::new(public(&ledger_key));
        let job = verifier
            .verify(&batch, "earth.node-a")
            .remove(0)
            .expect("verified");
        assert_eq!(job.job, 7);
        assert_eq!(job.assignment_seq, 2);
        assert_eq!(job.input_hash, Hash32([9; 32]));
        assert_eq!(job.job_type, JobType::EncodeState);
        assert_eq!(job.workload, "vision@1");
        // The model verified once is remembered: a later batch may name it without it.
        let mut later = batch.clone();
        later.models.clear();
        let again = verifier.verify(&later, "earth.node-a").remove(0);
        assert_eq!(again.expect("verified"), job);
        // A model the node never verified is not taken on trust.
        let mut fresh = OrderVerifier::new(public(&ledger_key));
        let unknown = fresh.verify(&later, "earth.node-a").remove(0);
        let unknown = unknown.expect_err("refused").to_string();
        assert!(
            unknown.contains("neither in the batch nor verified"),
            "{unknown}"
        );
    }

    #[test]
    fn a_remembered_tree_head_does_not_vouch_for_a_forged_one_of_the_same_size() {
        let (batch, ledger_key, _dir) = order();
        let mut verifier = OrderVerifier::new(public(&ledger_key));
        verifier
            .verify(&batch, "earth.node-a")
            .remove(0)
            .expect("verified");
        let stranger = derive_signing_key(5, "tests/stranger");
        let mut forged = batch.clone();
        let head = forged.orders[0].assignment.tree_head;
        forged.orders[0].assignment.tree_head =
            SignedTreeHead::sign(head.tree_size, head.root, &stranger);
        let refused = verifier.verify(&forged, "earth.node-a").remove(0);
        let refused = refused.expect_err("refused").to_string();
        assert!(
            refused.contains("assignment entry is not proved"),
            "{refused}"
        );
        // A model entry at a remembered seq with other bytes is proved afresh, and fails.
        let mut other = batch.clone();
        let last = other.models[0].entry.len() - 1;
        other.models[0].entry[last] ^= 1;
        let refused = verifier.verify(&other, "earth.node-a").remove(0);
        assert!(refused.is_err(), "a changed model entry is refused");
    }

    #[test]
    fn an_order_with_a_wrong_proof_signature_or_tree_head_is_refused() {
        let (batch, ledger_key, _dir) = order();
        let key = public(&ledger_key);
        let verify =
            |batch: &WorkBatch, node: &str| OrderVerifier::new(key).verify(batch, node).remove(0);
        let refused = |change: &dyn Fn(&mut WorkOrder, &mut Vec<ProvedEntry>)| {
            let mut changed = batch.clone();
            change(&mut changed.orders[0], &mut changed.models);
            verify(&changed, "earth.node-a")
                .expect_err("refused")
                .to_string()
        };
        // A sibling of the audit path changed: the path leads to another root.
        let wrong_proof = refused(&|o, _| o.assignment.audit_path[0].0[0] ^= 1);
        assert!(
            wrong_proof.contains("assignment entry is not proved"),
            "{wrong_proof}"
        );
        // The router's signature changed in the entry bytes: the signature no longer verifies
        // (nor does the audit path lead to the root from the changed entry's hash).
        let wrong_signature = refused(&|o, _| o.assignment.entry[8 + 32 + 32] ^= 1);
        assert!(
            wrong_signature.contains("assignment entry is not proved"),
            "{wrong_signature}"
        );
        // A tree head signed by another key over the same root.
        let stranger = derive_signing_key(5, "tests/stranger");
        let wrong_head = refused(&|o, _| {
            let head = o.submission.tree_head;
            o.submission.tree_head = SignedTreeHead::sign(head.tree_size, head.root, &stranger);
        });
        assert!(
            wrong_head.contains("submission entry is not proved"),
            "{wrong_head}"
        );
        // A head whose signature was tampered with.
        let tampered = refused(&|_, models| models[0].tree_head.signature.0[0] ^= 1);
        assert!(tampered.contains("model entry is not proved"), "{tampered}");
        // Proved, but for another node.
        let other = verify(&batch, "earth.node-b").expect_err("not ours");
        assert!(
            other.to_string().contains("not to `earth.node-b`"),
            "{other}"
        );
        // Proved parts put in the wrong places.
        let swapped = refused(&|o, _| std::mem::swap(&mut o.assignment, &mut o.submission));
        assert!(swapped.contains("not a job_assigned"), "{swapped}");
    }
}
