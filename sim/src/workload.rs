//! The simulated world's randomness: which jobs arrive at a tick, when nodes go silent, how a
//! run ends on a node, and the generated nodes of a scaled-out world. Every draw is a pure
//! function of the seed and of what it is about (a tick, a job id, a node and an epoch), made
//! with ChaCha on a stream of its own, so a run is reproducible and can continue from any tick.

use fabric_events::{Hash32, JobId, JobSubmitted};
use fabric_gpu_kernels::jobs::{JobInput, JobKernel};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use fabric_actors::world::{FailureSpec, JobKindSpec, NodeSpec, World};

const PPM: u64 = 1_000_000;

/// The ChaCha key of one kind of draw (`purpose`) under a seed. Deriving it costs a BLAKE3
/// derivation, so each holder derives its keys once and opens a stream per draw.
#[derive(Clone, Debug)]
struct StreamKey([u8; 32]);

impl StreamKey {
    fn new(seed: u64, purpose: &str) -> Self {
        let mut key_material = Vec::with_capacity(8 + purpose.len());
        key_material.extend_from_slice(&seed.to_le_bytes());
        key_material.extend_from_slice(purpose.as_bytes());
        Self(blake3::derive_key(
            "fabric 2026-11 simulation stream v1",
            &key_material,
        ))
    }

    /// The draws about one thing (a job, a node and epoch, …): stream `stream` of the key.
    fn rng(&self, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::from_seed(self.0);
        rng.set_stream(stream);
        rng
    }
}

/// A uniform draw in `0..bound` (`bound` > 0), without modulo bias worth noticing for the
/// bounds used here (all far below 2^32).
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(bound)) >> 64) as u64
}

/// One job as the workload generates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedJob {
    /// The submission.
    pub submission: JobSubmitted,
    /// Index of its kind in the workload.
    pub kind: usize,
    /// The 32 bytes its input is made from. A CPU job's `input_hash` is these bytes; a GPU
    /// job's input is generated from them (`fabric_gpu_kernels::jobs`) and its `input_hash` is
    /// the hash of that input.
    pub input_seed: [u8; 32],
}

/// Which jobs arrive when.
#[derive(Clone, Debug)]
pub struct Workload {
    job_key: StreamKey,
    outcome_key: StreamKey,
    byzantine_key: StreamKey,
    verify_key: StreamKey,
    kernels: Vec<Option<JobKernel>>,
    jobs_total: u64,
    arrivals_per_tick: u64,
    kinds: Vec<JobKindSpec>,
    cumulative_weights: Vec<u64>,
    shards: Vec<String>,
}

impl Workload {
    /// The workload of `world` for `jobs_total` jobs under `seed`. The arrival rate follows
    /// the world's capacity: `load_percent` of what its nodes can finish per tick.
    pub fn new(world: &World, seed: u64, jobs_total: u64) -> Self {
        let mut total = 0u64;
        let cumulative_weights = world
            .workload
            .kinds
            .iter()
            .map(|kind| {
                total += u64::from(kind.weight);
                total
            })
            .collect();
        Self {
            job_key: StreamKey::new(seed, "workload/job"),
            outcome_key: StreamKey::new(seed, "workload/outcome"),
            byzantine_key: StreamKey::new(seed, "workload/byzantine"),
            verify_key: StreamKey::new(seed, "workload/verify"),
            kernels: world
                .workload
                .kinds
                .iter()
                .map(|kind| kind.kernel.as_deref().and_then(JobKernel::from_id))
                .collect(),
            jobs_total,
            arrivals_per_tick: arrivals_per_tick(world),
            kinds: world.workload.kinds.clone(),
            cumulative_weights,
            shards: world
                .shards
                .iter()
                .map(|shard| shard.name.clone())
                .collect(),
        }
    }

    /// Jobs submitted per tick (the last arrival tick may have fewer).
    pub fn arrivals_per_tick(&self) -> u64 {
        self.arrivals_per_tick
    }

    /// Jobs of the whole run.
    pub fn jobs_total(&self) -> u64 {
        self.jobs_total
    }

    /// The last tick at which jobs arrive (arrivals start at tick 1).
    pub fn last_arrival_tick(&self) -> u64 {
        self.jobs_total.div_ceil(self.arrivals_per_tick).max(1)
    }

    /// Job ids arriving at `tick`: ids are 1-based and consecutive.
    pub fn ids_at(&self, tick: u64) -> std::ops::Range<JobId> {
        if tick == 0 {
            return 1..1;
        }
        let first = ((tick - 1) * self.arrivals_per_tick).min(self.jobs_total);
        let end = (tick * self.arrivals_per_tick).min(self.jobs_total);
        first + 1..end + 1
    }

    /// The job with id `id` (a pure function of the seed and the id), submitted at `tick`.
    pub fn job(&self, id: JobId, tick: u64) -> GeneratedJob {
        self.job_with_input(id, tick).0
    }

    /// [`Workload::job`] with its GPU input (`None` for a CPU job), generated once for both
    /// the job's `input_hash` and its run.
    pub fn job_with_input(&self, id: JobId, tick: u64) -> (GeneratedJob, Option<JobInput>) {
        self.finish(self.draw(id, tick))
    }

    /// The kernel of a GPU job's kind (`None`: a CPU job).
    pub fn kernel(&self, job: &GeneratedJob) -> Option<JobKernel> {
        self.kernels.get(job.kind).copied().flatten()
    }

    /// A GPU job's `input_hash` is its generated input's hash.
    fn finish(&self, mut job: GeneratedJob) -> (GeneratedJob, Option<JobInput>) {
        let input = self
            .kernel(&job)
            .map(|kernel| JobInput::generate(kernel, &job.input_seed));
        if let Some(input) = &input {
            job.submission.input_hash = Hash32(input.hash());
        }
        (job, input)
    }

    /// Whether a byzantine node corrupts the output of `job`'s run started at `started_tick`,
    /// at a rate of `rate_ppm`.
    pub fn corrupts(&self, job: JobId, started_tick: u64, rate_ppm: u32) -> bool {
        let mut rng = self.byzantine_key.rng(job);
        rng.set_word_pos(u128::from(started_tick) * 16);
        below(&mut rng, PPM) < u64::from(rate_ppm)
    }

    /// Whether the verifier re-executes `job`'s run started at `started_tick`, verifying a
    /// fraction of `fraction_ppm`.
    pub fn verifies(&self, job: JobId, started_tick: u64, fraction_ppm: u32) -> bool {
        let mut rng = self.verify_key.rng(job);
        rng.set_word_pos(u128::from(started_tick) * 16);
        below(&mut rng, PPM) < u64::from(fraction_ppm)
    }

    /// The draws of job `id` without its GPU input (which only its own shard's intake and
    /// its node need to generate).
    fn draw(&self, id: JobId, tick: u64) -> GeneratedJob {
        let mut rng = self.job_key.rng(id);
        let total_weight = self.cumulative_weights.last().copied().unwrap_or(0).max(1);
        let pick = below(&mut rng, total_weight);
        let kind_ix = self
            .cumulative_weights
            .partition_point(|cumulative| *cumulative <= pick);
        let kind_ix = kind_ix.min(self.kinds.len().saturating_sub(1));
        let kind = &self.kinds[kind_ix];
        let span = u64::from(
            kind.duration_ticks_max
                .saturating_sub(kind.duration_ticks_min),
        ) + 1;
        let duration_ticks = kind.duration_ticks_min.max(1) + below(&mut rng, span) as u32;
        let mut input = [0u8; 32];
        rng.fill_bytes(&mut input);
        GeneratedJob {
            submission: JobSubmitted {
                job: id,
                shard: kind.shard.clone(),
                workload: kind.name.clone(),
                skills: kind.skills.clone(),
                duration_ticks,
                deadline_tick: tick
                    + u64::from(kind.deadline_slack_ticks)
                    + u64::from(duration_ticks),
                budget_micros: kind.budget_micros,
                input_hash: Hash32(input),
            },
            kind: kind_ix,
            input_seed: input,
        }
    }

    /// The jobs submitted to `shard` at `tick`, in id order.
    pub fn arrivals(&self, tick: u64, shard: &str) -> Vec<GeneratedJob> {
        self.ids_at(tick)
            .map(|id| self.draw(id, tick))
            .filter(|job| job.submission.shard == shard)
            .map(|job| self.finish(job).0)
            .collect()
    }

    /// Whether a run of `job` fails on its node at its `attempt` (1-based).
    pub fn run_fails(&self, job: &GeneratedJob, attempt: u32) -> bool {
        let failure_ppm = u64::from(self.kinds[job.kind].failure_ppm);
        let mut rng = self.outcome_key.rng(job.submission.job);
        rng.set_word_pos(u128::from(attempt) * 16);
        below(&mut rng, PPM) < failure_ppm
    }

    /// The shard names, in index order.
    pub fn shards(&self) -> &[String] {
        &self.shards
    }
}

/// `load_percent` of the jobs the world's nodes finish per tick. A job holds its slot for its
/// duration plus the tick in which its receipt frees it.
pub fn arrivals_per_tick(world: &World) -> u64 {
    let slots: u64 = world
        .nodes
        .iter()
        .map(|node| u64::from(node.max_concurrency))
        .sum();
    let weight_total: u64 = world
        .workload
        .kinds
        .iter()
        .map(|kind| u64::from(kind.weight))
        .sum();
    if weight_total == 0 {
        return 1;
    }
    // Mean slot time in hundredths of a tick, weighted by kind.
    let hold_centiticks: u64 = world
        .workload
        .kinds
        .iter()
        .map(|kind| {
            let mean = u64::from(kind.duration_ticks_min + kind.duration_ticks_max) * 50;
            u64::from(kind.weight) * (mean + 100)
        })
        .sum::<u64>()
        / weight_total;
    let rate = slots * u64::from(world.workload.load_percent) / hold_centiticks.max(1);
    rate.max(1)
}

/// When nodes are silent.
#[derive(Clone, Debug)]
pub struct FailureSchedule {
    outage_key: StreamKey,
    spec: FailureSpec,
}

impl FailureSchedule {
    /// The schedule of `spec` under `seed`.
    pub fn new(spec: &FailureSpec, seed: u64) -> Self {
        Self {
            outage_key: StreamKey::new(seed, "failures/outage"),
            spec: spec.clone(),
        }
    }

    /// The outage of `node` that starts in `epoch`, as a tick range, if any.
    pub fn outage(
        &self,
        node: u32,
        heartbeat_interval_ticks: u32,
        epoch: u64,
    ) -> Option<std::ops::Range<u64>> {
        let epoch_ticks = u64::from(self.spec.epoch_ticks.max(1));
        let mut rng = self.outage_key.rng((u64::from(node) << 32) | epoch);
        if below(&mut rng, PPM) >= u64::from(self.spec.outage_ppm) {
            return None;
        }
        let start = epoch * epoch_ticks + below(&mut rng, epoch_ticks);
        let min = u64::from(self.spec.outage_heartbeats_min.max(1));
        let max = u64::from(self.spec.outage_heartbeats_max).max(min);
        let beats = min + below(&mut rng, max - min + 1);
        // Tick 0 is registration: outages start later.
        let start = start.max(1);
        Some(start..start + beats * u64::from(heartbeat_interval_ticks.max(1)))
    }

    /// Whether `node` is silent at `tick`.
    pub fn silent(&self, node: u32, heartbeat_interval_ticks: u32, tick: u64) -> bool {
        let epoch_ticks = u64::from(self.spec.epoch_ticks.max(1));
        let epoch = tick / epoch_ticks;
        // An outage may run past the end of its epoch; look back as far as the longest one.
        let longest = u64::from(self.spec.outage_heartbeats_max.max(1))
            * u64::from(heartbeat_interval_ticks.max(1));
        let first_epoch = tick.saturating_sub(longest) / epoch_ticks;
        (first_epoch..=epoch).any(|e| {
            self.outage(node, heartbeat_interval_ticks, e)
                .is_some_and(|range| range.contains(&tick))
        })
    }
}

/// The configured nodes plus generated ones up to `nodes_total`, spread over the shards by
/// cycling through the configured nodes as templates. Generated nodes get their template's
/// skills and limits with latency and price varied by up to ±10% (drawn from the seed), and
/// keep within their shard's latency budget.
pub fn scale_nodes(world: &World, seed: u64, nodes_total: usize) -> Vec<NodeSpec> {
    let mut nodes = world.nodes.clone();
    let templates = world.nodes.len();
    if templates == 0 {
        return nodes;
    }
    let scale_key = StreamKey::new(seed, "scale/node");
    for index in templates..nodes_total {
        let template = &world.nodes[index % templates];
        let mut rng = scale_key.rng(index as u64);
        let vary = |rng: &mut ChaCha8Rng, value: u64| -> u64 {
            let pct = 90 + below(rng, 21);
            (value * pct / 100).max(1)
        };
        let budget_ms = world
            .shards
            .iter()
            .find(|shard| shard.name == template.region)
            .map_or(u32::MAX, |shard| shard.latency_budget_ms);
        let latency_ms = (vary(&mut rng, u64::from(template.latency_ms)) as u32).min(budget_ms);
        let price = vary(&mut rng, template.price_micros_per_hour);
        nodes.push(NodeSpec {
            name: format!("{}-g{index:06}", template.name),
            latency_ms,
            price_micros_per_hour: price,
            ..template.clone()
        });
    }
    nodes
}
