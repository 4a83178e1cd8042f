//! Fixed events whose bytes are pinned by the tests (and usable as vectors by verifiers).

use crate::covenant::{ArtifactRecorded, FederatedHead, FederationReceipt};
use crate::event::*;
use crate::model::{JobType, ModelRegistered};
use crate::types::{Hash32, PublicKey, SignatureBytes};

/// A small set of events covering strings, vectors, options, nested enums and byte arrays.
pub fn golden_events() -> Vec<Event> {
    vec![
        Event::new(
            Role::Client,
            7,
            42,
            JobSubmitted {
                job: 1001,
                shard: "earth".to_owned(),
                workload: "finance.settlement".to_owned(),
                skills: vec!["finance".to_owned(), "compliance".to_owned()],
                duration_ticks: 5,
                deadline_tick: 60,
                budget_micros: 2_500_000,
                input_hash: Hash32([0xab; 32]),
            },
        ),
        Event::new(
            Role::Node,
            9,
            3,
            Heartbeat {
                node: "mars.gpu-helion".to_owned(),
                running_jobs: 17,
            },
        ),
        Event::new(
            Role::Node,
            12,
            4,
            JobReceipt {
                job: 1001,
                node: "mars.gpu-helion".to_owned(),
                outcome: JobOutcome::Completed,
                output_hash: Hash32([0x11; 32]),
                kernel: Some(KernelRef {
                    id: "embed".to_owned(),
                    version: 1,
                    adapter: "llvmpipe".to_owned(),
                    input_hash: Hash32([0x12; 32]),
                }),
                started_tick: 8,
                finished_tick: 12,
                execution_us: Some(1_234),
            },
        ),
        Event::new(
            Role::Owner,
            20,
            5,
            OwnerCommand {
                action: OwnerAction::SetQueueBudget {
                    shard: "luna".to_owned(),
                    queue_budget: 3000,
                },
                expiry_tick: 100,
                approvals: vec![Approval {
                    owner: PublicKey([0x22; 32]),
                    signature: SignatureBytes([0x33; 64]),
                }],
            },
        ),
        Event::new(
            Role::Ledger,
            21,
            6,
            Rejected {
                attempt_hash: Hash32([0x44; 32]),
                claimed_author: PublicKey([0x55; 32]),
                reason: RejectReason::ReplayedNonce,
                detail: "nonce 5 seen at seq 12".to_owned(),
            },
        ),
        Event::new(
            Role::Owner,
            22,
            7,
            OwnerCommand {
                action: OwnerAction::RegisterModel {
                    registration: ModelRegistered {
                        model_id: "heat".to_owned(),
                        model_version: "1.0".to_owned(),
                        job_type: JobType::PredictNextState,
                        weights: [1i32.to_le_bytes(), 3u32.to_le_bytes(), 16u32.to_le_bytes()]
                            .concat(),
                    },
                },
                expiry_tick: 120,
                approvals: vec![Approval {
                    owner: PublicKey([0x22; 32]),
                    signature: SignatureBytes([0x33; 64]),
                }],
            },
        ),
        Event::new(
            Role::Owner,
            23,
            8,
            OwnerCommand {
                action: OwnerAction::RegisterRecorder {
                    recorder: "release-bot".to_owned(),
                    key: PublicKey([0x77; 32]),
                },
                expiry_tick: 130,
                approvals: Vec::new(),
            },
        ),
        Event::new(
            Role::Recorder,
            24,
            9,
            ArtifactRecorded {
                name: "release.tar".to_owned(),
                artifact_kind: "deploy".to_owned(),
                size_bytes: 4096,
                blake3: Hash32([0x88; 32]),
                sha256: Hash32([0x99; 32]),
            },
        ),
        Event::new(
            Role::Ledger,
            25,
            10,
            FederationReceipt {
                left: FederatedHead {
                    origin: "fabric/aa".to_owned(),
                    tree_size: 3,
                    root: Hash32([0xaa; 32]),
                    ledger_key: PublicKey([0xab; 32]),
                },
                right: FederatedHead {
                    origin: "fabric/bb".to_owned(),
                    tree_size: 5,
                    root: Hash32([0xbb; 32]),
                    ledger_key: PublicKey([0xbc; 32]),
                },
                merged_root: Hash32([0xcc; 32]),
                left_signature: SignatureBytes([0xdd; 64]),
                right_signature: SignatureBytes([0xee; 64]),
            },
        ),
    ]
}
