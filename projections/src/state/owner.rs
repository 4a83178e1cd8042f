//! The effects of owner commands on the state (pauses, budgets, treaties, registrations,
//! retirements, cancellations and reroutes). Who may issue them is the authority table's
//! business (`authority`); this module only applies an admitted command.

use fabric_events::{JobId, KeyTarget, ModelRegistered, OwnerAction, PublicKey, RetiredQueue};

use super::{ApplyError, ClassIx, Holder, JobIx, JobStatus, Model, ShardIx, State};

impl State {
    /// Applies one admitted owner command. A command that does not fit (an unknown name, a
    /// retired node resumed, a job no longer queued, ...) changes nothing.
    pub(super) fn owner_action(
        &mut self,
        action: &OwnerAction,
        tick: u64,
    ) -> Result<(), ApplyError> {
        match action {
            OwnerAction::PauseAll | OwnerAction::ResumeAll => {
                let paused = matches!(action, OwnerAction::PauseAll);
                for shard in &mut self.shards {
                    shard.paused = paused;
                }
            }
            OwnerAction::PauseShard { shard } | OwnerAction::ResumeShard { shard } => {
                let ix = self.lookup_shard(shard)?;
                self.shards[ix as usize].paused = matches!(action, OwnerAction::PauseShard { .. });
            }
            OwnerAction::SetQueueBudget {
                shard,
                queue_budget,
            } => {
                let ix = self.lookup_shard(shard)?;
                self.shards[ix as usize].queue_budget = *queue_budget;
            }
            OwnerAction::SetLatencyBudget {
                shard,
                latency_budget_ms,
            } => self.set_latency_budget(shard, *latency_budget_ms)?,
            OwnerAction::SetSpillover { shard, targets } => self.set_spillover(shard, targets)?,
            OwnerAction::SetTreaty {
                shard,
                reputation_floor_ppm,
                regions_served,
                node_quota_jobs,
                quota_window_ticks,
            } => self.set_treaty(
                shard,
                *reputation_floor_ppm,
                regions_served,
                *node_quota_jobs,
                *quota_window_ticks,
            )?,
            OwnerAction::RetireShard { shard, queue } => {
                let ix = self.lookup_shard(shard)?;
                self.retire_shard(ix, *queue, tick);
            }
            OwnerAction::DrainNode { node } => {
                let ix = self.lookup_node(node)?;
                self.nodes[ix as usize].draining = true;
            }
            OwnerAction::RetireNode { node } => self.retire_node(node)?,
            OwnerAction::ResumeNode { node } => self.resume_node(node)?,
            OwnerAction::UpdateNode {
                node,
                max_concurrency,
                latency_ms,
                price_micros_per_hour,
            } => self.update_node(node, *max_concurrency, *latency_ms, *price_micros_per_hour)?,
            OwnerAction::RegisterShard { registration } => self.register_shard(registration)?,
            OwnerAction::RegisterNode { registration } => {
                self.register_node(registration, tick)?;
            }
            OwnerAction::RegisterClient { client, key } => {
                self.authority.register_client(client, *key)?;
            }
            OwnerAction::CheckpointNow => self.checkpoint_requested = true,
            OwnerAction::SetCheckpointInterval { interval_ticks } => {
                self.set_checkpoint_interval(*interval_ticks)?;
            }
            OwnerAction::CancelJob { job } => self.cancel_job(*job)?,
            OwnerAction::RerouteJob { job, shard } => self.reroute_job(*job, shard, tick)?,
            OwnerAction::RotateKey { target, new_key } => self.rotate_key(target, *new_key)?,
            OwnerAction::RegisterModel { registration } => {
                self.register_model(registration, tick)?;
            }
            OwnerAction::RegisterSequencer { key } => {
                self.authority.register_key(*key, Holder::Sequencer);
                self.sequencing.keys.push(*key);
            }
            OwnerAction::RetireSequencer { key } => self.retire_sequencer(key)?,
            OwnerAction::RegisterRecorder { recorder, key } => {
                self.register_recorder(recorder, *key)?;
            }
            // A governance payload is the owners' own record; the fabric does not change.
            OwnerAction::Governance { .. } => {}
        }
        Ok(())
    }

    /// A model joins: its id, version and weights must be good (`ModelRegistered::check`),
    /// and `model_id@model_version` not registered yet, since a job's workload must name one
    /// model for good.
    fn register_model(
        &mut self,
        registration: &ModelRegistered,
        tick: u64,
    ) -> Result<(), ApplyError> {
        registration.check().map_err(ApplyError::Conflict)?;
        let workload = registration.workload();
        if self.models.contains_key(&workload) {
            return Err(ApplyError::Duplicate {
                what: "model",
                name: workload,
            });
        }
        let model = Model {
            model_id: registration.model_id.clone(),
            model_version: registration.model_version.clone(),
            job_type: registration.job_type,
            weights_hash: registration.weights_hash(),
            registered_tick: tick,
        };
        self.models.insert(workload, model);
        Ok(())
    }

    /// A shard's new latency budget changes which of its nodes are capable.
    fn set_latency_budget(
        &mut self,
        shard: &str,
        latency_budget_ms: u32,
    ) -> Result<(), ApplyError> {
        let ix = self.lookup_shard(shard)?;
        self.shards[ix as usize].latency_budget_ms = latency_budget_ms;
        self.rebuild_capable(ix);
        Ok(())
    }

    /// A shard's new spillover targets, by name (resolved now and whenever a shard joins).
    fn set_spillover(&mut self, shard: &str, targets: &[String]) -> Result<(), ApplyError> {
        let ix = self.lookup_shard(shard)?;
        self.shards[ix as usize].spillover = targets.to_vec();
        self.resolve_shard_names(ix);
        Ok(())
    }

    /// A shard's new treaty: reputation floor, regions served and node quota.
    fn set_treaty(
        &mut self,
        shard: &str,
        reputation_floor_ppm: u32,
        regions_served: &[String],
        node_quota_jobs: u32,
        quota_window_ticks: u32,
    ) -> Result<(), ApplyError> {
        let ix = self.lookup_shard(shard)?;
        let s = &mut self.shards[ix as usize];
        s.reputation_floor_ppm = reputation_floor_ppm;
        s.regions_served = regions_served.to_vec();
        s.node_quota_jobs = node_quota_jobs;
        s.quota_window_ticks = quota_window_ticks.max(1);
        self.resolve_shard_names(ix);
        self.rebuild_capable(ix);
        Ok(())
    }

    /// A retired node drains for good and its key is retired with it.
    fn retire_node(&mut self, node: &str) -> Result<(), ApplyError> {
        let ix = self.lookup_node(node)?;
        let n = &mut self.nodes[ix as usize];
        n.draining = true;
        n.retired = true;
        let key = n.key;
        self.authority.retire_key(&key);
        Ok(())
    }

    /// Replaces the key of `target` by `new_key`: the old key is retired (it authors nothing
    /// from here on and can never be registered again), the new one gets its holder. A retired
    /// node or shard keeps its retired key: rotating it would bring it back.
    fn rotate_key(&mut self, target: &KeyTarget, new_key: PublicKey) -> Result<(), ApplyError> {
        let old = match target {
            KeyTarget::Ledger => {
                let old = self.authority.ledger_key();
                self.authority.set_ledger_key(new_key);
                old
            }
            KeyTarget::Router { shard } => {
                let ix = self.lookup_shard(shard)?;
                let s = &mut self.shards[ix as usize];
                if s.retired {
                    return Err(ApplyError::Conflict(format!(
                        "shard `{shard}` is retired: its router key is not rotated"
                    )));
                }
                std::mem::replace(&mut s.router_key, new_key)
            }
            KeyTarget::Client { client } => self.authority.client_key(client)?,
            KeyTarget::Recorder { recorder } => self.recorder_key(recorder)?,
            KeyTarget::Node { node } => {
                let ix = self.lookup_node(node)?;
                let n = &mut self.nodes[ix as usize];
                if n.retired {
                    return Err(ApplyError::Conflict(format!(
                        "node `{node}` is retired: its key is not rotated"
                    )));
                }
                std::mem::replace(&mut n.key, new_key)
            }
        };
        self.authority.rotate_key(&old, new_key);
        Ok(())
    }

    /// A sequencer leaves the set; the acting one cannot (another takes over first).
    fn retire_sequencer(&mut self, key: &PublicKey) -> Result<(), ApplyError> {
        if *key == self.authority.ledger_key() {
            return Err(ApplyError::Conflict(format!(
                "{key} is the acting sequencer: another takes over before it leaves"
            )));
        }
        let Some(at) = self.sequencing.keys.iter().position(|held| held == key) else {
            return Err(ApplyError::Conflict(format!(
                "{key} is no registered sequencer standing by"
            )));
        };
        self.sequencing.keys.remove(at);
        self.authority.retire_key(key);
        Ok(())
    }

    /// A drained node takes work again; a retired one cannot.
    fn resume_node(&mut self, node: &str) -> Result<(), ApplyError> {
        let ix = self.lookup_node(node)?;
        if self.nodes[ix as usize].retired {
            return Err(ApplyError::Conflict(format!(
                "node `{node}` is retired and cannot take work again"
            )));
        }
        self.nodes[ix as usize].draining = false;
        Ok(())
    }

    /// A node's new concurrency, latency and price. Jobs already running stay even when the
    /// new max concurrency is below their number; the node takes no more until it is under.
    fn update_node(
        &mut self,
        node: &str,
        max_concurrency: u32,
        latency_ms: u32,
        price_micros_per_hour: u64,
    ) -> Result<(), ApplyError> {
        let ix = self.lookup_node(node)?;
        if max_concurrency == 0 {
            return Err(ApplyError::Conflict(format!(
                "node `{node}` needs a max concurrency of at least 1"
            )));
        }
        let n = &mut self.nodes[ix as usize];
        n.max_concurrency = max_concurrency;
        n.latency_ms = latency_ms;
        n.price_micros_per_hour = price_micros_per_hour;
        let region = n.region;
        self.rebuild_capable(region);
        Ok(())
    }

    /// The owners' checkpoint interval, at least one tick.
    fn set_checkpoint_interval(&mut self, interval_ticks: u32) -> Result<(), ApplyError> {
        if interval_ticks == 0 {
            return Err(ApplyError::Conflict(
                "a checkpoint interval of 0 ticks".to_owned(),
            ));
        }
        self.checkpoint_interval_ticks = interval_ticks;
        Ok(())
    }

    /// Cancels a job that is still queued.
    fn cancel_job(&mut self, job: JobId) -> Result<(), ApplyError> {
        let ix = self.lookup_job(job)?;
        if self.jobs[ix as usize].status != JobStatus::Queued {
            return Err(ApplyError::Conflict(format!(
                "job {job} is not queued, so it cannot be cancelled"
            )));
        }
        self.cancel_queued(ix);
        Ok(())
    }

    /// Moves a queued job to another shard's queue (not counted as a spill).
    fn reroute_job(&mut self, job: JobId, shard: &str, tick: u64) -> Result<(), ApplyError> {
        let ix = self.lookup_job(job)?;
        let to = self.lookup_shard(shard)?;
        if self.jobs[ix as usize].status != JobStatus::Queued {
            return Err(ApplyError::Conflict(format!(
                "job {job} is not queued, so it cannot be rerouted"
            )));
        }
        let (from, class) = (self.jobs[ix as usize].shard, self.jobs[ix as usize].class);
        self.dequeue(ix);
        self.enqueue(ix, to);
        self.compact(from, class);
        self.record(ix, tick);
        Ok(())
    }

    /// Retires a shard: paused for good; its queued jobs spill to the first of its spillover
    /// targets still in service, or are cancelled.
    fn retire_shard(&mut self, shard: ShardIx, queue: RetiredQueue, tick: u64) {
        let s = &mut self.shards[shard as usize];
        s.retired = true;
        s.paused = true;
        let target = match queue {
            RetiredQueue::Spill => self.shards[shard as usize]
                .spillover_ix
                .iter()
                .copied()
                .find(|target| !self.shards[*target as usize].retired),
            RetiredQueue::Cancel => None,
        };
        let classes: Vec<ClassIx> = self.shards[shard as usize]
            .queued_classes()
            .map(|(class, _)| class)
            .collect();
        for class in classes {
            let jobs: Vec<JobIx> = self.queue(shard, class).collect();
            for job in jobs {
                match target {
                    Some(to) => self.spill_queued(job, shard, to, tick),
                    None => self.cancel_queued(job),
                }
            }
        }
        // Nobody spills into a retired shard.
        for other in 0..self.shards.len() {
            self.resolve_shard_names(other as ShardIx);
        }
    }
}
