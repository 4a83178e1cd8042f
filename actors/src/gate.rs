//! The sequencer's gate: what may enter the ledger. Every event of a batch is admitted in
//! order against the state the batch builds up ([`State::admit`]: the authority table, owner
//! approvals, nonces, then the fold); each refused attempt is replaced by a `Rejected` event
//! signed by the ledger key, which names the attempt's BLAKE3 hash, its claimed author and the
//! reason. So every refusal is itself on the record, and the stored batch is exactly what the
//! state was folded from.

use fabric_events::{
    codec::encode_event, event_from_signed, verify_signature, Body, Event, Hash32, OwnerCommand,
    PublicKey, RefusalCount, RefusalsCounted, RejectReason, Rejected, Role, SignedEvent,
    SigningKey, VerifyError, MAX_SIGNED_BYTES,
};
use fabric_ledger::RefusalReason;
use fabric_projections::{ApplyError, State};

use crate::fleet::ActorKeys;
use crate::RunError;

/// Longest `detail` a `Rejected` event carries.
pub const REJECT_DETAIL_BYTES_MAX: usize = 512;
/// Authors whose decompressed keys each thread that runs [`check_signed`] remembers.
const CHECK_KEYS_CACHED_MAX: usize = 4_096;

thread_local! {
    /// Decompressing a key costs about a fifth of a verification; a client or node signs
    /// many events with the same one.
    static CHECK_KEYS: std::cell::RefCell<fabric_ledger::KeyCache> =
        std::cell::RefCell::new(fabric_ledger::KeyCache::new(CHECK_KEYS_CACHED_MAX));
}

/// Where an attempt comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The fabric's own actors: a refusal is a bug, and stops the run.
    Internal,
    /// Outside (owner scripts and submissions, requests): a refusal is recorded.
    External,
}

/// One attempt to append, with its decoded event.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The event.
    pub event: Event,
    /// Its signed form.
    pub signed: SignedEvent,
    /// Where it comes from.
    pub origin: Origin,
}

impl Attempt {
    /// An attempt from outside, whose refusal is recorded.
    pub fn external(event: Event, signed: SignedEvent) -> Self {
        Self {
            event,
            signed,
            origin: Origin::External,
        }
    }
}

/// What became of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted: it is the batch's event at this position.
    Admitted,
    /// Refused: a `Rejected` event stands at this position instead.
    Refused {
        /// Why.
        reason: RejectReason,
        /// What exactly.
        detail: String,
    },
    /// Refused without a valid signature of a registered key: not evidence against anyone,
    /// so only counted, in the tick's `refusals_counted` event at this position.
    Counted {
        /// Why.
        reason: RejectReason,
        /// What exactly.
        detail: String,
    },
}

/// A batch as it will be appended, with the verdict on each attempt (same order).
#[derive(Debug, Default)]
pub struct Admitted {
    /// The events to append, in order.
    pub signed: Vec<SignedEvent>,
    /// The same, decoded.
    pub events: Vec<Event>,
    /// One verdict per attempt.
    pub verdicts: Vec<Verdict>,
}

/// Admits `attempts` in order into `state` (which moves with each admitted event), signing a
/// `Rejected` event with the ledger key in force ([`ActorKeys::ledger_secret`]) at `tick` for
/// each refused external attempt. An internal attempt that is refused stops with
/// [`RunError::Apply`]. A rotation this server could not follow
/// ([`ActorKeys::unstaged_rotation`]) is refused as `invalid` before it applies.
pub fn admit(
    state: &mut State,
    tick: u64,
    attempts: Vec<Attempt>,
    keys: &ActorKeys,
) -> Result<Admitted, RunError> {
    let mut out = Admitted::default();
    for (index, attempt) in attempts.into_iter().enumerate() {
        let author = &attempt.signed.author;
        let admitted = match unstaged_rotation(&attempt.event, keys) {
            // The authority table's refusal comes first; an authorised rotation this server
            // could not follow is refused before it applies.
            Some(detail) => state
                .authorize(author, &attempt.event)
                .and(Err(ApplyError::Refused {
                    reason: RejectReason::Invalid,
                    detail,
                })),
            None => state.admit(author, &attempt.event),
        };
        match admitted {
            Ok(()) => {
                out.signed.push(attempt.signed);
                out.events.push(attempt.event);
                out.verdicts.push(Verdict::Admitted);
            }
            Err(error) if attempt.origin == Origin::Internal => {
                return Err(RunError::Apply {
                    tick,
                    index,
                    kind: attempt.event.kind().as_str(),
                    error,
                });
            }
            Err(error) => {
                let reason = error.reject_reason();
                let detail = describe(&error);
                record_rejection(
                    state,
                    tick,
                    AttemptId::of(&attempt.signed),
                    reason,
                    &detail,
                    keys,
                    &mut out,
                )?;
                out.verdicts.push(Verdict::Refused { reason, detail });
            }
        }
    }
    Ok(out)
}

/// Admits raw signed attempts from outside: each must be within the size limit, decode as a
/// canonical event and carry a valid signature before the authority table even looks at it.
/// Every refusal is recorded.
pub fn admit_signed(
    state: &mut State,
    tick: u64,
    attempts: Vec<SignedEvent>,
    keys: &ActorKeys,
) -> Result<Admitted, RunError> {
    let mut out = Admitted::default();
    for signed in attempts {
        match check_signed(&signed) {
            Ok(event) => {
                let admitted = admit(state, tick, vec![Attempt::external(event, signed)], keys)?;
                out.signed.extend(admitted.signed);
                out.events.extend(admitted.events);
                out.verdicts.extend(admitted.verdicts);
            }
            Err((reason, detail)) => {
                record_rejection(
                    state,
                    tick,
                    AttemptId::of(&signed),
                    reason,
                    &detail,
                    keys,
                    &mut out,
                )?;
                out.verdicts.push(Verdict::Refused { reason, detail });
            }
        }
    }
    Ok(out)
}

/// Why an owner command's rotation cannot be followed by this server, if it cannot.
fn unstaged_rotation(event: &Event, keys: &ActorKeys) -> Option<String> {
    match &event.body {
        Body::OwnerCommand(command) => keys.unstaged_rotation(&command.action),
        _ => None,
    }
}

/// The checks of a raw attempt before the authority table looks at it: within the size limit,
/// a canonical event, a valid signature by a key that is not a small-order point. Pure (no
/// state), so callers may run it on any thread; the refusal's reason and detail go into the
/// `Rejected` event that [`refuse`] records. What verifies is remembered
/// ([`fabric_ledger::SignatureMemo`]): the ledger does not verify it again.
pub fn check_signed(signed: &SignedEvent) -> Result<Event, (RejectReason, String)> {
    let event = check_decoded(signed)?;
    match check_signatures(std::slice::from_ref(&signed)).pop() {
        Some(Some(refusal)) => Err(refusal),
        _ => Ok(event),
    }
}

/// The second half of [`check_signed`] for the items of a batch that hold a decoded attempt
/// (`attempt` says which, and which attempt): their signatures verified together, and `refuse`
/// told of each that fails, with its reason and detail.
pub fn check_signatures_of<T>(
    items: &mut [T],
    attempt: impl Fn(&T) -> Option<&SignedEvent>,
    mut refuse: impl FnMut(&mut T, (RejectReason, String)),
) {
    let (indices, attempts): (Vec<usize>, Vec<&SignedEvent>) = items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| attempt(item).map(|signed| (index, signed)))
        .unzip();
    let verdicts = check_signatures(&attempts);
    for (index, verdict) in indices.into_iter().zip(verdicts) {
        if let Some(refusal) = verdict {
            refuse(&mut items[index], refusal);
        }
    }
}

/// The checks of [`check_signed`] but the signature's: within the size limit and a canonical
/// event. For a caller that verifies the signatures of many attempts together later, with
/// [`check_signatures_of`].
pub fn check_decoded(signed: &SignedEvent) -> Result<Event, (RejectReason, String)> {
    if signed.signed.len() > MAX_SIGNED_BYTES {
        return Err((
            RejectReason::Oversize,
            format!(
                "{} signed bytes, over the limit of {MAX_SIGNED_BYTES}",
                signed.signed.len()
            ),
        ));
    }
    event_from_signed(&signed.signed).map_err(|error| (RejectReason::Malformed, error.to_string()))
}

/// Verifies the signatures of attempts that passed [`check_decoded`], together (ed25519 batch
/// verification; what this process verified before is not verified again): `None` for each
/// good one (now remembered, see [`fabric_ledger::SignatureMemo`]), else why it is refused.
fn check_signatures(attempts: &[&SignedEvent]) -> Vec<Option<(RejectReason, String)>> {
    let refusals = CHECK_KEYS
        .with(|keys| fabric_ledger::verify_and_remember(attempts, &mut keys.borrow_mut()));
    let mut verdicts = vec![None; attempts.len()];
    for refusal in refusals {
        let author = attempts[refusal.index].author;
        verdicts[refusal.index] = Some(match refusal.reason {
            RefusalReason::Malformed(error) => (RejectReason::Malformed, error.to_string()),
            RefusalReason::Signature(VerifyError::WeakKey(_)) => (
                RejectReason::WeakKey,
                format!("key {author} is a small-order point"),
            ),
            RefusalReason::Signature(error) => (RejectReason::BadSignature, error.to_string()),
        });
    }
    verdicts
}

/// Records the refusal of an external attempt that never reached the authority table (see
/// [`check_signed`], or a rule of the caller's): one `Rejected` event signed by the ledger key
/// in force at `tick`, folded into `state`.
pub fn refuse(
    state: &mut State,
    tick: u64,
    attempt: AttemptId,
    reason: RejectReason,
    detail: &str,
    keys: &ActorKeys,
) -> Result<Admitted, RunError> {
    let mut out = Admitted::default();
    record_rejection(state, tick, attempt, reason, detail, keys, &mut out)?;
    out.verdicts.push(Verdict::Refused {
        reason,
        detail: truncate(detail),
    });
    Ok(out)
}

fn describe(error: &ApplyError) -> String {
    match error {
        ApplyError::Refused { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// The next nonce of the ledger key at `tick`: above every nonce it used, and in the tick's
/// range when that is higher (checkpoints take `tick << 24`).
pub fn next_ledger_nonce(state: &State, ledger: &PublicKey, tick: u64) -> u64 {
    let last = state
        .authority()
        .key(ledger)
        .and_then(|record| record.last_nonce);
    let floor = (tick << 24) | (1 << 23);
    match last {
        Some(last) => (last + 1).max(floor),
        None => floor,
    }
}

fn truncate(detail: &str) -> String {
    if detail.len() <= REJECT_DETAIL_BYTES_MAX {
        return detail.to_owned();
    }
    let mut end = REJECT_DETAIL_BYTES_MAX;
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &detail[..end])
}

/// What a `Rejected` event names of the attempt it stands for.
#[derive(Clone, Copy, Debug)]
pub struct AttemptId {
    /// BLAKE3 of the attempt's `signed` bytes (of the approval message, for an owner command
    /// that could not be enveloped).
    pub hash: Hash32,
    /// The key that claims to author it.
    pub claimed_author: PublicKey,
}

impl AttemptId {
    /// The identity of a signed attempt.
    pub fn of(attempt: &SignedEvent) -> Self {
        Self {
            hash: Hash32(*blake3::hash(&attempt.signed).as_bytes()),
            claimed_author: attempt.author,
        }
    }
}

fn record_rejection(
    state: &mut State,
    tick: u64,
    attempt: AttemptId,
    reason: RejectReason,
    detail: &str,
    keys: &ActorKeys,
    out: &mut Admitted,
) -> Result<(), RunError> {
    let rejected = Rejected {
        attempt_hash: attempt.hash,
        claimed_author: attempt.claimed_author,
        reason,
        detail: truncate(detail),
    };
    append_ledger_event(state, tick, rejected, keys, out)
}

/// Appends to `out` an event of the ledger's own at `tick` (a `rejected` or a
/// `refusals_counted`), signed by the ledger key in force and folded into `state`.
fn append_ledger_event(
    state: &mut State,
    tick: u64,
    body: impl Into<Body>,
    keys: &ActorKeys,
    out: &mut Admitted,
) -> Result<(), RunError> {
    let ledger_key = keys.ledger_secret(state)?;
    let ledger = PublicKey::from(&ledger_key.verifying_key());
    let event = Event::new(
        Role::Ledger,
        tick,
        next_ledger_nonce(state, &ledger, tick),
        body,
    );
    // A detail is truncated and counts are one per reason: always under the size limit.
    debug_assert!(encode_event(&event).is_ok());
    let signed = SignedEvent::sign(&event, ledger_key)?;
    state
        .admit(&ledger, &event)
        .map_err(|error| RunError::Apply {
            tick,
            index: out.events.len(),
            kind: event.kind().as_str(),
            error,
        })?;
    out.signed.push(signed);
    out.events.push(event);
    Ok(())
}

/// The ledger's `attestation_mismatch` at `tick`, standing in place of the receipt that
/// re-execution contradicted: admitted (the job is requeued and its node halted), or, when it
/// no longer fits the state (the job left the node meanwhile), its `Rejected` in its place.
pub fn attest(
    state: &mut State,
    tick: u64,
    mismatch: fabric_events::AttestationMismatch,
    keys: &ActorKeys,
) -> Result<Admitted, RunError> {
    ledger_says(state, tick, mismatch.into(), keys)
}

/// Appends what the ledger itself says (a federation receipt, a peer's fork) at `tick`,
/// signed by the ledger key in force; the authority table judges it like any event.
pub fn ledger_says(
    state: &mut State,
    tick: u64,
    body: fabric_events::Body,
    keys: &ActorKeys,
) -> Result<Admitted, RunError> {
    let ledger_key = keys.ledger_secret(state)?;
    let ledger = PublicKey::from(&ledger_key.verifying_key());
    let event = Event::new(
        Role::Ledger,
        tick,
        next_ledger_nonce(state, &ledger, tick),
        body,
    );
    let signed = SignedEvent::sign(&event, ledger_key)?;
    admit(state, tick, vec![Attempt::external(event, signed)], keys)
}

/// An owner command as an attempt to append at `tick`: the approvals are the owners', the
/// envelope is signed by the ledger key that sequences it.
pub fn owner_command_attempt(
    tick: u64,
    nonce: u64,
    command: OwnerCommand,
    ledger_key: &SigningKey,
) -> Result<Attempt, RunError> {
    let event = Event::new(Role::Owner, tick, nonce, command);
    let signed = SignedEvent::sign(&event, ledger_key)?;
    Ok(Attempt::external(event, signed))
}

/// Whether at least one approval of `command` under `nonce` is by an owner of the state and
/// verifies: only then is a refused owner command evidence against someone (its approvers),
/// and recorded as its own `Rejected` event.
pub fn has_owner_approval(state: &State, command: &OwnerCommand, nonce: u64) -> bool {
    let owners = state.authority().owners();
    let message = command.approval_message(nonce);
    command.approvals.iter().any(|approval| {
        owners.contains(&approval.owner)
            && verify_signature(&approval.owner, &approval.signature, &message).is_ok()
    })
}

/// Appends to `out` the ledger's `refusals_counted` event of `tick` with `counts` (by reason
/// tag; zeros are left out), folded into `state`. Placed before the tick's submissions, it
/// also makes them fold at `tick` when their clients signed an earlier one.
pub fn count_refusals(
    state: &mut State,
    tick: u64,
    counts: &[u64; RejectReason::ALL.len()],
    keys: &ActorKeys,
    out: &mut Admitted,
) -> Result<(), RunError> {
    let counts = RejectReason::ALL
        .iter()
        .zip(counts)
        .filter(|(_, attempts)| **attempts > 0)
        .map(|(reason, attempts)| RefusalCount {
            reason: *reason,
            attempts: *attempts,
        })
        .collect();
    append_ledger_event(state, tick, RefusalsCounted { counts }, keys, out)?;
    out.verdicts.push(Verdict::Admitted);
    Ok(())
}

#[cfg(test)]
mod tests {
    use fabric_events::{derive_signing_key, Heartbeat, PublicKey, Role};

    use super::*;

    fn heartbeat(nonce: u64) -> SignedEvent {
        let key = derive_signing_key(7, "gate tests");
        let event = Event::new(
            Role::Node,
            1,
            nonce,
            Heartbeat {
                node: "earth.node-0".to_owned(),
                running_jobs: 0,
            },
        );
        SignedEvent::sign(&event, &key).expect("small")
    }

    /// [`check_signed`] for a batch, as a gateway does it ([`check_decoded`], then
    /// [`check_signatures_of`]), its signatures verified together: one verdict per attempt,
    /// in order.
    fn check_signed_batch(batch: &[SignedEvent]) -> Vec<Result<Event, (RejectReason, String)>> {
        let mut checked: Vec<_> = batch
            .iter()
            .map(|signed| (signed, check_decoded(signed)))
            .collect();
        check_signatures_of(
            &mut checked,
            |(signed, decoded)| decoded.is_ok().then_some(*signed),
            |(_, decoded), refusal| *decoded = Err(refusal),
        );
        checked.into_iter().map(|(_, checked)| checked).collect()
    }

    #[test]
    fn a_batch_gets_the_verdicts_its_attempts_get_one_by_one() {
        let mut bad_signature = heartbeat(2);
        bad_signature.signature.0[5] ^= 1;
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = SignedEvent {
            author: PublicKey(identity),
            ..heartbeat(3)
        };
        let oversize = SignedEvent {
            signed: vec![b'F'; MAX_SIGNED_BYTES + 1],
            ..heartbeat(4)
        };
        let mut malformed = heartbeat(5);
        malformed.signed.push(0);
        let batch = vec![
            heartbeat(1),
            bad_signature,
            weak,
            oversize,
            malformed,
            heartbeat(6),
        ];
        let reasons: Vec<Option<RejectReason>> = check_signed_batch(&batch)
            .into_iter()
            .map(|checked| checked.err().map(|(reason, _)| reason))
            .collect();
        assert_eq!(
            reasons,
            [
                None,
                Some(RejectReason::BadSignature),
                Some(RejectReason::WeakKey),
                Some(RejectReason::Oversize),
                Some(RejectReason::Malformed),
                None
            ]
        );
        for (attempt, batched) in batch.iter().zip(check_signed_batch(&batch)) {
            assert_eq!(check_signed(attempt), batched);
        }
    }
}
