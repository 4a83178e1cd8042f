//! What a node checks before it runs anything: a [`WorkOrder`]'s three entries are in the log
//! (each entry's hash, its event's signature, its audit path, and the tree head signed by the
//! ledger key), the assignment is a router's `job_assigned` naming this node, the submission
//! is that job's, and the model entry registers the job's model. Only a [`VerifiedJob`] runs.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_audit::proof::{verify_inclusion_doc, InclusionDoc};
use fabric_events::{Body, Entry, Event, Hash32, JobId, JobType, OwnerAction, PublicKey, Role};
use thiserror::Error;

use crate::protocol::WorkOrder;

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

/// Verifies `order` for node `node` against the ledger key `ledger_key`.
pub fn verify_order(
    order: &WorkOrder,
    ledger_key: &PublicKey,
    node: &str,
) -> Result<VerifiedJob, OrderRefused> {
    let (assignment_seq, assignment) = proved("assignment", &order.assignment, ledger_key)?;
    let (_, submission) = proved("submission", &order.submission, ledger_key)?;
    let (_, model) = proved("model", &order.model, ledger_key)?;
    let contents = |which, detail: String| OrderRefused::Contents { which, detail };
    let Body::JobAssigned(assigned) = &assignment.body else {
        return Err(contents(
            "assignment",
            format!("is a {}, not a job_assigned", assignment.kind().as_str()),
        ));
    };
    if assignment.header.role != Role::Router {
        return Err(contents(
            "assignment",
            format!(
                "is authored as a {}, not a router",
                assignment.header.role.as_str()
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
    let Body::JobSubmitted(submitted) = &submission.body else {
        return Err(contents(
            "submission",
            format!("is a {}, not a job_submitted", submission.kind().as_str()),
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
    let registration = match &model.body {
        Body::OwnerCommand(command) => match &command.action {
            OwnerAction::RegisterModel { registration } => registration,
            other => {
                return Err(contents(
                    "model",
                    format!("is an owner command of another action ({other:?})"),
                ))
            }
        },
        _ => {
            return Err(contents(
                "model",
                format!("is a {}, not an owner command", model.kind().as_str()),
            ))
        }
    };
    if registration.workload() != submitted.workload {
        return Err(contents(
            "model",
            format!(
                "registers {}, the job's workload is {}",
                registration.workload(),
                submitted.workload
            ),
        ));
    }
    Ok(VerifiedJob {
        job: assigned.job,
        assignment_seq,
        assigned_tick: assignment.header.tick,
        input_hash: submitted.input_hash,
        workload: submitted.workload.clone(),
        job_type: registration.job_type,
        weights: registration.weights.clone(),
    })
}

/// The seq and event of an entry proved under a tree head signed by `ledger_key`.
fn proved(
    which: &'static str,
    doc: &InclusionDoc,
    ledger_key: &PublicKey,
) -> Result<(u64, Event), OrderRefused> {
    let not_in_log = |detail: String| OrderRefused::NotInLog { which, detail };
    verify_inclusion_doc(doc, Some(ledger_key), |_| {})
        .map_err(|err| not_in_log(err.to_string()))?;
    // Verified above: the bytes decode, hash to the proved leaf and carry a valid signature.
    let bytes = BASE64
        .decode(&doc.entry)
        .map_err(|err| not_in_log(format!("entry is not base64: {err}")))?;
    let entry = Entry::decode(&bytes).map_err(|err| not_in_log(err.to_string()))?;
    let event = entry
        .event()
        .map_err(|err| not_in_log(format!("the entry's event does not decode: {err}")))?;
    Ok((entry.seq, event))
}

#[cfg(test)]
mod tests {
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

    /// A real ledger holding a model, a job and its assignment to `node-a`, and the order of it.
    fn order() -> (WorkOrder, SigningKey, tempfile::TempDir) {
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
        let doc = |seq| inclusion_doc(&reader, &public(&ledger_key), 3, seq, 3).expect("proof");
        let order = WorkOrder {
            model: doc(0),
            submission: doc(1),
            assignment: doc(2),
        };
        (order, ledger_key, dir)
    }

    #[test]
    fn an_order_proved_in_the_log_is_run() {
        let (order, ledger_key, _dir) = order();
        let job = verify_order(&order, &public(&ledger_key), "earth.node-a").expect("verified");
        assert_eq!(job.job, 7);
        assert_eq!(job.assignment_seq, 2);
        assert_eq!(job.input_hash, Hash32([9; 32]));
        assert_eq!(job.job_type, JobType::EncodeState);
        assert_eq!(job.workload, "vision@1");
    }

    #[test]
    fn an_order_with_a_wrong_proof_signature_or_tree_head_is_refused() {
        let (order, ledger_key, _dir) = order();
        let key = public(&ledger_key);
        let refused = |change: &dyn Fn(&mut WorkOrder)| {
            let mut changed = order.clone();
            change(&mut changed);
            verify_order(&changed, &key, "earth.node-a")
                .expect_err("refused")
                .to_string()
        };
        // A sibling of the audit path changed: the path leads to another root.
        let wrong_proof = refused(&|o| o.assignment.audit_path[0].0[0] ^= 1);
        assert!(
            wrong_proof.contains("assignment entry is not proved"),
            "{wrong_proof}"
        );
        // The router's signature changed in the entry bytes (and its leaf hash updated to
        // match, as a forger would): the signature no longer verifies.
        let wrong_signature = refused(&|o| {
            let mut bytes = BASE64.decode(&o.assignment.entry).expect("base64");
            bytes[8 + 32 + 32] ^= 1;
            o.assignment.leaf_hash = fabric_events::entry_hash(&bytes);
            o.assignment.entry = BASE64.encode(&bytes);
        });
        assert!(
            wrong_signature.contains("assignment entry is not proved"),
            "{wrong_signature}"
        );
        // A tree head signed by another key over the same root.
        let stranger = derive_signing_key(5, "tests/stranger");
        let wrong_head = refused(&|o| {
            let head = o.submission.tree_head;
            o.submission.tree_head = SignedTreeHead::sign(head.tree_size, head.root, &stranger);
        });
        assert!(
            wrong_head.contains("submission entry is not proved"),
            "{wrong_head}"
        );
        // A head whose signature was tampered with.
        let tampered = refused(&|o| o.model.tree_head.signature.0[0] ^= 1);
        assert!(tampered.contains("model entry is not proved"), "{tampered}");
        // Proved, but for another node.
        let other = verify_order(&order, &key, "earth.node-b").expect_err("not ours");
        assert!(
            other.to_string().contains("not to `earth.node-b`"),
            "{other}"
        );
        // Proved parts put in the wrong places.
        let swapped = refused(&|o| std::mem::swap(&mut o.assignment, &mut o.submission));
        assert!(swapped.contains("not a job_assigned"), "{swapped}");
    }
}
