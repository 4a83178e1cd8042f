//! The ledger's verifier in a simulation: re-executes a sampled share of the GPU receipts on
//! the CPU references, with inputs regenerated from the seed, and answers each contradicted
//! one with an `AttestationMismatch` signed by the ledger key, standing in its place.

use std::sync::Arc;

use actix::prelude::*;
use fabric_actors::actors::Proposal;
use fabric_actors::gate::{Attempt, Origin};
use fabric_actors::RunError;
use fabric_events::{
    AttestationMismatch, Event, Hash32, JobReceipt, Role, SignedEvent, SigningKey,
};
use fabric_gpu_kernels::jobs::output_hash;
use fabric_gpu_kernels::Engine;

use crate::workload::Workload;

/// One GPU receipt of a tick's batch, for the verifier.
#[derive(Clone, Debug)]
pub struct ReceiptToVerify {
    /// Its position in the tick's batch.
    pub index: usize,
    /// The receipt.
    pub receipt: JobReceipt,
    /// As the node signed it.
    pub signed: SignedEvent,
}

/// Asks the verifier to re-execute a tick's sampled GPU receipts.
#[derive(Message)]
#[rtype(result = "Result<Vec<(usize, Proposal)>, RunError>")]
pub struct Verify {
    /// The tick.
    pub tick: u64,
    /// The receipts.
    pub receipts: Vec<ReceiptToVerify>,
}

/// The ledger's verifier: re-executes a fraction of GPU receipts on the CPU reference and
/// answers each contradicted one with an `AttestationMismatch` (signed by the ledger key) to
/// stand in its place.
pub struct VerifierActor {
    /// The ledger key.
    pub ledger_key: SigningKey,
    /// The workload (inputs come from it).
    pub workload: Arc<Workload>,
}

impl Actor for VerifierActor {
    type Context = Context<Self>;
}

/// Nonces of the verifier's events within a tick: above the checkpoint's, below the gate's.
const VERIFIER_NONCE_BASE: u64 = 1 << 22;

impl Handler<Verify> for VerifierActor {
    type Result = Result<Vec<(usize, Proposal)>, RunError>;

    fn handle(&mut self, msg: Verify, _: &mut Self::Context) -> Self::Result {
        let mut out = Vec::new();
        for item in msg.receipts {
            let receipt = &item.receipt;
            let (Some(kernel), (_, Some(input))) = (
                &receipt.kernel,
                self.workload.job_with_input(receipt.job, 0),
            ) else {
                continue;
            };
            let expected = Hash32(output_hash(&input.execute(Engine::Cpu)?));
            if expected == receipt.output_hash {
                continue;
            }
            let index = out.len() as u64;
            if index >= VERIFIER_NONCE_BASE {
                return Err(RunError::TooManyEvents { tick: msg.tick });
            }
            let mut evidence = Vec::with_capacity(96 + item.signed.signed.len());
            evidence.extend_from_slice(item.signed.author.as_bytes());
            evidence.extend_from_slice(item.signed.signature.as_bytes());
            evidence.extend_from_slice(&item.signed.signed);
            let event = Event::new(
                Role::Ledger,
                msg.tick,
                (msg.tick << 24) | VERIFIER_NONCE_BASE | index,
                AttestationMismatch {
                    job: receipt.job,
                    node: receipt.node.clone(),
                    kernel: kernel.clone(),
                    expected_output_hash: expected,
                    reported_output_hash: receipt.output_hash,
                    evidence,
                },
            );
            let signed = SignedEvent::sign(&event, &self.ledger_key)?;
            out.push((item.index, Proposal { event, signed }));
        }
        Ok(out)
    }
}

/// Sends the tick's sampled GPU receipts to the verifier and puts each contradicted one's
/// `AttestationMismatch` in its place.
pub(crate) async fn verify_receipts(
    verifier: &Addr<VerifierActor>,
    workload: &Workload,
    verify_ppm: u32,
    tick: u64,
    attempts: &mut [Attempt],
) -> Result<(), RunError> {
    if verify_ppm == 0 {
        return Ok(());
    }
    let receipts: Vec<ReceiptToVerify> = attempts
        .iter()
        .enumerate()
        .filter_map(|(index, attempt)| match &attempt.event.body {
            fabric_events::Body::JobReceipt(receipt)
                if receipt.kernel.is_some()
                    && receipt.outcome == fabric_events::JobOutcome::Completed
                    && workload.verifies(receipt.job, receipt.started_tick, verify_ppm) =>
            {
                Some(ReceiptToVerify {
                    index,
                    receipt: receipt.clone(),
                    signed: attempt.signed.clone(),
                })
            }
            _ => None,
        })
        .collect();
    if receipts.is_empty() {
        return Ok(());
    }
    for (index, proposal) in verifier.send(Verify { tick, receipts }).await?? {
        attempts[index] = Attempt {
            event: proposal.event,
            signed: proposal.signed,
            origin: Origin::Internal,
        };
    }
    Ok(())
}
