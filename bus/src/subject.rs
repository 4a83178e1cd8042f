//! Where an event is published: `fabric.events.<shard>.<kind>`.
//!
//! The shard is the one the event is about: the shard named in its body (a spill's `from_shard`,
//! an owner command's target), or for node events (heartbeats, receipts, health) the region the
//! node registered in. Events about no shard (checkpoints, rejections, fabric-wide owner
//! commands) and node events of a node not registered go to `global`. The kind is the
//! snake_case name of export lines.

use std::collections::HashMap;

use fabric_events::{Body, Event, KeyTarget, OwnerAction};

/// The first tokens of every subject.
pub const SUBJECT_PREFIX: &str = "fabric.events";
/// The shard token of events about no shard.
pub const GLOBAL: &str = "global";

/// Node name → the region (shard) it registered in, learnt from `node_registered` events.
pub type Regions = HashMap<String, String>;

/// The node an event registers and its region, if it registers one (an owner command, or the
/// bare `node_registered` of older logs).
pub fn registered_node(event: &Event) -> Option<(&str, &str)> {
    match &event.body {
        Body::NodeRegistered(body) => Some((&body.node, &body.region)),
        Body::OwnerCommand(command) => match &command.action {
            OwnerAction::RegisterNode { registration } => {
                Some((&registration.node, &registration.region))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The shard an event is about, if any.
pub fn shard_of<'a>(event: &'a Event, regions: &'a Regions) -> Option<&'a str> {
    let node = |name: &String| regions.get(name).map(String::as_str);
    match &event.body {
        Body::NodeRegistered(body) => Some(&body.region),
        Body::JobSubmitted(body) => Some(&body.shard),
        Body::JobAssigned(body) => Some(&body.shard),
        Body::JobSpilled(body) => Some(&body.from_shard),
        Body::JobRequeued(body) => Some(&body.shard),
        Body::ShardRegistered(body) => Some(&body.shard),
        Body::Heartbeat(body) => node(&body.node),
        Body::NodeHealthChanged(body) => node(&body.node),
        Body::JobReceipt(body) => node(&body.node),
        Body::AttestationMismatch(body) => node(&body.node),
        Body::OwnerCommand(command) => match &command.action {
            OwnerAction::PauseShard { shard }
            | OwnerAction::ResumeShard { shard }
            | OwnerAction::SetQueueBudget { shard, .. }
            | OwnerAction::SetLatencyBudget { shard, .. }
            | OwnerAction::SetSpillover { shard, .. }
            | OwnerAction::RerouteJob { shard, .. }
            | OwnerAction::RetireShard { shard, .. }
            | OwnerAction::SetTreaty { shard, .. }
            | OwnerAction::RotateKey {
                target: KeyTarget::Router { shard },
                ..
            } => Some(shard),
            OwnerAction::RegisterShard { registration } => Some(&registration.shard),
            OwnerAction::RegisterNode { registration } => Some(&registration.region),
            OwnerAction::DrainNode { node: name }
            | OwnerAction::RetireNode { node: name }
            | OwnerAction::ResumeNode { node: name }
            | OwnerAction::UpdateNode { node: name, .. }
            | OwnerAction::RotateKey {
                target: KeyTarget::Node { node: name },
                ..
            } => node(name),
            _ => None,
        },
        Body::Checkpoint(_)
        | Body::Rejected(_)
        | Body::FabricGenesis(_)
        | Body::RefusalsCounted(_)
        | Body::SequencerTakeover(_)
        | Body::FederationReceipt(_)
        | Body::FederationFork(_)
        | Body::ArtifactRecorded(_) => None,
    }
}

/// One subject token from a name: characters NATS gives a meaning in subjects (`.`, `*`, `>`,
/// whitespace) and anything outside printable ASCII become `_`.
fn token(name: &str) -> String {
    let token: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

/// The subject of an event.
pub fn subject(event: &Event, regions: &Regions) -> String {
    let shard = shard_of(event, regions).map_or_else(|| GLOBAL.to_owned(), token);
    format!("{SUBJECT_PREFIX}.{shard}.{}", event.kind().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_events::golden::golden_events;

    #[test]
    fn subjects_name_the_shard_an_event_is_about() {
        let mut regions = Regions::new();
        let events = golden_events();
        let subjects: Vec<String> = events.iter().map(|e| subject(e, &regions)).collect();
        for (event, subject) in events.iter().zip(&subjects) {
            assert!(subject.starts_with("fabric.events."), "{subject}");
            assert!(subject.ends_with(event.kind().as_str()), "{subject}");
            assert_eq!(subject.split('.').count(), 4, "{subject}");
        }
        let heartbeat = events
            .iter()
            .find(|e| matches!(e.body, Body::Heartbeat(_)))
            .expect("a golden heartbeat");
        assert_eq!(
            subject(heartbeat, &regions),
            "fabric.events.global.heartbeat"
        );
        if let Body::Heartbeat(body) = &heartbeat.body {
            regions.insert(body.node.clone(), "mars".to_owned());
        }
        assert_eq!(subject(heartbeat, &regions), "fabric.events.mars.heartbeat");
        let rotation = |target: KeyTarget| {
            let command = fabric_events::OwnerCommand {
                action: OwnerAction::RotateKey {
                    target,
                    new_key: fabric_events::PublicKey([5; 32]),
                },
                expiry_tick: 1,
                approvals: Vec::new(),
            };
            let event = Event::new(fabric_events::Role::Owner, 1, 1, command);
            subject(&event, &regions)
        };
        let node = KeyTarget::Node {
            node: match &heartbeat.body {
                Body::Heartbeat(body) => body.node.clone(),
                _ => String::new(),
            },
        };
        assert_eq!(rotation(node), "fabric.events.mars.owner_command");
        let router = KeyTarget::Router {
            shard: "luna".to_owned(),
        };
        assert_eq!(rotation(router), "fabric.events.luna.owner_command");
        assert_eq!(
            rotation(KeyTarget::Ledger),
            "fabric.events.global.owner_command"
        );
        assert_eq!(token("a.b*c>d e"), "a_b_c_d_e");
        assert_eq!(token(""), "_");
    }
}
