//! `owner-commands-executed.json`: the owner commands of a log.

use fabric_api::owner::effect;
use fabric_audit::{Observer, Step};
use fabric_events::{Body, Event};
use fabric_projections::State;
use serde_json::{json, Value};

/// The owner commands of a log, as `owner-commands-executed.json` lists them: every stored
/// owner command was admitted, so executed.
#[derive(Default)]
pub struct ExecutedCommands {
    commands: Vec<Value>,
}

impl ExecutedCommands {
    /// Sees the stored event at `seq`.
    pub fn see(&mut self, seq: u64, event: &Event) {
        if let Body::OwnerCommand(command) = &event.body {
            self.commands.push(json!({
                "seq": seq,
                "tick": event.header.tick,
                "nonce": event.header.nonce,
                "command": command.action,
                "signers": command.approvals.iter().map(|a| a.owner.to_hex()).collect::<Vec<_>>(),
                "effect": effect(&command.action),
            }));
        }
    }

    /// The report's JSON.
    pub fn to_json(&self) -> Value {
        json!({ "commands": self.commands })
    }
}

impl Observer for ExecutedCommands {
    fn before(&mut self, step: &Step<'_>, _: &State) {
        self.see(step.seq, step.event);
    }
}
