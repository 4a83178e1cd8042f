//! A job's input at submission (docs/FORMAT.md §14.2): the bytes a request carries are
//! checked against the job's input hash here, on the HTTP worker's thread; the driver then
//! judges them against the job's model (`fabric_actors::serve`) and stores them in the
//! artifact store, only for a request signed by a registered key, before the append that
//! makes the job durable.

use actix_web::http::StatusCode;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_actors::InputStore;
use fabric_api::job::JobRequest;
use fabric_events::{Hash32, JobSubmitted};

use crate::handlers::Refusal;

/// The input bytes a request carries, checked against its job's input hash; or the refusal
/// of the request (nothing is stored: the request's signer is not judged yet).
pub(crate) fn input_of(
    request: &JobRequest,
    job: &JobSubmitted,
) -> Result<Option<Vec<u8>>, Refusal> {
    let bad = |message: String| Refusal::new(StatusCode::BAD_REQUEST, "bad_input", message);
    let Some(text) = &request.input else {
        return Ok(None);
    };
    let bytes = BASE64
        .decode(text)
        .map_err(|wrong| bad(format!("input is not standard base64: {wrong}")))?;
    let hash = Hash32(*blake3::hash(&bytes).as_bytes());
    if hash != job.input_hash {
        return Err(bad(format!(
            "the input bytes hash to {hash}, not to input_hash {}",
            job.input_hash
        )));
    }
    Ok(Some(bytes))
}

/// The artifact store as the driver's input store.
pub(crate) struct ArtifactInputs(pub(crate) std::sync::Arc<fabric_ledger::ArtifactLog>);

impl InputStore for ArtifactInputs {
    fn len_of(&self, hash: &Hash32) -> Option<usize> {
        self.0
            .get(hash)
            .ok()
            .flatten()
            .filter(|bytes| *blake3::hash(bytes).as_bytes() == hash.0)
            .map(|bytes| bytes.len())
    }

    fn store(&self, hash: &Hash32, bytes: &[u8]) -> Result<(), String> {
        self.0
            .insert(hash, bytes)
            .map_err(|error| error.to_string())
    }
}
