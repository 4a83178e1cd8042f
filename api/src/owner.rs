//! Owner command files (docs/FORMAT.md §10.1): what `fabric owner propose` writes, `fabric
//! owner sign` approves, and `fabric owner submit` and `fabric run --owner-script` read.
//!
//! A file lists commands, each with its nonce, its expiry tick, its approvals and the exact
//! bytes an owner signs (`approval_message_hex`, checked against the command when the file is
//! loaded). [`parse_action`] turns the words of `fabric owner propose` into an action;
//! [`effect`] says in plain words what an executed command did.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fabric_events::{
    JobType, KeyTarget, ModelRegistered, NodeRegistered, OwnerAction, OwnerCommand, PublicKey,
    RetiredQueue, ShardRegistered, MODEL_WEIGHTS_MAX_BYTES,
};
use serde::{Deserialize, Serialize};

/// The commands `fabric owner propose` takes, with their arguments.
pub const COMMANDS_HELP: &str = "The command and its arguments:
  pause-all | resume-all
  pause-shard SHARD | resume-shard SHARD
  set-queue-budget SHARD JOBS | set-latency-budget SHARD MS
  set-spillover SHARD [TARGET...]
  set-treaty SHARD FLOOR_PPM QUOTA_JOBS WINDOW_TICKS [REGION...]
  register-shard JSON (a shard_registered body) | retire-shard SHARD spill|cancel
  register-node JSON (a node_registered body) | update-node NODE MAX_CONCURRENCY LATENCY_MS PRICE_MICROS_PER_HOUR
  drain-node NODE | resume-node NODE | retire-node NODE
  register-client NAME PUBLIC_KEY_HEX
  register-model MODEL_ID VERSION JOB_TYPE WEIGHTS_FILE
    (JOB_TYPE: encode_state, score_sequence or predict_next_state; WEIGHTS_FILE: the raw
    weights, exactly the job type's size)
  rotate-key ledger NEW_KEY | rotate-key router SHARD NEW_KEY
  rotate-key client NAME NEW_KEY | rotate-key node NODE NEW_KEY
  rotate-key recorder NAME NEW_KEY
    (NEW_KEY: a .pub file of `fabric keygen`, or the public key in hex)
  register-sequencer KEY | retire-sequencer KEY
    (KEY: a replica's sequencer key, a .pub file of `fabric keygen` or hex)
  register-recorder NAME KEY
    (KEY: a key that may then record artifacts, a .pub file of `fabric keygen` or hex)
  cancel-job JOB | reroute-job JOB SHARD
  checkpoint-now | set-checkpoint-interval TICKS
  governance PAYLOAD_HEX";

/// A command file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandFile {
    /// What the file is.
    #[serde(default)]
    pub description: String,
    /// The domain every approval message starts with (informational).
    #[serde(default)]
    pub approval_domain: String,
    /// The commands, in submission order.
    pub commands: Vec<FileCommand>,
}

/// One command of a command file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCommand {
    /// The tick `fabric run --owner-script` submits it at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<u64>,
    /// What it is for.
    #[serde(default)]
    pub purpose: String,
    /// Its nonce.
    pub nonce: u64,
    /// The command and its approvals.
    pub command: OwnerCommand,
    /// The bytes each owner signs, hex (checked against the command).
    pub approval_message_hex: String,
}

/// What can go wrong with a command file.
#[derive(Debug, thiserror::Error)]
pub enum CommandFileError {
    /// The file could not be read.
    #[error("could not read the command file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a command file's JSON.
    #[error("{} is not a command file", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A command's approval message is not the one of its command and nonce.
    #[error(
        "{}: command {index} (nonce {nonce}): approval_message_hex is not the message of this \
         command and nonce (was the command edited after it was proposed?)",
        path.display()
    )]
    ApprovalMessage {
        /// The file.
        path: PathBuf,
        /// The command's position.
        index: usize,
        /// Its nonce.
        nonce: u64,
    },
    /// The file (or its temporary file) could not be written.
    #[error("could not write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A command of a run's script has no tick.
    #[error(
        "{}: command {index} (nonce {nonce}) has no `tick`: a run submits each command of its \
         owner script at its tick",
        path.display()
    )]
    NoTick {
        /// The file.
        path: PathBuf,
        /// The command's position.
        index: usize,
        /// Its nonce.
        nonce: u64,
    },
    /// A command of a run's script is at tick 0.
    #[error(
        "{}: command {index}: tick 0 is the fabric's genesis; submit at tick 1 or later",
        path.display()
    )]
    GenesisTick {
        /// The file.
        path: PathBuf,
        /// The command's position.
        index: usize,
    },
}

/// What a new command file says it is.
const DESCRIPTION: &str = "Owner commands. Each owner approves with `fabric owner sign FILE --key KEYFILE` (an ed25519 signature over approval_message_hex, added to command.approvals); `fabric owner submit FILE --data DIR` hands them to the ledger, which executes a command once it carries enough distinct owner approvals.";

impl FileCommand {
    /// A command with no approvals yet.
    pub fn new(tick: Option<u64>, purpose: &str, nonce: u64, command: OwnerCommand) -> Self {
        let approval_message_hex = hex::encode(command.approval_message(nonce));
        Self {
            tick,
            purpose: purpose.to_owned(),
            nonce,
            command,
            approval_message_hex,
        }
    }
}

impl CommandFile {
    /// A file of `commands`.
    pub fn new(commands: Vec<FileCommand>) -> Self {
        Self {
            description: DESCRIPTION.to_owned(),
            approval_domain: String::from_utf8_lossy(OwnerCommand::APPROVAL_DOMAIN).into_owned(),
            commands,
        }
    }

    /// Parses a command file's text and checks it: each approval message must be the
    /// command's. `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CommandFileError> {
        let file: CommandFile =
            serde_json::from_str(text).map_err(|source| CommandFileError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        for (index, command) in file.commands.iter().enumerate() {
            let expected = hex::encode(command.command.approval_message(command.nonce));
            if command.approval_message_hex != expected {
                return Err(CommandFileError::ApprovalMessage {
                    path: path.to_path_buf(),
                    index,
                    nonce: command.nonce,
                });
            }
        }
        Ok(file)
    }

    /// Reads and checks a command file: each approval message must be the command's.
    pub fn load(path: &Path) -> Result<Self, CommandFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| CommandFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Writes the file atomically: to `<path>.tmp`, synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), CommandFileError> {
        let text = serde_json::to_string_pretty(self)?;
        fabric_events::fs::write_atomically(path, text.as_bytes()).map_err(|error| {
            CommandFileError::Write {
                path: error.path,
                source: error.source,
            }
        })
    }

    /// The commands as a run's script, `(tick, nonce, command)` in file order: each needs a
    /// tick of 1 or later. `on_duplicate_nonce` hears of each nonce seen before in the file
    /// (the ledger will refuse the second command with it). `path` names the file in errors.
    pub fn script(
        &self,
        path: &Path,
        mut on_duplicate_nonce: impl FnMut(u64),
    ) -> Result<Vec<(u64, u64, OwnerCommand)>, CommandFileError> {
        let mut nonces = BTreeSet::new();
        let mut script = Vec::with_capacity(self.commands.len());
        for (index, command) in self.commands.iter().enumerate() {
            let Some(tick) = command.tick else {
                return Err(CommandFileError::NoTick {
                    path: path.to_path_buf(),
                    index,
                    nonce: command.nonce,
                });
            };
            if tick == 0 {
                return Err(CommandFileError::GenesisTick {
                    path: path.to_path_buf(),
                    index,
                });
            }
            if !nonces.insert(command.nonce) {
                on_duplicate_nonce(command.nonce);
            }
            script.push((tick, command.nonce, command.command.clone()));
        }
        Ok(script)
    }
}

/// Why the words of `fabric owner propose` are not a command.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No words.
    #[error("name a command, e.g. `pause-shard mars`")]
    NoCommand,
    /// The wrong number of arguments.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// An argument that must be a number is not.
    #[error("{what} must be a non-negative integer, not `{text}`")]
    NotANumber {
        /// The argument's name.
        what: &'static str,
        /// What was given.
        text: String,
    },
    /// A registration that is not the JSON of its body.
    #[error("{command} takes a {body} body as JSON")]
    Json {
        /// The command.
        command: &'static str,
        /// The event kind whose body it takes.
        body: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// `retire-shard`'s queue is neither `spill` nor `cancel`.
    #[error("retire-shard: the queue is `spill` or `cancel`, not `{0}`")]
    RetiredQueue(String),
    /// `register-client`'s key is not a public key in hex.
    #[error("register-client: PUBLIC_KEY_HEX: {0}")]
    PublicKey(fabric_events::hex_serde::HexError),
    /// `rotate-key`'s new key is neither a public key in hex nor a readable `.pub` file.
    #[error("rotate-key: NEW_KEY `{text}` is not a public key in hex ({hex}) nor a public key file ({file})")]
    NewKey {
        /// What was given.
        text: String,
        /// Why it is not hex.
        hex: fabric_events::hex_serde::HexError,
        /// Why it is not a key file.
        file: fabric_events::KeyError,
    },
    /// `rotate-key`'s holder is not one of the four.
    #[error("rotate-key: the holder is `ledger`, `router`, `client` or `node`, not `{0}`")]
    KeyHolder(String),
    /// `governance`'s payload is not hex.
    #[error("governance: PAYLOAD_HEX: {0}")]
    Payload(hex::FromHexError),
    /// `register-model`'s job type is not one of the three.
    #[error(
        "register-model: JOB_TYPE is `encode_state`, `score_sequence` or `predict_next_state`, \
         not `{0}`"
    )]
    JobType(String),
    /// `register-model`'s weights file cannot be read.
    #[error("register-model: could not read the weights file {}", path.display())]
    WeightsFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `register-model`'s weights file is larger than any model's weights.
    #[error(
        "register-model: the weights file {} has more than {MODEL_WEIGHTS_MAX_BYTES} bytes",
        path.display()
    )]
    WeightsTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// `register-model`'s id, version or weights cannot make a model.
    #[error("register-model: {0}")]
    Model(String),
    /// No such command.
    #[error("unknown owner command `{0}`\n{COMMANDS_HELP}")]
    Unknown(String),
}

/// What one group of commands makes of `name` and its arguments: `None` when `name` is not
/// one of the group's.
type ActionParse = Result<Option<OwnerAction>, ActionError>;

fn words(args: &[String], count: usize, usage: &'static str) -> Result<(), ActionError> {
    if args.len() == count {
        Ok(())
    } else {
        Err(ActionError::Usage(usage))
    }
}

fn number<T: std::str::FromStr>(text: &str, what: &'static str) -> Result<T, ActionError> {
    text.parse().map_err(|_| ActionError::NotANumber {
        what,
        text: text.to_owned(),
    })
}

/// The action of `fabric owner propose`'s words: a command's name and its arguments (see
/// [`COMMANDS_HELP`]).
pub fn parse_action(words_in: &[String]) -> Result<OwnerAction, ActionError> {
    let (name, rest) = words_in.split_first().ok_or(ActionError::NoCommand)?;
    let groups: [fn(&str, &[String]) -> ActionParse; 6] = [
        fabric_action,
        shard_action,
        node_action,
        client_job_action,
        rotate_key_action,
        register_model_action,
    ];
    for group in groups {
        if let Some(action) = group(name, rest)? {
            return Ok(action);
        }
    }
    Err(ActionError::Unknown(name.clone()))
}

/// The commands about the whole fabric.
fn fabric_action(name: &str, rest: &[String]) -> ActionParse {
    Ok(Some(match name {
        "pause-all" => {
            words(rest, 0, "pause-all")?;
            OwnerAction::PauseAll
        }
        "resume-all" => {
            words(rest, 0, "resume-all")?;
            OwnerAction::ResumeAll
        }
        "checkpoint-now" => {
            words(rest, 0, "checkpoint-now")?;
            OwnerAction::CheckpointNow
        }
        "set-checkpoint-interval" => {
            words(rest, 1, "set-checkpoint-interval TICKS")?;
            OwnerAction::SetCheckpointInterval {
                interval_ticks: number(&rest[0], "TICKS")?,
            }
        }
        "governance" => {
            words(rest, 1, "governance PAYLOAD_HEX")?;
            OwnerAction::Governance {
                payload: hex::decode(&rest[0]).map_err(ActionError::Payload)?,
            }
        }
        _ => return Ok(None),
    }))
}

/// The commands about one shard.
fn shard_action(name: &str, rest: &[String]) -> ActionParse {
    let shard = || rest[0].clone();
    Ok(Some(match name {
        "pause-shard" => {
            words(rest, 1, "pause-shard SHARD")?;
            OwnerAction::PauseShard { shard: shard() }
        }
        "resume-shard" => {
            words(rest, 1, "resume-shard SHARD")?;
            OwnerAction::ResumeShard { shard: shard() }
        }
        "set-queue-budget" => {
            words(rest, 2, "set-queue-budget SHARD JOBS")?;
            OwnerAction::SetQueueBudget {
                shard: shard(),
                queue_budget: number(&rest[1], "JOBS")?,
            }
        }
        "set-latency-budget" => {
            words(rest, 2, "set-latency-budget SHARD MS")?;
            OwnerAction::SetLatencyBudget {
                shard: shard(),
                latency_budget_ms: number(&rest[1], "MS")?,
            }
        }
        "set-spillover" => {
            if rest.is_empty() {
                return Err(ActionError::Usage("set-spillover SHARD [TARGET...]"));
            }
            OwnerAction::SetSpillover {
                shard: shard(),
                targets: rest[1..].to_vec(),
            }
        }
        "set-treaty" => set_treaty(rest)?,
        "register-shard" => {
            words(rest, 1, "register-shard JSON")?;
            let registration: ShardRegistered =
                serde_json::from_str(&rest[0]).map_err(|source| ActionError::Json {
                    command: "register-shard",
                    body: "shard_registered",
                    source,
                })?;
            OwnerAction::RegisterShard { registration }
        }
        "retire-shard" => {
            words(rest, 2, "retire-shard SHARD spill|cancel")?;
            let queue = match rest[1].as_str() {
                "spill" => RetiredQueue::Spill,
                "cancel" => RetiredQueue::Cancel,
                other => return Err(ActionError::RetiredQueue(other.to_owned())),
            };
            OwnerAction::RetireShard {
                shard: shard(),
                queue,
            }
        }
        _ => return Ok(None),
    }))
}

/// `set-treaty SHARD FLOOR_PPM QUOTA_JOBS WINDOW_TICKS [REGION...]`.
fn set_treaty(rest: &[String]) -> Result<OwnerAction, ActionError> {
    if rest.len() < 4 {
        return Err(ActionError::Usage(
            "set-treaty SHARD FLOOR_PPM QUOTA_JOBS WINDOW_TICKS [REGION...]",
        ));
    }
    Ok(OwnerAction::SetTreaty {
        shard: rest[0].clone(),
        reputation_floor_ppm: number(&rest[1], "FLOOR_PPM")?,
        node_quota_jobs: number(&rest[2], "QUOTA_JOBS")?,
        quota_window_ticks: number(&rest[3], "WINDOW_TICKS")?,
        regions_served: rest[4..].to_vec(),
    })
}

/// The commands about one node.
fn node_action(name: &str, rest: &[String]) -> ActionParse {
    let node = || rest[0].clone();
    Ok(Some(match name {
        "register-node" => {
            words(rest, 1, "register-node JSON")?;
            let registration: NodeRegistered =
                serde_json::from_str(&rest[0]).map_err(|source| ActionError::Json {
                    command: "register-node",
                    body: "node_registered",
                    source,
                })?;
            OwnerAction::RegisterNode { registration }
        }
        "update-node" => {
            words(
                rest,
                4,
                "update-node NODE MAX_CONCURRENCY LATENCY_MS PRICE_MICROS_PER_HOUR",
            )?;
            OwnerAction::UpdateNode {
                node: node(),
                max_concurrency: number(&rest[1], "MAX_CONCURRENCY")?,
                latency_ms: number(&rest[2], "LATENCY_MS")?,
                price_micros_per_hour: number(&rest[3], "PRICE_MICROS_PER_HOUR")?,
            }
        }
        "drain-node" => {
            words(rest, 1, "drain-node NODE")?;
            OwnerAction::DrainNode { node: node() }
        }
        "resume-node" => {
            words(rest, 1, "resume-node NODE")?;
            OwnerAction::ResumeNode { node: node() }
        }
        "retire-node" => {
            words(rest, 1, "retire-node NODE")?;
            OwnerAction::RetireNode { node: node() }
        }
        _ => return Ok(None),
    }))
}

/// The commands about one client or one job.
fn client_job_action(name: &str, rest: &[String]) -> ActionParse {
    Ok(Some(match name {
        "register-client" => {
            words(rest, 2, "register-client NAME PUBLIC_KEY_HEX")?;
            let key = PublicKey::from_hex(&rest[1]).map_err(ActionError::PublicKey)?;
            OwnerAction::RegisterClient {
                client: rest[0].clone(),
                key,
            }
        }
        "register-recorder" => {
            words(rest, 2, "register-recorder NAME KEY")?;
            OwnerAction::RegisterRecorder {
                recorder: rest[0].clone(),
                key: new_key(&rest[1])?,
            }
        }
        "register-sequencer" => {
            words(rest, 1, "register-sequencer KEY")?;
            OwnerAction::RegisterSequencer {
                key: new_key(&rest[0])?,
            }
        }
        "retire-sequencer" => {
            words(rest, 1, "retire-sequencer KEY")?;
            OwnerAction::RetireSequencer {
                key: new_key(&rest[0])?,
            }
        }
        "cancel-job" => {
            words(rest, 1, "cancel-job JOB")?;
            OwnerAction::CancelJob {
                job: number(&rest[0], "JOB")?,
            }
        }
        "reroute-job" => {
            words(rest, 2, "reroute-job JOB SHARD")?;
            OwnerAction::RerouteJob {
                job: number(&rest[0], "JOB")?,
                shard: rest[1].clone(),
            }
        }
        _ => return Ok(None),
    }))
}

/// `rotate-key ledger NEW_KEY | router SHARD NEW_KEY | client NAME NEW_KEY | node NODE NEW_KEY`.
fn rotate_key_action(name: &str, rest: &[String]) -> ActionParse {
    const USAGE: &str =
        "rotate-key ledger NEW_KEY | rotate-key router|client|node|recorder NAME NEW_KEY";
    if name != "rotate-key" {
        return Ok(None);
    }
    let (holder, rest) = rest.split_first().ok_or(ActionError::Usage(USAGE))?;
    let (target, key) = match (holder.as_str(), rest) {
        ("ledger", [key]) => (KeyTarget::Ledger, key),
        ("router", [shard, key]) => (
            KeyTarget::Router {
                shard: shard.clone(),
            },
            key,
        ),
        ("client", [client, key]) => (
            KeyTarget::Client {
                client: client.clone(),
            },
            key,
        ),
        ("node", [node, key]) => (KeyTarget::Node { node: node.clone() }, key),
        ("recorder", [recorder, key]) => (
            KeyTarget::Recorder {
                recorder: recorder.clone(),
            },
            key,
        ),
        ("ledger" | "router" | "client" | "node" | "recorder", _) => {
            return Err(ActionError::Usage(USAGE))
        }
        (other, _) => return Err(ActionError::KeyHolder(other.to_owned())),
    };
    Ok(Some(OwnerAction::RotateKey {
        target,
        new_key: new_key(key)?,
    }))
}

/// `register-model MODEL_ID VERSION JOB_TYPE WEIGHTS_FILE`: the weights are read from the
/// file and checked here, so a proposal that the fold would refuse is not written at all.
fn register_model_action(name: &str, rest: &[String]) -> ActionParse {
    if name != "register-model" {
        return Ok(None);
    }
    words(
        rest,
        4,
        "register-model MODEL_ID VERSION JOB_TYPE WEIGHTS_FILE",
    )?;
    let job_type =
        JobType::from_name(&rest[2]).ok_or_else(|| ActionError::JobType(rest[2].clone()))?;
    let registration = ModelRegistered {
        model_id: rest[0].clone(),
        model_version: rest[1].clone(),
        job_type,
        weights: read_weights(Path::new(&rest[3]))?,
    };
    registration.check().map_err(ActionError::Model)?;
    Ok(Some(OwnerAction::RegisterModel { registration }))
}

/// The bytes of a weights file, refused past [`MODEL_WEIGHTS_MAX_BYTES`] without reading
/// more than one byte over it.
fn read_weights(path: &Path) -> Result<Vec<u8>, ActionError> {
    use std::io::Read;
    let read_error = |source| ActionError::WeightsFile {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut weights = Vec::new();
    file.take(MODEL_WEIGHTS_MAX_BYTES as u64 + 1)
        .read_to_end(&mut weights)
        .map_err(read_error)?;
    if weights.len() > MODEL_WEIGHTS_MAX_BYTES {
        return Err(ActionError::WeightsTooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(weights)
}

/// A public key given as hex, or as the path of a `.pub` file of `fabric keygen`.
fn new_key(text: &str) -> Result<PublicKey, ActionError> {
    let hex = match PublicKey::from_hex(text) {
        Ok(key) => return Ok(key),
        Err(hex) => hex,
    };
    match fabric_events::keys::load_public(Path::new(text)) {
        Ok(key) => Ok(PublicKey::from(&key)),
        Err(file) => Err(ActionError::NewKey {
            text: text.to_owned(),
            hex,
            file,
        }),
    }
}

/// A plain description of what an executed command did.
pub fn effect(action: &OwnerAction) -> String {
    match action {
        OwnerAction::PauseAll => "every shard paused: no assignment from here on".to_owned(),
        OwnerAction::ResumeAll => "every shard resumed".to_owned(),
        OwnerAction::PauseShard { shard } => {
            format!("shard `{shard}` paused: no assignment there from here on")
        }
        OwnerAction::ResumeShard { shard } => format!("shard `{shard}` resumed"),
        OwnerAction::SetQueueBudget {
            shard,
            queue_budget,
        } => format!("shard `{shard}` spills above {queue_budget} queued jobs"),
        OwnerAction::SetLatencyBudget {
            shard,
            latency_budget_ms,
        } => format!("shard `{shard}` takes nodes up to {latency_budget_ms} ms"),
        OwnerAction::SetSpillover { shard, targets } => {
            format!("shard `{shard}` spills to {}", targets.join(", "))
        }
        OwnerAction::DrainNode { node } => format!("node `{node}` gets no new jobs"),
        OwnerAction::ResumeNode { node } => format!("node `{node}` takes jobs again"),
        OwnerAction::RetireNode { node } => {
            format!("node `{node}` retired: no new jobs, its key authors nothing")
        }
        OwnerAction::CancelJob { job } => format!("job {job} cancelled"),
        OwnerAction::RerouteJob { job, shard } => format!("job {job} moved to shard `{shard}`"),
        OwnerAction::CheckpointNow => "a checkpoint at the next tick".to_owned(),
        OwnerAction::SetCheckpointInterval { interval_ticks } => {
            format!("a checkpoint every {interval_ticks} ticks")
        }
        OwnerAction::Governance { payload } => {
            format!("governance payload of {} bytes recorded", payload.len())
        }
        OwnerAction::RegisterShard { registration } => {
            format!("shard `{}` registered", registration.shard)
        }
        OwnerAction::RetireShard { shard, queue } => format!(
            "shard `{shard}` retired; its queue {}",
            match queue {
                RetiredQueue::Spill => "spilled to its neighbours",
                RetiredQueue::Cancel => "cancelled",
            }
        ),
        OwnerAction::RegisterNode { registration } => format!(
            "node `{}` registered in shard `{}`",
            registration.node, registration.region
        ),
        OwnerAction::UpdateNode { node, .. } => format!("node `{node}` has new terms"),
        OwnerAction::SetTreaty { shard, .. } => format!("shard `{shard}` has new treaty terms"),
        OwnerAction::RegisterClient { client, .. } => format!("client `{client}` registered"),
        OwnerAction::RotateKey { target, new_key } => {
            format!(
                "the key of {} is now {new_key}; the old key authors nothing",
                key_target(target)
            )
        }
        OwnerAction::RegisterModel { registration } => format!(
            "model `{}` ({}, weights {}) registered",
            registration.workload(),
            registration.job_type,
            registration.weights_hash()
        ),
        OwnerAction::RegisterSequencer { key } => {
            format!("sequencer {key} registered: it may take the log over")
        }
        OwnerAction::RetireSequencer { key } => {
            format!("sequencer {key} retired: it takes the log over no more")
        }
        OwnerAction::RegisterRecorder { recorder, key } => {
            format!("recorder `{recorder}` registered with key {key}: it may record artifacts")
        }
    }
}

/// Whose key a rotation replaces, in words.
pub fn key_target(target: &KeyTarget) -> String {
    match target {
        KeyTarget::Ledger => "the ledger".to_owned(),
        KeyTarget::Router { shard } => format!("the router of shard `{shard}`"),
        KeyTarget::Client { client } => format!("client `{client}`"),
        KeyTarget::Node { node } => format!("node `{node}`"),
        KeyTarget::Recorder { recorder } => format!("recorder `{recorder}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<OwnerAction, ActionError> {
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        parse_action(&words)
    }

    #[test]
    fn every_group_of_commands_parses() {
        assert_eq!(parse("pause-all").unwrap(), OwnerAction::PauseAll);
        assert_eq!(
            parse("set-queue-budget earth 8000").unwrap(),
            OwnerAction::SetQueueBudget {
                shard: "earth".to_owned(),
                queue_budget: 8000
            }
        );
        assert_eq!(
            parse("set-treaty mars 10 20 30 a b").unwrap(),
            OwnerAction::SetTreaty {
                shard: "mars".to_owned(),
                reputation_floor_ppm: 10,
                node_quota_jobs: 20,
                quota_window_ticks: 30,
                regions_served: vec!["a".to_owned(), "b".to_owned()],
            }
        );
        assert_eq!(
            parse("retire-shard luna spill").unwrap(),
            OwnerAction::RetireShard {
                shard: "luna".to_owned(),
                queue: RetiredQueue::Spill
            }
        );
        assert_eq!(
            parse("drain-node n1").unwrap(),
            OwnerAction::DrainNode {
                node: "n1".to_owned()
            }
        );
        assert_eq!(
            parse("reroute-job 5 mars").unwrap(),
            OwnerAction::RerouteJob {
                job: 5,
                shard: "mars".to_owned()
            }
        );
        assert_eq!(
            parse("governance 0a0b").unwrap(),
            OwnerAction::Governance {
                payload: vec![10, 11]
            }
        );
    }

    #[test]
    fn rotate_key_takes_each_holder_and_a_key_as_hex_or_pub_file() {
        let key = fabric_events::derive_signing_key(5, "rotate-key parse test");
        let public = PublicKey::from(&key.verifying_key());
        let hex = public.to_hex();
        assert_eq!(
            parse(&format!("rotate-key ledger {hex}")).unwrap(),
            OwnerAction::RotateKey {
                target: KeyTarget::Ledger,
                new_key: public
            }
        );
        assert_eq!(
            parse(&format!("rotate-key router mars {hex}")).unwrap(),
            OwnerAction::RotateKey {
                target: KeyTarget::Router {
                    shard: "mars".to_owned()
                },
                new_key: public
            }
        );
        assert_eq!(
            parse(&format!("rotate-key client acme {hex}")).unwrap(),
            OwnerAction::RotateKey {
                target: KeyTarget::Client {
                    client: "acme".to_owned()
                },
                new_key: public
            }
        );
        let folder = tempfile::tempdir().unwrap();
        let pub_file = folder.path().join("new.pub");
        fabric_events::keys::save_public(&pub_file, &key.verifying_key()).unwrap();
        assert_eq!(
            parse(&format!("rotate-key node n1 {}", pub_file.display())).unwrap(),
            OwnerAction::RotateKey {
                target: KeyTarget::Node {
                    node: "n1".to_owned()
                },
                new_key: public
            }
        );
        let message = |line: &str| parse(line).unwrap_err().to_string();
        assert!(message("rotate-key ledger").starts_with("usage: rotate-key ledger NEW_KEY"));
        assert!(message("rotate-key router mars").starts_with("usage: rotate-key"));
        assert_eq!(
            message(&format!("rotate-key owner {hex}")),
            "rotate-key: the holder is `ledger`, `router`, `client` or `node`, not `owner`"
        );
        assert!(message("rotate-key ledger /no/such.pub")
            .starts_with("rotate-key: NEW_KEY `/no/such.pub` is not a public key in hex"));
    }

    #[test]
    fn bad_words_say_what_is_wrong() {
        let message = |line: &str| parse(line).unwrap_err().to_string();
        assert_eq!(message(""), "name a command, e.g. `pause-shard mars`");
        assert_eq!(message("pause-shard"), "usage: pause-shard SHARD");
        assert_eq!(
            message("set-spillover"),
            "usage: set-spillover SHARD [TARGET...]"
        );
        assert_eq!(
            message("cancel-job x"),
            "JOB must be a non-negative integer, not `x`"
        );
        assert_eq!(
            message("retire-shard luna keep"),
            "retire-shard: the queue is `spill` or `cancel`, not `keep`"
        );
        assert!(message("register-client a zz").starts_with("register-client: PUBLIC_KEY_HEX: "));
        assert!(matches!(
            parse("register-node {"),
            Err(ActionError::Json {
                command: "register-node",
                ..
            })
        ));
        assert!(message("fly-away").starts_with("unknown owner command `fly-away`\n"));
    }

    #[test]
    fn a_file_round_trips_and_edits_are_caught() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("commands.json");
        let command = OwnerCommand {
            action: OwnerAction::PauseAll,
            expiry_tick: 100,
            approvals: Vec::new(),
        };
        let file = CommandFile::new(vec![
            FileCommand::new(Some(3), "test", 1, command.clone()),
            FileCommand::new(Some(4), "again", 1, command.clone()),
        ]);
        file.save(&path).unwrap();
        let loaded = CommandFile::load(&path).unwrap();
        assert_eq!(loaded.commands.len(), 2);
        let mut duplicates = Vec::new();
        let script = loaded
            .script(&path, |nonce| duplicates.push(nonce))
            .unwrap();
        assert_eq!(script[0], (3, 1, command.clone()));
        assert_eq!(duplicates, vec![1]);

        let mut edited = file.clone();
        edited.commands[1].nonce = 2;
        let text = serde_json::to_string(&edited).unwrap();
        assert!(matches!(
            CommandFile::parse(&text, &path),
            Err(CommandFileError::ApprovalMessage {
                index: 1,
                nonce: 2,
                ..
            })
        ));
        let untimed = CommandFile::new(vec![FileCommand::new(None, "", 1, command)]);
        assert!(matches!(
            untimed.script(&path, |_| {}),
            Err(CommandFileError::NoTick { index: 0, .. })
        ));
        assert!(matches!(
            CommandFile::load(&folder.path().join("none.json")),
            Err(CommandFileError::Read { .. })
        ));
    }

    #[test]
    fn register_model_reads_and_checks_its_weights_file() {
        let folder = tempfile::tempdir().unwrap();
        let weights_file = folder.path().join("heat.bin");
        let weights = [1i32.to_le_bytes(), 3u32.to_le_bytes(), 16u32.to_le_bytes()].concat();
        std::fs::write(&weights_file, &weights).unwrap();
        let line = |id: &str, job: &str, file: &Path| {
            format!("register-model {id} 1.0 {job} {}", file.display())
        };
        let action = parse(&line("heat", "predict_next_state", &weights_file)).unwrap();
        let expected = ModelRegistered {
            model_id: "heat".to_owned(),
            model_version: "1.0".to_owned(),
            job_type: JobType::PredictNextState,
            weights,
        };
        assert!(effect(&action).starts_with("model `heat@1.0` (predict_next_state, weights "));
        assert_eq!(
            action,
            OwnerAction::RegisterModel {
                registration: expected
            }
        );

        let message = |line: &str| parse(line).unwrap_err().to_string();
        assert_eq!(
            message("register-model heat 1.0 predict_next_state"),
            "usage: register-model MODEL_ID VERSION JOB_TYPE WEIGHTS_FILE"
        );
        assert!(message(&line("heat", "classify", &weights_file)).contains(
            "JOB_TYPE is `encode_state`, `score_sequence` or `predict_next_state`, not `classify`"
        ));
        assert!(message(&line("heat", "encode_state", &weights_file))
            .contains("weights of a encode_state model have 12 bytes, not 1024"));
        assert!(message(&line("Heat", "predict_next_state", &weights_file))
            .contains("the model id `Heat` has the character 'H'"));
        assert!(message(&line(
            "heat",
            "predict_next_state",
            &folder.path().join("none")
        ))
        .starts_with("register-model: could not read the weights file"));
        let big = folder.path().join("big.bin");
        std::fs::write(&big, vec![0u8; MODEL_WEIGHTS_MAX_BYTES + 1]).unwrap();
        assert!(message(&line("heat", "score_sequence", &big)).contains("more than 8192 bytes"));
    }

    #[test]
    fn effects_are_plain_words() {
        assert_eq!(
            effect(&OwnerAction::CancelJob { job: 4 }),
            "job 4 cancelled"
        );
    }
}
