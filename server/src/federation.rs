//! Federation with other fabrics (docs/FORMAT.md §18): `POST /v0/federation/sync` takes this
//! fabric's latest head to a configured peer, and `POST /v0/federation/countersign` is how a
//! peer's sync reaches this fabric. Each side checks that the other's head extends the head
//! it federated last (a consistency proof fetched from the peer itself, at the address the
//! operator configured), signs the receipt of both heads, and appends it; a peer whose head
//! does not extend its last is recorded once (`federation_fork`) and federated with no more.
//!
//! Hostile clients: both routes take only what verifies. A sync names a configured peer (no
//! address comes from the request); a countersign carries a receipt signed by a configured
//! peer's key, over a head of this log. Receipts with one peer are at least
//! [`Federating::interval`] apart and must move forward, so nobody can grow the log faster
//! than the operator chose; one federation operation runs at a time (a second is answered
//! 409 `busy`, never queued).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use fabric_actors::serve::Request;
use fabric_api::http_client::{Client, Target};
use fabric_api::wire::{
    FederationPeerStatus, FederationStatus, FederationSyncRequest, FederationSynced,
};
use fabric_events::{
    Body, FederatedHead, FederationFork, FederationReceipt, Hash32, PublicKey, SignatureBytes,
};
use fabric_ledger::merkle::{verify_consistency, ConsistencyProof};
use fabric_ledger::note::{parse_log_verifier_key, CheckpointNote};
use fabric_projections::state::FederationPeer as PeerState;

use crate::handlers::{error, read_json, read_view, refused, sequence, within_allowance, Shared};

/// How long a peer may take to answer one request.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes of a peer's answer read (a note, a consistency proof with its rotations, a
/// receipt).
const ANSWER_BYTES_MAX: usize = 1 << 20;
/// The most peers a fabric federates with.
pub const PEERS_MAX: usize = 32;
/// The least time between two receipts with one peer, by default.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

/// A fabric this one federates with.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Where it is served.
    pub target: Target,
    /// Its checkpoint origin.
    pub origin: String,
    /// Its ledger key (the key of its checkpoint notes).
    pub key: PublicKey,
    /// For an https:// peer: the CA its certificate must chain to.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Peer {
    /// `URL=VKEY`: the peer's address and its checkpoint verifier key (§17.2), as its
    /// `fabric init --commit` or its `/v0/health` gives it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (target, vkey) = crate::witnesses::address_and_key(text)?;
        let (origin, key) = parse_log_verifier_key(vkey).map_err(|error| error.to_string())?;
        Ok(Self {
            target,
            origin,
            key,
            tls: None,
        })
    }
}

/// The peers and the least time between two receipts with one of them.
#[derive(Clone, Debug)]
pub struct Federating {
    /// The peers.
    pub peers: Vec<Peer>,
    /// The least time between two receipts with one peer.
    pub interval: Duration,
}

impl Default for Federating {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            interval: INTERVAL_DEFAULT,
        }
    }
}

/// The federation's runtime part: its configuration, the one-at-a-time lock, and when each
/// peer last got a receipt from this process.
#[derive(Default)]
pub(crate) struct Federation {
    config: Federating,
    busy: tokio::sync::Mutex<()>,
    last: Mutex<HashMap<String, Instant>>,
}

impl Federation {
    pub(crate) fn new(config: Federating) -> Self {
        Self {
            config,
            busy: Default::default(),
            last: Default::default(),
        }
    }

    fn peer(&self, origin: &str) -> Option<&Peer> {
        self.config.peers.iter().find(|peer| peer.origin == origin)
    }

    /// How long until a receipt with `origin` may be appended (zero: now).
    fn wait(&self, origin: &str) -> Duration {
        let last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        last.get(origin).map_or(Duration::ZERO, |at| {
            self.config.interval.saturating_sub(at.elapsed())
        })
    }

    fn mark(&self, origin: &str) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        last.insert(origin.to_owned(), Instant::now());
    }
}

/// A federation route's refusal: its status, code and message.
struct Refused(StatusCode, &'static str, String);

impl Refused {
    fn response(self) -> HttpResponse {
        let mut answer = error(self.0, self.1, self.2);
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            answer.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
        }
        answer
    }
}

/// This fabric's origin, when it may federate: its genesis is stored and this process holds
/// the secret of the ledger key in force (none on a follower).
fn own_identity(shared: &Shared) -> Option<String> {
    let head = shared.latest_head();
    shared.checkpoints.secret_of(&head.ledger_key)?;
    shared.checkpoints.origin().map(str::to_owned)
}

/// The secret of the ledger key that signed one of this fabric's heads.
fn secret_of(shared: &Shared, key: &PublicKey) -> Result<fabric_events::SigningKey, Refused> {
    shared.checkpoints.secret_of(key).cloned().ok_or_else(|| {
        Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_key",
            format!("this server holds no secret of ledger key {key}, which signed the head"),
        )
    })
}

/// The answer when [`own_identity`] has none: a follower sends the client to the sequencer.
fn no_identity(shared: &Shared, path: &str) -> HttpResponse {
    match shared.following.as_deref() {
        Some(following) => crate::requests::to_sequencer(following, path),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_key",
            "this server holds no secret of the ledger key in force, or has no log yet",
        ),
    }
}

/// `POST /v0/federation/sync`.
pub(crate) async fn sync(
    shared: web::Data<Shared>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    within_allowance(&shared, &request, sync_heard(&shared, &request, payload)).await
}

async fn sync_heard(
    shared: &web::Data<Shared>,
    request: &HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let asked: FederationSyncRequest = match read_json(
        shared,
        request,
        payload,
        "a sync request, {\"peer\": ORIGIN} (docs/FORMAT.md §18.3)",
    )
    .await
    {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let Some(origin) = own_identity(shared) else {
        return no_identity(shared, "/v0/federation/sync");
    };
    let Some(peer) = shared.federation.peer(&asked.peer).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            format!(
                "{:?} is no peer of this fabric (fabric serve --federation-peer URL=VKEY)",
                asked.peer
            ),
        );
    };
    let Ok(_busy) = shared.federation.busy.try_lock() else {
        return busy();
    };
    match sync_with(shared, &origin, &peer).await {
        Ok(synced) => HttpResponse::Ok().json(synced),
        Err(refused) => refused.response(),
    }
}

fn busy() -> HttpResponse {
    error(
        StatusCode::CONFLICT,
        "busy",
        "another federation operation is under way here: try again in a moment",
    )
}

/// One sync with `peer`: its note, checked against the last receipt with it; the receipt
/// signed here, countersigned and appended there, then appended here.
async fn sync_with(
    shared: &web::Data<Shared>,
    origin: &str,
    peer: &Peer,
) -> Result<FederationSynced, Refused> {
    let last = standing(shared, &peer.origin)?;
    let own_head = own_head(shared, origin)?;
    let secret = secret_of(shared, &own_head.ledger_key)?;
    let presented = blocking({
        let peer = peer.clone();
        move || fetch_note(&peer)
    })
    .await?;
    let peer_head = FederatedHead {
        origin: peer.origin.clone(),
        tree_size: presented.tree_size,
        root: presented.root,
        ledger_key: peer.key,
    };
    moves_forward(last.as_ref(), &own_head, &peer_head)?;
    let statement = Statement {
        message: presented.text(),
        signature: own_signature(&presented, peer),
    };
    extends(shared, peer, last.as_ref(), &peer_head, statement).await?;
    let mut receipt = FederationReceipt::unsigned(own_head, peer_head);
    receipt.sign_as(origin, &secret);
    let countersigned = blocking({
        let (peer, receipt) = (peer.clone(), receipt.clone());
        move || countersign_at(&peer, &receipt)
    })
    .await?;
    let seq = append_receipt(shared, &peer.origin, &countersigned.receipt).await?;
    Ok(FederationSynced {
        peer_seq: Some(countersigned.seq),
        receipt: countersigned.receipt,
        seq,
    })
}

/// This fabric's head a receipt names: the one its checkpoint route serves (the latest final
/// head when witnesses must cosign), so a peer that reads its notes is never shown an older
/// head than it federated.
fn own_head(shared: &Shared, origin: &str) -> Result<FederatedHead, Refused> {
    let head = if shared.finality.required {
        let (head, _) = shared.finality.latest().ok_or_else(|| {
            Refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_witnessed",
                "no tree head of this fabric has its witnesses' cosignatures yet".to_owned(),
            )
        })?;
        head
    } else {
        shared.latest_head()
    };
    Ok(FederatedHead {
        origin: origin.to_owned(),
        tree_size: head.tree_size,
        root: head.root,
        ledger_key: head.ledger_key,
    })
}

/// Where this fabric stands with a peer: its last receipt, refused when the peer is forked
/// or the interval has not passed since the last receipt.
fn standing(shared: &Shared, peer: &str) -> Result<Option<PeerState>, Refused> {
    let wait = shared.federation.wait(peer);
    if !wait.is_zero() {
        return Err(Refused(
            StatusCode::TOO_MANY_REQUESTS,
            "too_soon",
            format!(
                "the last receipt with {peer} is younger than the interval ({} ms): try again in {} ms",
                shared.federation.config.interval.as_millis(),
                wait.as_millis()
            ),
        ));
    }
    let last = read_view(shared).covenant.peers.get(peer).cloned();
    if last.as_ref().is_some_and(|last| last.forked) {
        return Err(Refused(
            StatusCode::CONFLICT,
            "peer_forked",
            format!("{peer} presented a head that does not extend its last: it is federated with no more (see its federation_fork event)"),
        ));
    }
    Ok(last)
}

/// The rule of the state (§18.2), said before anything is signed: no size below the last
/// receipt's, one above it.
fn moves_forward(
    last: Option<&PeerState>,
    own: &FederatedHead,
    peer: &FederatedHead,
) -> Result<(), Refused> {
    let Some(last) = last else {
        return Ok(());
    };
    if own.tree_size < last.own_size {
        return Err(Refused(
            StatusCode::CONFLICT,
            "stale_head",
            format!(
                "the receipt's head of this fabric ({}) is older than the last receipt's ({})",
                own.tree_size, last.own_size
            ),
        ));
    }
    if (own.tree_size, peer.tree_size) == (last.own_size, last.peer_size) {
        return Err(Refused(
            StatusCode::CONFLICT,
            "nothing_new",
            format!(
                "neither log grew since the last receipt with {} (sizes {} and {})",
                peer.origin, last.own_size, last.peer_size
            ),
        ));
    }
    Ok(())
}

/// A text the peer's ledger key signed that states a head, and the signature.
struct Statement {
    message: String,
    signature: SignatureBytes,
}

/// Whether the peer's presented head extends the head of the last receipt with it, by a
/// consistency proof fetched from the peer. When it does not, the fork is appended as
/// evidence and the answer is 409 `peer_forked`.
async fn extends(
    shared: &web::Data<Shared>,
    peer: &Peer,
    last: Option<&PeerState>,
    presented: &FederatedHead,
    statement: Statement,
) -> Result<(), Refused> {
    let Some(last) = last.cloned() else {
        return Ok(());
    };
    let judged = blocking({
        let (peer, presented) = (peer.clone(), presented.clone());
        let last = last.clone();
        move || Ok(judge(&peer, &last, &presented))
    })
    .await?;
    let (detail, consistency_path) = match judged {
        Judged::Extends => return Ok(()),
        Judged::Unknown(detail) => {
            return Err(Refused(StatusCode::BAD_GATEWAY, "peer_unreachable", detail))
        }
        Judged::Fork { detail, path } => (detail, path),
    };
    let fork = FederationFork {
        peer_origin: peer.origin.clone(),
        peer_key: peer.key,
        receipt_seq: last.receipt_seq,
        tree_size: presented.tree_size,
        root: presented.root,
        message: statement.message,
        signature: statement.signature,
        consistency_path,
        detail: detail.clone(),
    };
    eprintln!("FORK: federation peer {}: {detail}", peer.origin);
    let ack = sequence(
        shared,
        Request::Ledger {
            body: Box::new(Body::FederationFork(fork)),
        },
    )
    .await;
    let recorded = match ack {
        Ok(ack) if refused(&ack).is_none() => format!("recorded at seq {}", ack.seq),
        _ => "not recorded".to_owned(),
    };
    Err(Refused(
        StatusCode::CONFLICT,
        "peer_forked",
        format!("{}: {detail} (evidence {recorded})", peer.origin),
    ))
}

/// What a consistency check of a presented head found.
enum Judged {
    Extends,
    Fork { detail: String, path: Vec<Hash32> },
    Unknown(String),
}

/// Judges `presented` against the last federated head of `peer`, fetching the path from it.
fn judge(peer: &Peer, last: &PeerState, presented: &FederatedHead) -> Judged {
    let (old, new) = (last.peer_size, presented.tree_size);
    if new < old {
        return Judged::Fork {
            detail: format!("it presents size {new}, below its federated size {old}"),
            path: Vec::new(),
        };
    }
    if new == old {
        return if presented.root == last.peer_root {
            Judged::Extends
        } else {
            Judged::Fork {
                detail: format!(
                    "it presents root {} at size {new}, where it federated root {}",
                    presented.root, last.peer_root
                ),
                path: Vec::new(),
            }
        };
    }
    let path = match fetch_path(peer, old, new) {
        Ok(path) => path,
        Err(PathFailure::NoHead(detail)) => {
            return Judged::Fork {
                detail: format!(
                    "it keeps no signed head of size {old}, which it signed before: {detail}"
                ),
                path: Vec::new(),
            }
        }
        Err(PathFailure::Other(detail)) => return Judged::Unknown(detail),
    };
    let proof = ConsistencyProof {
        old_size: old,
        new_size: new,
        path,
    };
    match verify_consistency(&last.peer_root, &presented.root, &proof) {
        Ok(()) => Judged::Extends,
        Err(failure) => Judged::Fork {
            detail: format!(
                "its head of size {new} does not extend its federated head of size {old}: {failure}"
            ),
            path: proof.path,
        },
    }
}

fn client(peer: &Peer) -> Client {
    let client =
        Client::new(peer.target.clone(), PEER_TIMEOUT).with_response_bytes_max(ANSWER_BYTES_MAX);
    match &peer.tls {
        Some(tls) => client.with_tls(Arc::clone(tls)),
        None => client,
    }
}

/// The peer's latest checkpoint note, verified with its key and origin.
fn fetch_note(peer: &Peer) -> Result<CheckpointNote, Refused> {
    let unreachable = |detail: String| Refused(StatusCode::BAD_GATEWAY, "peer_unreachable", detail);
    let response = client(peer)
        .request("GET", "/v0/checkpoints/latest", None)
        .map_err(|failure| unreachable(format!("{}: {failure}", peer.target)))?;
    if response.status != 200 {
        return Err(unreachable(format!(
            "{} answered {} to GET /v0/checkpoints/latest: {}",
            peer.target,
            response.status,
            response.text()
        )));
    }
    let bad = |detail: String| Refused(StatusCode::BAD_GATEWAY, "bad_peer_note", detail);
    let note = CheckpointNote::parse(&response.text())
        .map_err(|wrong| bad(format!("{}: its checkpoint note: {wrong}", peer.target)))?;
    note.verify(&peer.origin, &peer.key)
        .map_err(|wrong| bad(format!("{}: its checkpoint note: {wrong}", peer.target)))?;
    if note.origin != peer.origin {
        return Err(bad(format!(
            "{}: its note's origin is {}, not {}",
            peer.target, note.origin, peer.origin
        )));
    }
    Ok(note)
}

/// The peer's own signature of its note (verified): the statement a fork's evidence holds.
fn own_signature(note: &CheckpointNote, peer: &Peer) -> SignatureBytes {
    let key_id = fabric_ledger::note::key_id(&peer.origin, &peer.key);
    note.signatures
        .iter()
        .find(|line| line.name == peer.origin && line.key_id == key_id)
        .and_then(|line| <[u8; 64]>::try_from(line.signature.as_slice()).ok())
        .map_or(SignatureBytes([0; 64]), SignatureBytes)
}

/// Why no consistency path came from a peer.
enum PathFailure {
    /// It says it has no signed head at the old size: a log that signed one always keeps it,
    /// so this log is not the one federated.
    NoHead(String),
    /// It could not be asked, or answered something else.
    Other(String),
}

/// The consistency path the peer serves from `old` to `new` entries.
fn fetch_path(peer: &Peer, old: u64, new: u64) -> Result<Vec<Hash32>, PathFailure> {
    let path = format!("/v0/proofs/consistency/{old}/{new}");
    let other = PathFailure::Other;
    let response = client(peer)
        .request("GET", &path, None)
        .map_err(|failure| other(format!("{}: {failure}", peer.target)))?;
    if response.status == 404 {
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        if body["error"]["code"] == "unknown_size" {
            return Err(PathFailure::NoHead(format!(
                "GET {path} answered {}",
                body["error"]["message"]
            )));
        }
    }
    if response.status != 200 {
        return Err(other(format!(
            "{} answered {} to GET {path}: {}",
            peer.target,
            response.status,
            response.text()
        )));
    }
    let doc: fabric_audit::proof::ConsistencyDoc =
        serde_json::from_slice(&response.body).map_err(|wrong| {
            other(format!(
                "{}: GET {path}: not a consistency proof: {wrong}",
                peer.target
            ))
        })?;
    if (doc.old_size, doc.new_size) != (old, new) {
        return Err(other(format!(
            "{}: GET {path} answered the proof from {} to {}",
            peer.target, doc.old_size, doc.new_size
        )));
    }
    Ok(doc.path)
}

/// Asks the peer to countersign and append `receipt`; its answer must be the same receipt
/// with its valid signature.
fn countersign_at(peer: &Peer, receipt: &FederationReceipt) -> Result<FederationSynced, Refused> {
    let failed = |detail: String| Refused(StatusCode::BAD_GATEWAY, "peer_refused", detail);
    let body = serde_json::to_vec(receipt).map_err(|wrong| failed(wrong.to_string()))?;
    let response = client(peer)
        .request(
            "POST",
            "/v0/federation/countersign",
            Some(("application/json", &body)),
        )
        .map_err(|failure| failed(format!("{}: {failure}", peer.target)))?;
    if response.status != 200 {
        return Err(failed(format!(
            "{} refused to countersign ({}): {}",
            peer.target,
            response.status,
            response.text()
        )));
    }
    let answer: FederationSynced = serde_json::from_slice(&response.body).map_err(|wrong| {
        failed(format!(
            "{}: not a countersigned receipt: {wrong}",
            peer.target
        ))
    })?;
    // The peer's signature is the one field its answer may change.
    let mut as_sent = answer.receipt.clone();
    if receipt.left.origin == peer.origin {
        as_sent.left_signature = receipt.left_signature;
    } else {
        as_sent.right_signature = receipt.right_signature;
    }
    if as_sent != *receipt {
        return Err(failed(format!(
            "{} answered another receipt than the one it was asked to countersign",
            peer.target
        )));
    }
    answer
        .receipt
        .verify()
        .map_err(|wrong| failed(format!("{}: its countersignature: {wrong}", peer.target)))?;
    Ok(answer)
}

/// Appends a receipt both sides signed; the interval with the peer starts again.
async fn append_receipt(
    shared: &Shared,
    peer: &str,
    receipt: &FederationReceipt,
) -> Result<u64, Refused> {
    let ack = sequence(
        shared,
        Request::Ledger {
            body: Box::new(Body::FederationReceipt(receipt.clone())),
        },
    )
    .await
    .map_err(|_| {
        Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_appended",
            "the ledger did not take the receipt (the fabric is stopping, or its intake is full)"
                .to_owned(),
        )
    })?;
    if let Some(refusal) = refused(&ack) {
        return Err(Refused(
            StatusCode::CONFLICT,
            "receipt_refused",
            format!(
                "the ledger refused the receipt (recorded as rejected at seq {}): {}",
                ack.seq,
                refusal.message()
            ),
        ));
    }
    shared.federation.mark(peer);
    Ok(ack.seq)
}

/// Runs blocking peer requests off the HTTP worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Refused> + Send + 'static,
) -> Result<T, Refused> {
    web::block(work).await.unwrap_or_else(|_| {
        Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is stopping".to_owned(),
        ))
    })
}

/// `POST /v0/federation/countersign`.
pub(crate) async fn countersign(
    shared: web::Data<Shared>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    within_allowance(
        &shared,
        &request,
        countersign_heard(&shared, &request, payload),
    )
    .await
}

async fn countersign_heard(
    shared: &web::Data<Shared>,
    request: &HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let receipt: FederationReceipt = match read_json(
        shared,
        request,
        payload,
        "a federation receipt signed by its proposer (docs/FORMAT.md §18.1)",
    )
    .await
    {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let Some(origin) = own_identity(shared) else {
        return no_identity(shared, "/v0/federation/countersign");
    };
    let Ok(_busy) = shared.federation.busy.try_lock() else {
        return busy();
    };
    match countersigned(shared, &origin, receipt).await {
        Ok(synced) => HttpResponse::Ok().json(synced),
        Err(refused) => refused.response(),
    }
}

/// Checks a proposed receipt, signs it and appends it.
async fn countersigned(
    shared: &web::Data<Shared>,
    origin: &str,
    mut receipt: FederationReceipt,
) -> Result<FederationSynced, Refused> {
    let invalid = |code, detail: String| Refused(StatusCode::UNPROCESSABLE_ENTITY, code, detail);
    receipt
        .check_shape()
        .map_err(|wrong| invalid("bad_receipt", wrong.to_string()))?;
    let Some((own, proposer)) = receipt.sides_of(origin) else {
        return Err(invalid(
            "not_ours",
            format!("the receipt has no head of this fabric ({origin})"),
        ));
    };
    let (own, proposer) = (own.clone(), proposer.clone());
    let Some(peer) = shared.federation.peer(&proposer.origin).cloned() else {
        return Err(Refused(
            StatusCode::FORBIDDEN,
            "unknown_peer",
            format!("{} is no peer of this fabric", proposer.origin),
        ));
    };
    let signature = receipt.signature_of(&peer.origin).copied();
    let signature = signature.unwrap_or(SignatureBytes([0; 64]));
    if proposer.ledger_key != peer.key
        || fabric_events::verify_signature(&peer.key, &signature, &receipt.message()).is_err()
    {
        return Err(Refused(
            StatusCode::FORBIDDEN,
            "bad_signature",
            format!(
                "the receipt is not signed by {}'s ledger key {}",
                peer.origin, peer.key
            ),
        ));
    }
    own_head_is_stored(shared, &own)?;
    let last = standing(shared, &peer.origin)?;
    moves_forward(last.as_ref(), &own, &proposer)?;
    let statement = Statement {
        message: String::from_utf8_lossy(&receipt.message()).into_owned(),
        signature,
    };
    extends(shared, &peer, last.as_ref(), &proposer, statement).await?;
    receipt.sign_as(origin, &secret_of(shared, &own.ledger_key)?);
    let seq = append_receipt(shared, &peer.origin, &receipt).await?;
    Ok(FederationSynced {
        peer_seq: None,
        receipt,
        seq,
    })
}

/// The receipt's head of this fabric must be one it signed: a stored tree head of that size,
/// root and key.
fn own_head_is_stored(shared: &Shared, own: &FederatedHead) -> Result<(), Refused> {
    let stored = shared.reader.tree_head_at(own.tree_size).ok().flatten();
    match stored {
        Some(head) if head.root == own.root && head.ledger_key == own.ledger_key => Ok(()),
        _ => Err(Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_our_head",
            format!(
                "this fabric signed no head of size {} with root {} and key {}",
                own.tree_size, own.root, own.ledger_key
            ),
        )),
    }
}

/// `GET /v0/federation`.
pub(crate) async fn status(shared: web::Data<Shared>) -> HttpResponse {
    let covenant = read_view(&shared).covenant.clone();
    let config = &shared.federation.config;
    let known = |origin: &str, state: Option<&PeerState>, key: PublicKey, url: Option<String>| {
        FederationPeerStatus {
            forked: state.is_some_and(|state| state.forked),
            ledger_key: state.map_or(key, |state| state.key),
            last_receipt_seq: state
                .filter(|state| state.receipts > 0)
                .map(|state| state.receipt_seq),
            origin: origin.to_owned(),
            own_size: state.map_or(0, |state| state.own_size),
            peer_root: state.map_or(Hash32::default(), |state| state.peer_root),
            peer_size: state.map_or(0, |state| state.peer_size),
            receipts: state.map_or(0, |state| state.receipts),
            url,
        }
    };
    let mut peers: Vec<FederationPeerStatus> = config
        .peers
        .iter()
        .map(|peer| {
            known(
                &peer.origin,
                covenant.peers.get(&peer.origin),
                peer.key,
                Some(peer.target.to_string()),
            )
        })
        .collect();
    for (origin, state) in &covenant.peers {
        if shared.federation.peer(origin).is_none() {
            peers.push(known(origin, Some(state), state.key, None));
        }
    }
    HttpResponse::Ok().json(FederationStatus {
        interval_ms: config.interval.as_millis() as u64,
        origin: shared.checkpoints.origin().map(str::to_owned),
        peers,
    })
}
