//! Owner commands submitted offline (`fabric owner submit`): put through the sequencer's gate
//! at the stored log's tick and appended to its ledger, refusals recorded.

use fabric_events::{OwnerCommand, SigningKey};
use fabric_ledger::{AppendError, Ledger};

use crate::fleet::ActorKeys;
use crate::gate::{self, owner_command_attempt, Verdict};
use crate::keyfiles::{self, KeyFileError};
use crate::RunError;

/// Why the commands were not put through the gate or appended.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The state of the stored log.
    #[error(transparent)]
    State(#[from] KeyFileError),
    /// The gate failed (not a refusal: a refusal is a [`Verdict`]).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The ledger refused the batch.
    #[error("could not append the commands")]
    Append(#[source] AppendError),
}

/// What [`submit`] appended.
pub struct Submitted {
    /// The tick the commands were admitted at.
    pub tick: u64,
    /// The seq of the first command's event.
    pub first_seq: u64,
    /// One verdict per command, in order.
    pub verdicts: Vec<Verdict>,
}

/// Puts `commands` (nonce, command) through the gate at the tick of `ledger`'s log and appends
/// what it admits or refuses. Offline, no actor signs: the ledger key alone, and no staged key
/// (a rotation of the ledger, a router or a node key is submitted to `fabric serve`, which
/// holds them).
pub fn submit(
    ledger: &mut Ledger,
    ledger_key: SigningKey,
    commands: &[(u64, OwnerCommand)],
) -> Result<Submitted, SubmitError> {
    let mut state = keyfiles::current_state(ledger)?;
    let tick = state.tick();
    let keys = ActorKeys {
        ledger: ledger_key,
        routers: Vec::new(),
        nodes: Vec::new(),
        clients: Vec::new(),
        staged: Vec::new(),
    };
    let envelope = keys.ledger_secret(&state)?;
    let attempts = commands
        .iter()
        .map(|(nonce, command)| owner_command_attempt(tick, *nonce, command.clone(), envelope))
        .collect::<Result<Vec<_>, _>>()?;
    let admitted = gate::admit(&mut state, tick, attempts, &keys)?;
    let first_seq = ledger.len();
    ledger
        .append(&admitted.signed)
        .map_err(SubmitError::Append)?;
    Ok(Submitted {
        tick,
        first_seq,
        verdicts: admitted.verdicts,
    })
}
