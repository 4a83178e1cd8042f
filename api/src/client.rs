//! The requests `fabric submit`, `fabric status` and `fabric result` make of a `fabric serve`,
//! with typed errors: read the current tick, post a signed job request, wait for a result,
//! read a job's status or result, fetch an artifact and check it against its hash.
//!
//! Answers come back as [`Answer`]s (the status and the JSON body as the server wrote it), so
//! a caller can print them as they are or read them as [`crate::job::JobStatus`],
//! [`crate::job::JobResult`] or [`crate::wire::ErrorBody`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabric_events::keys::KeyError;
use fabric_events::{Hash32, JobId, KeyOrigin, SigningKey};
use serde_json::Value;

use crate::http_client::{Client, Response};
use crate::job::{job_request_body, JobRequestError, JobSpec};

/// How long one request of the `fabric` client commands may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How often [`wait_for_result`] asks.
const RESULT_POLL: Duration = Duration::from_millis(100);

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A follower sent the submission to a sequencer whose address does not parse.
    #[error("the server sent the submission to {location:?}, which is no server address")]
    Redirect {
        /// The `Location` it answered.
        location: String,
        /// Why it does not parse.
        #[source]
        error: crate::http_client::TargetError,
    },
    /// `GET /v0/health` could not be sent or its answer read.
    #[error("could not reach the server")]
    Unreachable(#[source] std::io::Error),
    /// A `GET` could not be sent or its answer read.
    #[error("GET {path}: could not reach the server")]
    Get {
        /// The path asked for.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A `POST` could not be sent or its answer read.
    #[error("could not send the request")]
    Send(#[source] std::io::Error),
    /// The request could not be encoded (an event over the size limit).
    #[error("the request cannot be encoded: {0}")]
    Encode(String),
    /// A later request of a conversation failed in transport.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server answered with a status the caller cannot go on with.
    #[error("{request} answered {status}: {body}")]
    Status {
        /// Method and path.
        request: String,
        /// The HTTP status.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// The body of an answer is not JSON.
    #[error("{request}: the server answered {status} with a body that is not JSON: {body}")]
    NotJson {
        /// What was asked.
        request: String,
        /// The HTTP status.
        status: u16,
        /// The body, as text.
        body: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// `GET /v0/health` has no tick.
    #[error("GET /v0/health has no tick")]
    NoTick,
    /// The job request could not be built.
    #[error(transparent)]
    Job(#[from] JobRequestError),
    /// The job had no result in time.
    #[error("job {job} has no result after {waited_s} s")]
    NoResultYet {
        /// The job.
        job: JobId,
        /// How long was waited.
        waited_s: u64,
    },
    /// A result names no artifact.
    #[error("the job's result has no artifact")]
    NoArtifact,
    /// `GET /v0/health` has no log size.
    #[error("GET /v0/health has no ledger.size")]
    NoSize,
    /// A line of `GET /v0/events` is not an export line that verifies.
    #[error("{request}: {error}")]
    BadLine {
        /// What was asked.
        request: String,
        /// What is wrong with the line.
        error: fabric_events::ExportError,
    },
    /// `GET /v0/events` ended before the log's end.
    #[error("{request} gave no event before the log's end ({size} entries)")]
    ShortPage {
        /// What was asked.
        request: String,
        /// The log's size.
        size: u64,
    },
    /// A result's artifact hash is not a hash.
    #[error("the artifact hash {text:?}: {reason}")]
    ArtifactHash {
        /// What the result says.
        text: String,
        /// Why it is not a hash.
        reason: fabric_events::hex_serde::HexError,
    },
    /// The artifact served does not hash to its name.
    #[error("the artifact served as {expected} hashes to {actual}")]
    ArtifactMismatch {
        /// Its name.
        expected: Hash32,
        /// What its bytes hash to.
        actual: Hash32,
    },
}

/// Why a client key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClientKeyError {
    /// The key file could not be loaded.
    #[error("--key {}: cannot load the client key", path.display())]
    Load {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: KeyError,
    },
    /// Neither or both of a key file and a simulated shard were named.
    #[error("give either --key FILE or --sim-client SHARD")]
    Choice,
    /// A simulated client key was asked of a fabric whose keys its operator holds.
    #[error(
        "--sim-client {shard}: the server's fabric has operator keys, so no client key derives \
         from a seed; sign with --key FILE (a client key its owners registered)"
    )]
    NotSimulation {
        /// The shard named.
        shard: String,
    },
    /// `--seed` is not the seed of the server's simulation.
    #[error("--seed {given}: the server's simulation derives its keys from seed {served}")]
    OtherSeed {
        /// The seed given.
        given: u64,
        /// The server's.
        served: u64,
    },
}

/// The client key of `fabric submit`: a key file, or the simulated client key of a shard
/// (`sim/client/<shard>`, registered at its genesis) of a server whose `/v0/health` says its
/// keys are a simulation's (`server_origin`); `seed`, when given, must be that simulation's.
pub fn client_key(
    key: Option<&Path>,
    sim_client: Option<&str>,
    seed: Option<u64>,
    server_origin: Option<KeyOrigin>,
) -> Result<SigningKey, ClientKeyError> {
    match (key, sim_client) {
        (Some(path), None) => {
            fabric_events::keys::load_secret(path).map_err(|source| ClientKeyError::Load {
                path: path.to_path_buf(),
                source,
            })
        }
        (None, Some(shard)) => {
            let Some(KeyOrigin::Simulation { seed: served }) = server_origin else {
                return Err(ClientKeyError::NotSimulation {
                    shard: shard.to_owned(),
                });
            };
            if let Some(given) = seed.filter(|given| *given != served) {
                return Err(ClientKeyError::OtherSeed { given, served });
            }
            Ok(fabric_events::derive_signing_key(
                served,
                &format!("sim/client/{shard}"),
            ))
        }
        _ => Err(ClientKeyError::Choice),
    }
}

/// Where the server's keys come from (`key_origin` of `GET /v0/health`).
pub fn key_origin(client: &mut Client) -> Result<KeyOrigin, ClientError> {
    let health = health(client)?;
    serde_json::from_value(health["key_origin"].clone()).map_err(|source| ClientError::NotJson {
        request: "GET /v0/health".to_owned(),
        status: 200,
        body: health.to_string(),
        source,
    })
}

/// A nonce above every earlier one of this client: microseconds since the Unix epoch.
pub fn clock_nonce() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// A fresh random request id: 32 hex digits.
pub fn random_request_id() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// An answer with a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

/// The JSON body of `response` to `request`.
pub fn json_of(response: &Response, request: &str) -> Result<Value, ClientError> {
    serde_json::from_slice(&response.body).map_err(|source| ClientError::NotJson {
        request: request.to_owned(),
        status: response.status,
        body: response.text(),
        source,
    })
}

/// The server's current tick (`GET /v0/health`).
pub fn current_tick(client: &mut Client) -> Result<u64, ClientError> {
    health(client)?["tick"].as_u64().ok_or(ClientError::NoTick)
}

/// The body of `GET /v0/health`.
pub fn health(client: &mut Client) -> Result<Value, ClientError> {
    let response = client
        .request("GET", "/v0/health", None)
        .map_err(ClientError::Unreachable)?;
    if response.status != 200 {
        return Err(ClientError::Status {
            request: "GET /v0/health".to_owned(),
            status: response.status,
            body: response.text(),
        });
    }
    json_of(&response, "GET /v0/health")
}

/// Submits `job` (with its input bytes, when given), signed by `key` with `nonce` at the
/// server's current tick: the answer of `POST /v0/jobs` (202 when accepted, an error body
/// otherwise).
pub fn submit(
    client: &mut Client,
    job: &JobSpec,
    key: &SigningKey,
    nonce: u64,
    input: Option<&[u8]>,
) -> Result<Answer, ClientError> {
    let tick = current_tick(client)?;
    let body = job_request_body(job, key, tick, nonce, input)?;
    post_to_sequencer(client, "/v0/jobs", &body)
}

/// Records `record` signed by `key` (an owner's or a registered recorder's) with `nonce` at
/// the server's current tick: the answer of `POST /v0/records` (202 when recorded).
pub fn record(
    client: &mut Client,
    record: fabric_events::ArtifactRecorded,
    key: &SigningKey,
    nonce: u64,
) -> Result<Answer, ClientError> {
    let tick = current_tick(client)?;
    let event = fabric_events::Event::new(fabric_events::Role::Recorder, tick, nonce, record);
    let signed = fabric_events::SignedEvent::sign(&event, key)
        .map_err(|oversize| ClientError::Encode(oversize.to_string()))?;
    let body = crate::wire::RecordRequest {
        event: crate::wire::WireSignedEvent::from_signed(&signed),
    };
    let body = serde_json::to_vec(&body).map_err(|error| ClientError::Encode(error.to_string()))?;
    post_to_sequencer(client, "/v0/records", &body)
}

/// `POST path` with a JSON body; a follower of a replicated fabric sends it to its
/// sequencer, where it is posted once more, the same body (docs/FORMAT.md §16).
fn post_to_sequencer(client: &mut Client, path: &str, body: &[u8]) -> Result<Answer, ClientError> {
    let mut response = client
        .request("POST", path, Some(("application/json", body)))
        .map_err(ClientError::Send)?;
    if response.status == 307 {
        if let Some(location) = response.header("location").map(str::to_owned) {
            let mut sequencer = client
                .to_location(&location)
                .map_err(|error| ClientError::Redirect { location, error })?;
            response = sequencer
                .request("POST", path, Some(("application/json", body)))
                .map_err(ClientError::Send)?;
        }
    }
    let answer = json_of(&response, &format!("POST {path}"))?;
    Ok(Answer {
        status: response.status,
        body: answer,
    })
}

/// Waits up to `wait` for job `job`'s result, asking every 100 ms: the body of
/// `GET /v0/jobs/{job}/result` once it is 200.
pub fn wait_for_result(
    client: &mut Client,
    job: JobId,
    wait: Duration,
) -> Result<Value, ClientError> {
    let deadline = Instant::now() + wait;
    let path = format!("/v0/jobs/{job}/result");
    loop {
        let response = client.request("GET", &path, None)?;
        if response.status == 200 {
            return json_of(&response, "GET result");
        }
        if response.status != 409 {
            return Err(ClientError::Status {
                request: format!("GET {path}"),
                status: response.status,
                body: response.text(),
            });
        }
        if Instant::now() >= deadline {
            return Err(ClientError::NoResultYet {
                job,
                waited_s: wait.as_secs(),
            });
        }
        std::thread::sleep(RESULT_POLL);
    }
}

/// Reads the log from `from` to its end as `GET /v0/health` gives it, a page of
/// `GET /v0/events` at a time, handing each event (its line verified: hash, link to itself,
/// signature) with its seq to `each`; stops at the first error.
pub fn scan_events<E: From<ClientError>>(
    client: &mut Client,
    from: u64,
    mut each: impl FnMut(u64, &fabric_events::Event) -> Result<(), E>,
) -> Result<(), E> {
    let size = health(client)?["ledger"]["size"]
        .as_u64()
        .ok_or(ClientError::NoSize)?;
    let mut next = from;
    while next < size {
        let request = format!("GET /v0/events?from={next}");
        let response = get(client, &request["GET ".len()..])?;
        if response.status != 200 {
            return Err(ClientError::Status {
                request,
                status: response.status,
                body: response.text(),
            }
            .into());
        }
        let before = next;
        for line in response.text().lines().filter(|line| !line.is_empty()) {
            let bad = |error| ClientError::BadLine {
                request: request.clone(),
                error,
            };
            let line = fabric_events::ExportLine::parse(line).map_err(bad)?;
            line.verify().map_err(bad)?;
            each(line.seq, &line.body)?;
            next = line.seq + 1;
        }
        if next == before {
            return Err(ClientError::ShortPage { request, size }.into());
        }
    }
    Ok(())
}

/// `GET path`, its failure in transport naming the path.
fn get(client: &mut Client, path: &str) -> Result<Response, ClientError> {
    client
        .request("GET", path, None)
        .map_err(|source| ClientError::Get {
            path: path.to_owned(),
            source,
        })
}

/// `GET path` with a JSON answer.
pub fn get_json(client: &mut Client, path: &str) -> Result<Answer, ClientError> {
    let response = get(client, path)?;
    let body = json_of(&response, path)?;
    Ok(Answer {
        status: response.status,
        body,
    })
}

/// `GET /v0/jobs/{job}`: 200 with a [`crate::job::JobStatus`], or an error body.
pub fn job_status(client: &mut Client, job: JobId) -> Result<Answer, ClientError> {
    get_json(client, &format!("/v0/jobs/{job}"))
}

/// `GET /v0/jobs/{job}/result`: 200 with a [`crate::job::JobResult`], or an error body.
pub fn job_result(client: &mut Client, job: JobId) -> Result<Answer, ClientError> {
    get_json(client, &format!("/v0/jobs/{job}/result"))
}

/// The artifact hash a result body names.
pub fn artifact_hash(result: &Value) -> Result<Hash32, ClientError> {
    let text = result["artifact"]["hash"]
        .as_str()
        .ok_or(ClientError::NoArtifact)?;
    Hash32::from_hex(text).map_err(|reason| ClientError::ArtifactHash {
        text: text.to_owned(),
        reason,
    })
}

/// The bytes of the artifact stored under `hash` (`GET /v0/artifacts/{hash}`), checked
/// against it.
pub fn fetch_artifact(client: &mut Client, hash: &Hash32) -> Result<Vec<u8>, ClientError> {
    let path = format!("/v0/artifacts/{hash}");
    let response = client.request("GET", &path, None)?;
    if response.status != 200 {
        return Err(ClientError::Status {
            request: format!("GET {path}"),
            status: response.status,
            body: response.text(),
        });
    }
    let actual = Hash32(*blake3::hash(&response.body).as_bytes());
    if actual != *hash {
        return Err(ClientError::ArtifactMismatch {
            expected: *hash,
            actual,
        });
    }
    Ok(response.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_come_from_one_source() {
        let simulation = Some(KeyOrigin::Simulation { seed: 7 });
        let sim = client_key(None, Some("earth"), None, simulation).unwrap();
        assert_eq!(
            sim.to_bytes(),
            fabric_events::derive_signing_key(7, "sim/client/earth").to_bytes()
        );
        assert!(matches!(
            client_key(None, None, Some(7), simulation),
            Err(ClientKeyError::Choice)
        ));
        let missing =
            client_key(Some(Path::new("/nonexistent/key")), None, None, None).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "--key /nonexistent/key: cannot load the client key"
        );
    }

    #[test]
    fn a_simulated_client_key_is_refused_unless_the_server_is_a_simulation() {
        assert!(matches!(
            client_key(None, Some("earth"), None, Some(KeyOrigin::Operator)),
            Err(ClientKeyError::NotSimulation { shard }) if shard == "earth"
        ));
        assert!(matches!(
            client_key(None, Some("earth"), None, None),
            Err(ClientKeyError::NotSimulation { .. })
        ));
        assert!(matches!(
            client_key(
                None,
                Some("earth"),
                Some(1),
                Some(KeyOrigin::Simulation { seed: 7 })
            ),
            Err(ClientKeyError::OtherSeed {
                given: 1,
                served: 7
            })
        ));
    }

    #[test]
    fn an_artifact_hash_is_read_from_a_result() {
        let hash = Hash32([5; 32]);
        let result = serde_json::json!({"artifact": {"hash": hash, "url": "x"}});
        assert_eq!(artifact_hash(&result).unwrap(), hash);
        let none = serde_json::json!({"artifact": null});
        assert!(matches!(artifact_hash(&none), Err(ClientError::NoArtifact)));
        assert_eq!(random_request_id().len(), 32);
        assert!(clock_nonce() > 0);
    }

    #[test]
    fn a_server_that_is_not_there_is_unreachable() {
        let folder = tempfile::tempdir().unwrap();
        let target = crate::Target::Unix(folder.path().join("none.sock"));
        let mut client = Client::new(target, Duration::from_secs(1));
        let error = current_tick(&mut client).unwrap_err();
        assert!(matches!(error, ClientError::Unreachable(_)));
        assert_eq!(error.to_string(), "could not reach the server");
    }
}
