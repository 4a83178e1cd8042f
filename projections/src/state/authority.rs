//! The authority table: which key may author which kind, owner multisig, and replay
//! protection. [`State::admit`] applies it before folding an event in; the ledger's sequencer
//! admits every proposed event this way and records a `Rejected` event for each refusal, and
//! every replay of a log (audit, restore, reports) admits each stored event the same way.
//!
//! | kind | role | key |
//! | --- | --- | --- |
//! | `fabric_genesis` | ledger | the ledger key it names; first event only |
//! | `job_submitted` | client | a registered client key |
//! | `job_assigned` | router | the router key of the shard the job is queued in; refused while the shard is paused |
//! | `job_spilled` | router | the router key of `from_shard` |
//! | `job_requeued` | router | the router key of `shard` |
//! | `node_health_changed` | router | the router key of the node's shard |
//! | `heartbeat`, `job_receipt` | node | the key of the node named in the body |
//! | `owner_command` | owner | envelope by the ledger key; M distinct owner approvals |
//! | `checkpoint`, `rejected`, `attestation_mismatch` | ledger | the ledger key |
//! | `federation_receipt`, `federation_fork` | ledger | the ledger key; a receipt names it as one side, both its signatures verify, and it moves the federation with its peer forward |
//! | `artifact_recorded` | recorder | an owner's key, or a registered recorder's |
//! | `shard_registered`, `node_registered` | none | shards and nodes enter by owner command |
//!
//! Keys are the ones in force: an owner command `rotate_key` retires its target's key (it
//! authors nothing from then on and is never registered again) and gives the holder the new
//! one (docs/FORMAT.md §2.3).
//!
//! Nonces: an owner command's nonce must not be held by an unexpired command in the
//! owner-command nonce cache (which keeps each nonce until its command's expiry tick has
//! passed, so it stays bounded; a replay after that is refused as expired). Every other event's nonce must be above the last nonce
//! its author used (a high-water mark per key).

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use fabric_events::{
    verify_signature, Body, Event, FabricGenesis, JobAssigned, Kind, OwnerAction, OwnerCommand,
    PublicKey, RejectReason, Role, SequencerTakeover,
};

use super::{ApplyError, NodeIx, ShardIx, SnapshotError, State};

/// Most ticks between an owner command's tick and its expiry: bounds the nonce cache.
pub const OWNER_COMMAND_LIFETIME_TICKS_MAX: u64 = 1_000_000;

/// Who holds a registered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Holder {
    /// The ledger.
    Ledger,
    /// A client (index into [`Authority::clients`]).
    Client(u32),
    /// The router of a shard.
    Router(ShardIx),
    /// A node.
    Node(NodeIx),
    /// A replica's sequencer key, standing by (the ledger key in force once it takes over).
    Sequencer,
    /// A recorder of artifacts (index into the covenant's recorders).
    Recorder(u32),
}

/// A registered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct KeyRecord {
    /// Who holds it.
    pub holder: Holder,
    /// Retired keys author nothing.
    pub retired: bool,
    /// The highest nonce it used (`None`: none yet).
    pub last_nonce: Option<u64>,
}

/// The authority part of the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Authority {
    pub(super) founded: bool,
    ledger_key: PublicKey,
    owners: Vec<PublicKey>,
    owner_threshold: u32,
    keys: BTreeMap<PublicKey, KeyRecord>,
    clients: Vec<String>,
    /// Owner command nonce → its expiry tick.
    owner_nonces: BTreeMap<u64, u64>,
    /// The tick the nonce cache was last pruned at.
    pruned_tick: u64,
    /// Rejections by reason tag.
    rejections: Vec<u64>,
}

impl Authority {
    /// Whether the log had its genesis.
    pub fn founded(&self) -> bool {
        self.founded
    }

    /// The ledger key named at genesis.
    pub fn ledger_key(&self) -> PublicKey {
        self.ledger_key
    }

    /// The owners' keys.
    pub fn owners(&self) -> &[PublicKey] {
        &self.owners
    }

    /// Approvals an owner command needs.
    pub fn owner_threshold(&self) -> u32 {
        self.owner_threshold
    }

    /// A registered key.
    pub fn key(&self, key: &PublicKey) -> Option<&KeyRecord> {
        self.keys.get(key)
    }

    /// Registered client names, by index.
    pub fn clients(&self) -> &[String] {
        &self.clients
    }

    /// Owner command nonces still cached, with their expiry ticks.
    pub fn owner_nonces(&self) -> &BTreeMap<u64, u64> {
        &self.owner_nonces
    }

    /// `Rejected` events recorded for a reason.
    pub fn rejections(&self, reason: RejectReason) -> u64 {
        self.rejections.get(reason.tag()).copied().unwrap_or(0)
    }

    pub(super) fn found(&mut self, body: &FabricGenesis) {
        self.founded = true;
        self.ledger_key = body.ledger_key;
        self.owners = body.owners.clone();
        self.owner_threshold = body.owner_threshold;
        self.register_key(body.ledger_key, Holder::Ledger);
    }

    pub(super) fn register_key(&mut self, key: PublicKey, holder: Holder) {
        self.keys.insert(
            key,
            KeyRecord {
                holder,
                retired: false,
                last_nonce: None,
            },
        );
    }

    pub(super) fn set_ledger_key(&mut self, key: PublicKey) {
        self.ledger_key = key;
    }

    /// The live key of a registered client.
    pub(super) fn client_key(&self, client: &str) -> Result<PublicKey, ApplyError> {
        let unknown = || ApplyError::Unknown {
            what: "client",
            name: client.to_owned(),
        };
        let ix = self
            .clients
            .iter()
            .position(|name| name == client)
            .ok_or_else(unknown)? as u32;
        self.live_key_of(Holder::Client(ix)).ok_or_else(unknown)
    }

    /// The key of `holder` not retired, if it has one.
    pub(super) fn live_key_of(&self, holder: Holder) -> Option<PublicKey> {
        self.keys
            .iter()
            .find(|(_, record)| record.holder == holder && !record.retired)
            .map(|(key, _)| *key)
    }

    /// Retires `old` and gives its holder `new` (a key no one holds: checked when the command
    /// is authorised).
    pub(super) fn rotate_key(&mut self, old: &PublicKey, new: PublicKey) {
        if let Some(record) = self.keys.get_mut(old) {
            record.retired = true;
            let holder = record.holder;
            self.register_key(new, holder);
        }
    }

    pub(super) fn retire_key(&mut self, key: &PublicKey) {
        if let Some(record) = self.keys.get_mut(key) {
            record.retired = true;
        }
    }

    pub(super) fn register_client(
        &mut self,
        client: &str,
        key: PublicKey,
    ) -> Result<(), ApplyError> {
        if self.clients.iter().any(|name| name == client) {
            return Err(ApplyError::Duplicate {
                what: "client",
                name: client.to_owned(),
            });
        }
        if self.clients.len() >= u32::MAX as usize {
            return Err(ApplyError::Limit("u32::MAX clients"));
        }
        self.register_key(key, Holder::Client(self.clients.len() as u32));
        self.clients.push(client.to_owned());
        Ok(())
    }

    pub(super) fn count_rejection(&mut self, reason: RejectReason) {
        self.count_rejections(reason, 1);
    }

    /// Adds `attempts` refusals for `reason` (a `refusals_counted` event's count).
    pub(super) fn count_rejections(&mut self, reason: RejectReason, attempts: u64) {
        if self.rejections.len() <= reason.tag() {
            self.rejections.resize(RejectReason::ALL.len(), 0);
        }
        self.rejections[reason.tag()] = self.rejections[reason.tag()].saturating_add(attempts);
    }

    /// Checks the indices a decoded snapshot's keys point at.
    pub(super) fn check(
        &self,
        shards: usize,
        nodes: usize,
        recorders: usize,
    ) -> Result<(), SnapshotError> {
        for record in self.keys.values() {
            let (what, index, len) = match record.holder {
                Holder::Ledger | Holder::Sequencer => continue,
                Holder::Client(ix) => ("client key", ix as usize, self.clients.len()),
                Holder::Router(ix) => ("router key", ix as usize, shards),
                Holder::Node(ix) => ("node key", ix as usize, nodes),
                Holder::Recorder(ix) => ("recorder key", ix as usize, recorders),
            };
            super::snapshot::check_index(what, index, len)?;
        }
        if self.rejections.len() > RejectReason::ALL.len() {
            return Err(super::snapshot::inconsistent(format!(
                "{} rejection counters",
                self.rejections.len()
            )));
        }
        Ok(())
    }
}

fn refuse<T>(reason: RejectReason, detail: String) -> Result<T, ApplyError> {
    Err(ApplyError::Refused { reason, detail })
}

/// The refusal of an event its author's key may author, but not for what it is about.
fn refuse_foreign<T>(holder: &str, kind: &str, about: &str) -> Result<T, ApplyError> {
    refuse(
        RejectReason::WrongRole,
        format!("the {holder} may not author {kind} for {about}"),
    )
}

/// Every event but an owner command carries a nonce above its author key's last one.
fn nonce_above_last(
    record: &KeyRecord,
    author: &PublicKey,
    event: &Event,
) -> Result<(), ApplyError> {
    match record.last_nonce {
        Some(last) if event.header.nonce <= last => refuse(
            RejectReason::ReplayedNonce,
            format!(
                "nonce {} of key {author} is not above its last nonce {last}",
                event.header.nonce
            ),
        ),
        _ => Ok(()),
    }
}

/// The role that may author a kind (`None`: no role may).
fn role_of(body: &Body) -> Option<Role> {
    Some(match body {
        Body::FabricGenesis(_)
        | Body::Checkpoint(_)
        | Body::Rejected(_)
        | Body::AttestationMismatch(_)
        | Body::RefusalsCounted(_)
        | Body::SequencerTakeover(_)
        | Body::FederationReceipt(_)
        | Body::FederationFork(_) => Role::Ledger,
        Body::ArtifactRecorded(_) => Role::Recorder,
        Body::JobSubmitted(_) => Role::Client,
        Body::JobAssigned(_)
        | Body::JobSpilled(_)
        | Body::JobRequeued(_)
        | Body::NodeHealthChanged(_) => Role::Router,
        Body::Heartbeat(_) | Body::JobReceipt(_) => Role::Node,
        Body::OwnerCommand(_) => Role::Owner,
        Body::ShardRegistered(_) | Body::NodeRegistered(_) => return None,
    })
}

impl State {
    /// Folds one event in if its author may say it: the authority table, owner approvals and
    /// nonces (see the module's table), then [`State::apply`]. On any error the state is left
    /// exactly as it was, so a refused attempt leaves no trace but the `Rejected` event the
    /// ledger records in its place. A refusal by the authority table is
    /// [`ApplyError::Refused`]; an authorised event that does not fit is any other error.
    pub fn admit(&mut self, author: &PublicKey, event: &Event) -> Result<(), ApplyError> {
        self.authorize(author, event)?;
        let before = (self.tick, self.events_applied, self.anomalies);
        if let Err(error) = self.apply(event) {
            (self.tick, self.events_applied, self.anomalies) = before;
            return Err(error);
        }
        self.commit_nonce(author, event);
        Ok(())
    }

    /// Why the authority table refuses `event` by `author`, if it does. Reads the state only.
    pub fn authorize(&self, author: &PublicKey, event: &Event) -> Result<(), ApplyError> {
        let role = event.header.role;
        let kind = event.kind().as_str();
        if let Body::FabricGenesis(genesis) = &event.body {
            return self.authorize_genesis(author, role, genesis);
        }
        let authority = &self.authority;
        if !authority.founded {
            return refuse(
                RejectReason::UnknownKey,
                format!("{kind} before the fabric's genesis: no key is registered yet"),
            );
        }
        match role_of(&event.body) {
            None => {
                return refuse(
                    RejectReason::WrongRole,
                    format!("no role may author {kind}: shards and nodes enter by owner command"),
                )
            }
            Some(wanted) if wanted != role => {
                return refuse(
                    RejectReason::WrongRole,
                    format!(
                        "{kind} is authored as {}, not as {}",
                        wanted.as_str(),
                        role.as_str()
                    ),
                )
            }
            Some(_) => {}
        }
        if let Body::OwnerCommand(command) = &event.body {
            return self.authorize_owner_command(author, event, command);
        }
        if let Body::SequencerTakeover(takeover) = &event.body {
            return self.authorize_takeover(author, event, takeover);
        }
        if let Body::ArtifactRecorded(record) = &event.body {
            return self.authorize_record(author, event, record);
        }

        let Some(record) = authority.keys.get(author) else {
            return refuse(
                RejectReason::UnknownKey,
                format!("key {author} is not registered"),
            );
        };
        if record.retired {
            return refuse(
                RejectReason::RetiredKey,
                format!("key {author} was retired"),
            );
        }
        // What the ledger signs, only the ledger key in force signs: after a takeover the
        // sequencer before it is a sequencer standing by.
        if role == Role::Ledger && *author != authority.ledger_key {
            return refuse(
                RejectReason::WrongRole,
                format!(
                    "{kind} is signed by {author}, not by the ledger key in force {}",
                    authority.ledger_key
                ),
            );
        }
        self.authorize_holder(record.holder, event)?;
        nonce_above_last(record, author, event)
    }

    fn authorize_genesis(
        &self,
        author: &PublicKey,
        role: Role,
        genesis: &FabricGenesis,
    ) -> Result<(), ApplyError> {
        if self.authority.founded {
            return refuse(
                RejectReason::Invalid,
                "the fabric already has its genesis".to_owned(),
            );
        }
        if role != Role::Ledger {
            return refuse(
                RejectReason::WrongRole,
                format!(
                    "fabric_genesis is authored as ledger, not as {}",
                    role.as_str()
                ),
            );
        }
        if *author != genesis.ledger_key {
            return refuse(
                RejectReason::UnknownKey,
                format!(
                    "genesis names ledger key {} but is signed by {author}",
                    genesis.ledger_key
                ),
            );
        }
        let distinct: BTreeSet<&PublicKey> = genesis.owners.iter().collect();
        if distinct.len() != genesis.owners.len() {
            return refuse(
                RejectReason::Invalid,
                "genesis lists an owner twice".to_owned(),
            );
        }
        let threshold = genesis.owner_threshold as usize;
        if threshold == 0 || threshold > genesis.owners.len() {
            return refuse(
                RejectReason::Invalid,
                format!(
                    "an owner threshold of {threshold} with {} owners",
                    genesis.owners.len()
                ),
            );
        }
        Ok(())
    }

    /// Whether the key's holder may author this body.
    fn authorize_holder(&self, holder: Holder, event: &Event) -> Result<(), ApplyError> {
        let kind = event.kind().as_str();
        let shard_name = |ix: ShardIx| self.shards[ix as usize].name.as_str();
        let node_name = |ix: NodeIx| self.nodes[ix as usize].name.as_str();
        let foreign = |holder: &str, about: &str| refuse_foreign(holder, kind, about);
        match (holder, &event.body) {
            (
                Holder::Ledger | Holder::Sequencer,
                Body::Checkpoint(_)
                | Body::Rejected(_)
                | Body::AttestationMismatch(_)
                | Body::RefusalsCounted(_),
            ) => Ok(()),
            (Holder::Ledger | Holder::Sequencer, Body::FederationReceipt(receipt)) => {
                self.authorize_receipt(receipt)
            }
            (Holder::Ledger | Holder::Sequencer, Body::FederationFork(fork)) => {
                self.authorize_fork(fork)
            }
            (Holder::Client(_), Body::JobSubmitted(_)) => Ok(()),
            (Holder::Router(shard), Body::JobAssigned(body)) => {
                self.authorize_assignment(shard, body)
            }
            (Holder::Router(shard), Body::JobSpilled(body)) => {
                let name = shard_name(shard);
                if body.from_shard == name {
                    Ok(())
                } else {
                    foreign(
                        &format!("router of shard `{name}`"),
                        &format!("shard `{}`", body.from_shard),
                    )
                }
            }
            (Holder::Router(shard), Body::JobRequeued(body)) => {
                let name = shard_name(shard);
                if body.shard == name {
                    Ok(())
                } else {
                    foreign(
                        &format!("router of shard `{name}`"),
                        &format!("shard `{}`", body.shard),
                    )
                }
            }
            (Holder::Router(shard), Body::NodeHealthChanged(body)) => {
                match self.node_ix(&body.node) {
                    Some(node) if self.nodes[node as usize].region != shard => foreign(
                        &format!("router of shard `{}`", shard_name(shard)),
                        &format!("node `{}` of another shard", body.node),
                    ),
                    _ => Ok(()),
                }
            }
            (Holder::Node(node), Body::Heartbeat(body)) if body.node == node_name(node) => Ok(()),
            (Holder::Node(node), Body::JobReceipt(body)) if body.node == node_name(node) => Ok(()),
            (Holder::Node(node), Body::Heartbeat(_) | Body::JobReceipt(_)) => foreign(
                &format!("key of node `{}`", node_name(node)),
                "another node",
            ),
            (holder, _) => {
                let holder = match holder {
                    Holder::Ledger => "ledger key".to_owned(),
                    Holder::Sequencer => "sequencer key".to_owned(),
                    Holder::Client(ix) => {
                        format!("key of client `{}`", self.authority.clients[ix as usize])
                    }
                    Holder::Router(ix) => format!("router key of shard `{}`", shard_name(ix)),
                    Holder::Node(ix) => format!("key of node `{}`", node_name(ix)),
                    Holder::Recorder(ix) => {
                        format!("key of recorder `{}`", self.covenant.recorders[ix as usize])
                    }
                };
                refuse(
                    RejectReason::WrongRole,
                    format!("the {holder} may not author {kind}"),
                )
            }
        }
    }

    /// A router may assign only jobs queued in its own shard, and not while it is paused.
    fn authorize_assignment(&self, shard: ShardIx, body: &JobAssigned) -> Result<(), ApplyError> {
        let name = self.shards[shard as usize].name.as_str();
        let foreign =
            |holder: &str, about: &str| refuse_foreign(holder, Kind::JobAssigned.as_str(), about);
        if body.shard != name {
            return foreign(
                &format!("router of shard `{name}`"),
                &format!("shard `{}`", body.shard),
            );
        }
        if let Some(job) = self.job_ix(body.job) {
            let job = &self.jobs[job as usize];
            if job.shard != shard {
                return foreign(
                    &format!("router of shard `{name}`"),
                    &format!("job {}, queued in another shard", body.job),
                );
            }
        }
        if self.shards[shard as usize].paused {
            return refuse(
                RejectReason::ShardPaused,
                format!("shard `{name}` is paused: job {} stays queued", body.job),
            );
        }
        Ok(())
    }

    /// Whether a sequencer may take the log over: signed by a registered sequencer key (or
    /// the genesis ledger key) not retired and not in force already, naming itself, opening
    /// the next term, with a nonce above its last.
    fn authorize_takeover(
        &self,
        author: &PublicKey,
        event: &Event,
        takeover: &SequencerTakeover,
    ) -> Result<(), ApplyError> {
        let authority = &self.authority;
        let record = match authority.keys.get(author) {
            Some(record) if matches!(record.holder, Holder::Sequencer | Holder::Ledger) => record,
            _ => {
                return refuse(
                    RejectReason::UnknownKey,
                    format!("key {author} is no registered sequencer"),
                )
            }
        };
        if record.retired {
            return refuse(
                RejectReason::RetiredKey,
                format!("sequencer key {author} was retired"),
            );
        }
        if takeover.sequencer != *author {
            return refuse(
                RejectReason::Invalid,
                format!(
                    "a takeover names its own author, not {} (signed by {author})",
                    takeover.sequencer
                ),
            );
        }
        if *author == authority.ledger_key {
            return refuse(
                RejectReason::Invalid,
                format!("{author} is the ledger key in force already"),
            );
        }
        let next = self.sequencing.term + 1;
        if takeover.term != next {
            return refuse(
                RejectReason::Invalid,
                format!("a takeover opens term {next}, not {}", takeover.term),
            );
        }
        nonce_above_last(record, author, event)
    }

    /// Whether an owner command may be folded in: enveloped by the ledger key, not expired nor
    /// too long-lived, its nonce not in use, approved by enough owners, registering no key
    /// that is held already.
    fn authorize_owner_command(
        &self,
        author: &PublicKey,
        event: &Event,
        command: &OwnerCommand,
    ) -> Result<(), ApplyError> {
        let authority = &self.authority;
        let (tick, nonce) = (event.header.tick, event.header.nonce);
        if *author != authority.ledger_key {
            if authority
                .keys
                .get(author)
                .is_some_and(|record| record.retired && record.holder == Holder::Ledger)
            {
                return refuse(
                    RejectReason::RetiredKey,
                    format!(
                        "an owner command's envelope is signed by the retired ledger key {author}"
                    ),
                );
            }
            return refuse(
                RejectReason::UnknownKey,
                format!("an owner command's envelope is signed by the ledger key, not by {author}"),
            );
        }
        if tick > command.expiry_tick {
            return refuse(
                RejectReason::ExpiredNonce,
                format!(
                    "command {nonce} expired at tick {} (now tick {tick})",
                    command.expiry_tick
                ),
            );
        }
        if command.expiry_tick - tick > OWNER_COMMAND_LIFETIME_TICKS_MAX {
            return refuse(
                RejectReason::Invalid,
                format!(
                    "command {nonce} expires {} ticks from now, more than {OWNER_COMMAND_LIFETIME_TICKS_MAX}",
                    command.expiry_tick - tick
                ),
            );
        }
        // A cached nonce counts until its command's expiry; after that a replay of it is
        // refused as expired, so the cache may forget it (pruning happens lazily).
        if let Some(expiry) = authority.owner_nonces.get(&nonce) {
            if *expiry >= tick {
                return refuse(
                    RejectReason::ReplayedNonce,
                    format!("owner command nonce {nonce} was used before (by a command valid until tick {expiry})"),
                );
            }
        }
        self.check_owner_approvals(command, nonce)?;
        self.check_new_key(&command.action)
    }

    /// The approvals of an owner command: by distinct owners, each signature valid over the
    /// command, at least the owner threshold of them.
    fn check_owner_approvals(&self, command: &OwnerCommand, nonce: u64) -> Result<(), ApplyError> {
        let authority = &self.authority;
        let mut signers = BTreeSet::new();
        for (index, approval) in command.approvals.iter().enumerate() {
            if !authority.owners.contains(&approval.owner) {
                return refuse(
                    RejectReason::UnknownKey,
                    format!(
                        "approval {index} is by {}, which is not an owner",
                        approval.owner
                    ),
                );
            }
            if !signers.insert(approval.owner) {
                return refuse(
                    RejectReason::DuplicateOwnerSigner,
                    format!("owner {} approves twice", approval.owner),
                );
            }
        }
        let message = command.approval_message(nonce);
        for (index, approval) in command.approvals.iter().enumerate() {
            if verify_signature(&approval.owner, &approval.signature, &message).is_err() {
                return refuse(
                    RejectReason::BadSignature,
                    format!(
                        "approval {index} by owner {} does not verify over command {nonce}",
                        approval.owner
                    ),
                );
            }
        }
        if signers.len() < authority.owner_threshold as usize {
            return refuse(
                RejectReason::TooFewOwnerSignatures,
                format!(
                    "{} owner approvals, {} needed",
                    signers.len(),
                    authority.owner_threshold
                ),
            );
        }
        Ok(())
    }

    /// A registration or a rotation by owner command brings a key no one holds yet, nor ever
    /// held (a retired key stays in the table): one key, one holder.
    fn check_new_key(&self, action: &OwnerAction) -> Result<(), ApplyError> {
        let authority = &self.authority;
        let new_key = match action {
            OwnerAction::RegisterShard { registration } => Some(registration.router_key),
            OwnerAction::RegisterNode { registration } => Some(registration.node_key),
            OwnerAction::RegisterClient { key, .. } => Some(*key),
            OwnerAction::RotateKey { new_key, .. } => Some(*new_key),
            OwnerAction::RegisterSequencer { key } => Some(*key),
            OwnerAction::RegisterRecorder { key, .. } => Some(*key),
            _ => None,
        };
        if let Some(key) = new_key {
            if authority.keys.contains_key(&key) || authority.owners.contains(&key) {
                return refuse(
                    RejectReason::Invalid,
                    format!("key {key} is registered already: one key, one holder"),
                );
            }
        }
        Ok(())
    }

    /// Records the nonce of an admitted event.
    fn commit_nonce(&mut self, author: &PublicKey, event: &Event) {
        let (tick, nonce) = (event.header.tick, event.header.nonce);
        let authority = &mut self.authority;
        if let Body::OwnerCommand(command) = &event.body {
            if tick > authority.pruned_tick {
                // An expired command is refused anyway: its nonce need not be remembered.
                authority.owner_nonces.retain(|_, expiry| *expiry >= tick);
                authority.pruned_tick = tick;
            }
            authority.owner_nonces.insert(nonce, command.expiry_tick);
        } else if matches!(event.body, Body::ArtifactRecorded(_))
            && authority.owners.contains(author)
        {
            self.commit_record_nonce(author, nonce);
        } else if let Some(record) = authority.keys.get_mut(author) {
            record.last_nonce = Some(nonce);
        }
    }
}
