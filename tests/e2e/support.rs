//! Keys and events shared by the tests.

use fabric_events::{derive_signing_key, Event, Heartbeat, Role, SignedEvent, SigningKey};

/// The ledger key of the tests' ledgers.
pub fn ledger_key() -> SigningKey {
    derive_signing_key(11, "tests/ledger")
}

/// A node key.
pub fn node_key(index: u32) -> SigningKey {
    derive_signing_key(11, &format!("tests/node-{index}"))
}

/// `count` heartbeats signed by a few node keys, nonces from `first_nonce`.
pub fn heartbeats(first_nonce: u64, count: usize) -> Vec<SignedEvent> {
    let keys: Vec<SigningKey> = (0..4).map(node_key).collect();
    (0..count as u64)
        .map(|i| {
            let nonce = first_nonce + i;
            let key = &keys[(nonce % 4) as usize];
            let event = Event::new(
                Role::Node,
                nonce / 10,
                nonce,
                Heartbeat {
                    node: format!("earth.node-{}", nonce % 4),
                    running_jobs: (nonce % 13) as u32,
                },
            );
            SignedEvent::sign(&event, key).expect("heartbeats are small")
        })
        .collect()
}
