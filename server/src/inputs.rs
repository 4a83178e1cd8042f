//! A job's input at submission (docs/FORMAT.md §14.2): a job of a registered model must come
//! with input bytes of its job type's size (inline, or already in the artifact store under its
//! hash); a fabric whose nodes are node agents takes only jobs of registered models. The input
//! is stored before the job is sequenced, so the tick's group commit makes both durable.
//!
//! Only a request whose signature verifies gets here: nobody stores bytes without a key the
//! fabric knows.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_api::job::JobRequest;
use fabric_events::{Body, Event, Hash32, JobSubmitted, JobType, OwnerAction};

use crate::handlers::{error, Shared};

/// The model an event registers: its workload and job type.
pub(crate) fn registered_model(event: &Event) -> Option<(String, JobType)> {
    match &event.body {
        Body::OwnerCommand(command) => match &command.action {
            OwnerAction::RegisterModel { registration } => {
                Some((registration.workload(), registration.job_type))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Why a job's input is refused: the answer's status, code and message.
pub(crate) struct InputRefused {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl InputRefused {
    /// The answer that refuses the request.
    pub(crate) fn response(&self) -> HttpResponse {
        error(self.status, self.code, self.message.clone())
    }
}

/// Checks the input of `job` and stores it, or why the request is refused.
pub(crate) fn admit_input(
    shared: &Shared,
    request: &JobRequest,
    job: &JobSubmitted,
) -> Result<(), InputRefused> {
    let bad = |code: &'static str, message: String| {
        Err(InputRefused {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        })
    };
    let storage = |message: String| InputRefused {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "storage",
        message,
    };
    let job_type = shared.model(&job.workload);
    let inline = match &request.input {
        None => None,
        Some(text) => match BASE64.decode(text) {
            Ok(bytes) => Some(bytes),
            Err(wrong) => {
                return bad(
                    "bad_input",
                    format!("input is not standard base64: {wrong}"),
                )
            }
        },
    };
    if let Some(bytes) = &inline {
        let hash = Hash32(*blake3::hash(bytes).as_bytes());
        if hash != job.input_hash {
            return bad(
                "bad_input",
                format!(
                    "the input bytes hash to {hash}, not to input_hash {}",
                    job.input_hash
                ),
            );
        }
    }
    let Some(job_type) = job_type else {
        if shared.node_agents {
            return bad(
                "unknown_model",
                format!(
                    "no model {} is registered in this fabric (owners register one with \
                     `fabric owner propose register-model`)",
                    job.workload
                ),
            );
        }
        // A simulated CPU job: its input is a name, no bytes are needed.
        return Ok(());
    };
    let bytes = match inline {
        Some(bytes) => bytes,
        None => match shared.artifacts.get(job.input_hash.as_bytes()) {
            Ok(Some(stored)) => stored.to_vec(),
            Ok(None) => {
                return bad(
                    "unknown_input",
                    format!(
                        "the server holds no artifact {}: send the input bytes in `input`",
                        job.input_hash
                    ),
                )
            }
            Err(wrong) => {
                return Err(storage(format!(
                    "could not read the artifact store: {wrong}"
                )))
            }
        },
    };
    if bytes.len() != job_type.input_bytes() {
        return bad(
            "bad_input",
            format!(
                "a {} job of model {} takes {} input bytes, not {}",
                job_type.name(),
                job.workload,
                job_type.input_bytes(),
                bytes.len()
            ),
        );
    }
    if request.input.is_some() {
        shared
            .artifacts
            .insert(job.input_hash.as_bytes(), bytes)
            .map_err(|wrong| storage(format!("could not store the input: {wrong}")))?;
    }
    Ok(())
}
