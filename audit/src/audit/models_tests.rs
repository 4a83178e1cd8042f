//! `--reexecute` on the jobs of registered models, over a real log on disk: a tiny fabric (one
//! shard, one node, one client, one model), one job of the model with its input in the ledger
//! folder's artifact store, and the node's receipt, truthful or lying. The audit of the log
//! passes either way (a lie is admissible); re-execution on the CPU reference catches the lie.

use fabric_events::{
    derive_signing_key, Event, FabricGenesis, Hash32, JobAssigned, JobOutcome, JobReceipt,
    JobSubmitted, JobType, KernelRef, KeyOrigin, ModelRegistered, NodeRegistered, OwnerAction,
    OwnerCommand, PublicKey, Role, ShardRegistered, SignedEvent, SigningKey,
};
use fabric_gpu_kernels::models::ModelJob;
use fabric_gpu_kernels::Engine;
use fabric_ledger::{Ledger, LedgerReader};

use super::ModelRunner;
use super::{audit_ledger, gpu_checks, AuditReport, CallerError, Failure, GpuChecks, Inputs};

fn key(purpose: &str) -> SigningKey {
    derive_signing_key(11, purpose)
}

fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from(&key.verifying_key())
}

/// Model jobs on the kernels' CPU references, as `fabric audit` runs them.
struct CpuModels;

impl ModelRunner for CpuModels {
    fn output(
        &self,
        job_type: JobType,
        weights: &[u8],
        input: &[u8],
    ) -> Result<Vec<u8>, CallerError> {
        let job = ModelJob::from_name(job_type.name()).ok_or("no such job type")?;
        Ok(job.execute(weights, input, Engine::Cpu)?)
    }
}

/// A log with no job whose input is regenerated from a seed.
struct NoSeededJobs;

impl Inputs for NoSeededJobs {
    type Input = ();

    fn input(&self, _job: u64) -> Option<()> {
        None
    }

    fn input_hash(&self, _input: &()) -> Hash32 {
        Hash32::default()
    }

    fn output_hash(&self, _input: &()) -> Result<Hash32, CallerError> {
        Err("no seeded jobs".into())
    }
}

const WORKLOAD: &str = "heat@1";

fn heat_weights() -> Vec<u8> {
    [1i32.to_le_bytes(), 3u32.to_le_bytes(), 16u32.to_le_bytes()].concat()
}

/// A 32×32 grid of i32 LE cells, each its index times 37 (a diffusion has work to do).
fn heat_input() -> Vec<u8> {
    (0..1024i32)
        .flat_map(|cell| (cell * 37).to_le_bytes())
        .collect()
}

fn true_output_hash() -> Hash32 {
    let output = ModelJob::PredictNextState
        .execute(&heat_weights(), &heat_input(), Engine::Cpu)
        .expect("runs");
    Hash32(*blake3::hash(&output).as_bytes())
}

/// The genesis and the owners' registrations of shard `a`, node `a.gpu`, client `acme` and
/// model `heat@1`, each signed by the ledger key.
fn founding(ledger_key: &SigningKey) -> Vec<SignedEvent> {
    let owner = key("owner");
    let (router, node, client) = (key("router a"), key("node a.gpu"), key("client acme"));
    let owner_command = |nonce: u64, action: OwnerAction| {
        let mut command = OwnerCommand {
            action,
            expiry_tick: 100,
            approvals: Vec::new(),
        };
        command.approve(nonce, &owner);
        (
            Role::Owner,
            nonce,
            Event::new(Role::Owner, 1, nonce, command).body,
        )
    };
    let events = vec![
        (
            Role::Ledger,
            0,
            FabricGenesis {
                ledger_key: public(ledger_key),
                owners: vec![public(&owner)],
                owner_threshold: 1,
                key_origin: KeyOrigin::Operator,
            }
            .into(),
        ),
        owner_command(
            1,
            OwnerAction::RegisterShard {
                registration: ShardRegistered {
                    shard: "a".to_owned(),
                    router_key: public(&router),
                    queue_budget: 10,
                    latency_budget_ms: 200,
                    spillover: Vec::new(),
                    specialties: Vec::new(),
                    reputation_floor_ppm: 0,
                    regions_served: vec!["a".to_owned()],
                    node_quota_jobs: 100,
                    quota_window_ticks: 100,
                },
            },
        ),
        owner_command(
            2,
            OwnerAction::RegisterNode {
                registration: NodeRegistered {
                    node: "a.gpu".to_owned(),
                    region: "a".to_owned(),
                    node_key: public(&node),
                    capacity: 1,
                    max_concurrency: 1,
                    heartbeat_interval_ticks: 5,
                    capabilities: vec!["gpu".to_owned()],
                    latency_ms: 10,
                    price_micros_per_hour: 1,
                    reputation_ppm: 900_000,
                },
            },
        ),
        owner_command(
            3,
            OwnerAction::RegisterClient {
                client: "acme".to_owned(),
                key: public(&client),
            },
        ),
        owner_command(
            4,
            OwnerAction::RegisterModel {
                registration: ModelRegistered {
                    model_id: "heat".to_owned(),
                    model_version: "1".to_owned(),
                    job_type: JobType::PredictNextState,
                    weights: heat_weights(),
                },
            },
        ),
    ];
    events
        .into_iter()
        .map(|(role, nonce, body)| {
            let event = Event::new(role, u64::from(role != Role::Ledger), nonce, body);
            SignedEvent::sign(&event, ledger_key).expect("small")
        })
        .collect()
}

/// Writes the fabric's log into `folder` with the node's receipt claiming `output_hash` for
/// the job, and the job's input in the artifacts tree when `store_input`.
fn write_log(folder: &std::path::Path, output_hash: Hash32, store_input: bool) -> PublicKey {
    let ledger_key = key("ledger");
    let (router, node, client) = (key("router a"), key("node a.gpu"), key("client acme"));
    let input_hash = Hash32(*blake3::hash(&heat_input()).as_bytes());
    let mut signed = founding(&ledger_key);
    let by = |author: &SigningKey, role: Role, tick: u64, body: fabric_events::Body| {
        SignedEvent::sign(&Event::new(role, tick, tick, body), author).expect("small")
    };
    signed.push(by(
        &client,
        Role::Client,
        2,
        JobSubmitted {
            job: 7,
            shard: "a".to_owned(),
            workload: WORKLOAD.to_owned(),
            skills: vec!["gpu".to_owned()],
            duration_ticks: 1,
            deadline_tick: 50,
            budget_micros: 1,
            input_hash,
        }
        .into(),
    ));
    signed.push(by(
        &router,
        Role::Router,
        3,
        JobAssigned {
            job: 7,
            shard: "a".to_owned(),
            node: "a.gpu".to_owned(),
        }
        .into(),
    ));
    signed.push(by(
        &node,
        Role::Node,
        4,
        JobReceipt {
            job: 7,
            node: "a.gpu".to_owned(),
            outcome: JobOutcome::Completed,
            output_hash,
            kernel: Some(KernelRef {
                id: "simulate".to_owned(),
                version: 1,
                adapter: "cpu-reference".to_owned(),
                input_hash,
            }),
            started_tick: 3,
            finished_tick: 4,
            execution_us: Some(812),
        }
        .into(),
    ));
    let mut ledger = Ledger::open(folder, ledger_key.clone()).expect("a new ledger");
    if store_input {
        let path = folder.join(fabric_ledger::ARTIFACTS_FILE);
        let (artifacts, _) = fabric_ledger::ArtifactLog::open(&path).expect("artifacts");
        artifacts
            .insert(&input_hash, &heat_input())
            .expect("stored");
        artifacts.sync().expect("synced");
    }
    ledger.append(&signed).expect("appended");
    public(&ledger_key)
}

/// The audit of the log (which must pass), then `--reexecute` over it with every job sampled.
fn reexecute(output_hash: Hash32, store_input: bool) -> (AuditReport, Result<(), Failure>) {
    let folder = tempfile::tempdir().expect("a folder");
    let ledger_key = write_log(folder.path(), output_hash, store_input);
    let reader = LedgerReader::open(folder.path()).expect("opens");
    let mut report =
        audit_ledger(&reader, &ledger_key, "test".to_owned(), 0, &mut |_, _| {}).expect("audits");
    assert!(report.ok, "the log is admissible: {:?}", report.failure);
    assert_eq!(report.events_verified, 8);
    let checks = GpuChecks {
        reexecute: Some(&NoSeededJobs),
        sample: 1.0,
        hasher: None,
        models: Some(&CpuModels),
    };
    let size = reader.len().expect("size");
    let result = gpu_checks(&reader, size, &checks, &mut report);
    (report, result)
}

#[test]
fn a_truthful_model_receipt_passes_reexecution() {
    let (report, result) = reexecute(true_output_hash(), true);
    result.expect("the receipt is the CPU reference's output");
    assert_eq!(report.reexecuted, 1);
}

#[test]
fn a_lying_model_receipt_is_reported_with_both_hashes() {
    let lie = Hash32([0x5a; 32]);
    let (_, result) = reexecute(lie, true);
    let failure = result.expect_err("the lie is caught");
    assert_eq!((failure.seq, failure.what), (Some(7), "reexecute"));
    assert_eq!(
        failure.detail,
        format!(
            "job 7 of model `{WORKLOAD}`: re-executed on the CPU reference, its output hash is \
             {}, not {lie}",
            true_output_hash()
        )
    );
}

#[test]
fn a_missing_input_artifact_names_the_job_and_the_hash() {
    let (_, result) = reexecute(true_output_hash(), false);
    let failure = result.expect_err("no input to run");
    let input_hash = Hash32(*blake3::hash(&heat_input()).as_bytes());
    assert_eq!((failure.seq, failure.what), (Some(7), "reexecute"));
    assert_eq!(
        failure.detail,
        format!("job 7: its input {input_hash} is not in the ledger folder's artifacts")
    );
}

#[test]
fn without_a_model_runner_a_model_job_is_not_passed_over() {
    let folder = tempfile::tempdir().expect("a folder");
    let ledger_key = write_log(folder.path(), true_output_hash(), true);
    let reader = LedgerReader::open(folder.path()).expect("opens");
    let mut report =
        audit_ledger(&reader, &ledger_key, "test".to_owned(), 0, &mut |_, _| {}).expect("audits");
    let checks = GpuChecks {
        reexecute: Some(&NoSeededJobs),
        sample: 1.0,
        hasher: None,
        models: None,
    };
    let failure = gpu_checks(&reader, 8, &checks, &mut report).expect_err("refused");
    assert!(
        failure.detail.contains("no model runner"),
        "{}",
        failure.detail
    );
}

/// The log's job types are the kernels' model jobs: same names, kernels and sizes.
#[test]
fn job_types_agree_with_the_kernels_model_jobs() {
    assert_eq!(JobType::ALL.len(), ModelJob::ALL.len());
    for (job_type, model_job) in JobType::ALL.into_iter().zip(ModelJob::ALL) {
        assert_eq!(job_type.name(), model_job.name());
        assert_eq!(ModelJob::from_name(job_type.name()), Some(model_job));
        assert_eq!(job_type.kernel_id(), model_job.kernel().id);
        assert_eq!(job_type.kernel_version(), model_job.kernel().version);
        assert_eq!(job_type.input_bytes(), model_job.input_bytes());
        assert_eq!(job_type.weights_bytes(), model_job.weights_bytes());
        assert_eq!(job_type.output_bytes(), model_job.output_bytes());
    }
    // The weights rules agree too, on the edges of predict_next_state's.
    for (shift, steps) in [(31u32, 64u32), (32, 1), (3, 0), (3, 65), (0, 1)] {
        let weights = [1i32.to_le_bytes(), shift.to_le_bytes(), steps.to_le_bytes()].concat();
        assert_eq!(
            JobType::PredictNextState.check_weights(&weights).is_ok(),
            ModelJob::PredictNextState.check_weights(&weights).is_ok(),
            "shift {shift} steps {steps}"
        );
    }
}
