//! The witness's read-only HTTP API (docs/FORMAT.md §17.4): what it cosigned, the forks it
//! saw, its metrics. GETs only, small answers, one worker: nothing a client sends changes
//! what the witness cosigns.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, HttpServer};
use serde::{Deserialize, Serialize};

use crate::{AddAnswer, AddRequest, Witness, WitnessError, WitnessState, ADD_REQUEST_BYTES_MAX};

/// Connections served at once.
const CONNECTIONS_MAX: usize = 256;
/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API shows: the state as durable after the last round, and counters.
#[derive(Default)]
pub struct WitnessView {
    /// The state.
    pub state: WitnessState,
    /// Heads cosigned since the start.
    pub cosigned_total: u64,
    /// Rounds done since the start.
    pub rounds_total: u64,
}

/// The view shared between the rounds and the API.
pub type SharedView = Arc<RwLock<WitnessView>>;
/// The witness, shared between the rounds and the API's `add-checkpoint`.
pub type SharedWitness = Arc<Mutex<Witness>>;

impl WitnessView {
    /// Takes the witness's state as it is durable now, with `cosigned` more heads cosigned.
    pub fn show(view: &SharedView, witness: &Witness, cosigned: u64) {
        let mut shown = view.write().unwrap_or_else(|poison| poison.into_inner());
        shown.state = witness.state().clone();
        shown.cosigned_total += cosigned;
    }
}

/// Its identity, as `GET /v0/witness` shows it.
#[derive(Clone, Serialize)]
pub struct Identity {
    /// The witness's key name.
    pub name: String,
    /// Its cosigner verifier key (§17.4).
    pub cosigner_key: String,
}

/// `GET /v0/witness`.
#[derive(Serialize)]
struct Status<'a> {
    name: &'a str,
    cosigner_key: &'a str,
    logs: Vec<LogStatus<'a>>,
    forked: bool,
}

#[derive(Serialize)]
struct LogStatus<'a> {
    origin: &'a str,
    tree_size: u64,
    forked: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginQuery {
    origin: String,
}

/// Serves the API on `listen` (host:port) on a thread of its own: the address it listens on.
pub fn serve(
    listen: &str,
    identity: Identity,
    view: SharedView,
    witness: SharedWitness,
) -> Result<String, WitnessError> {
    let (bound, address) = std::sync::mpsc::channel();
    let listen = listen.to_owned();
    std::thread::Builder::new()
        .name("witness-http".to_owned())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let server = HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(web::Data::new(identity.clone()))
                        .app_data(web::Data::new(Arc::clone(&view)))
                        .app_data(web::Data::new(Arc::clone(&witness)))
                        .app_data(web::PayloadConfig::new(ADD_REQUEST_BYTES_MAX))
                        .route("/v0/add-checkpoint", web::post().to(add_checkpoint))
                        .route("/v0/witness", web::get().to(status))
                        .route("/v0/cosigned", web::get().to(cosigned))
                        .route("/v0/forks", web::get().to(forks))
                        .route("/metrics", web::get().to(metrics))
                        .default_service(web::to(|| async {
                            HttpResponse::NotFound().body("no such endpoint\n")
                        }))
                })
                .workers(1)
                .max_connections(CONNECTIONS_MAX)
                .client_request_timeout(REQUEST_TIMEOUT)
                .disable_signals()
                .bind(&listen);
                let server = match server {
                    Ok(server) => server,
                    Err(error) => {
                        let _ = bound.send(Err(format!("could not listen on {listen}: {error}")));
                        return;
                    }
                };
                let address = server
                    .addrs()
                    .first()
                    .map_or_else(|| listen.clone(), ToString::to_string);
                let _ = bound.send(Ok(address));
                let _ = server.run().await;
            });
        })
        .map_err(|error| {
            WitnessError::Setting(format!("could not start the HTTP thread: {error}"))
        })?;
    match address.recv() {
        Ok(Ok(address)) => Ok(address),
        Ok(Err(why)) => Err(WitnessError::Setting(why)),
        Err(_) => Err(WitnessError::Setting(
            "the HTTP thread stopped before it listened".to_owned(),
        )),
    }
}

/// `POST /v0/add-checkpoint` (docs/FORMAT.md §17.5).
async fn add_checkpoint(
    view: web::Data<SharedView>,
    witness: web::Data<SharedWitness>,
    body: web::Bytes,
) -> HttpResponse {
    let request = match AddRequest::parse(&body) {
        Ok(request) => request,
        Err(why) => return HttpResponse::BadRequest().body(format!("{why}\n")),
    };
    let mut witness = witness.lock().unwrap_or_else(|poison| poison.into_inner());
    let answer = match witness.add_checkpoint(&request) {
        Ok(answer) => answer,
        Err(error) => return HttpResponse::InternalServerError().body(format!("{error}\n")),
    };
    let cosigned = u64::from(matches!(answer, AddAnswer::Cosigned(_)));
    WitnessView::show(&view, &witness, cosigned);
    let text = |status: StatusCode, body: String| {
        HttpResponse::build(status)
            .content_type("text/plain; charset=utf-8")
            .body(body)
    };
    match answer {
        AddAnswer::Cosigned(line) => text(StatusCode::OK, line),
        AddAnswer::Conflict(size) => HttpResponse::Conflict()
            .content_type("text/x.tlog.size")
            .body(format!("{size}\n")),
        AddAnswer::Unproved(why) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")),
        AddAnswer::Refused(why) => text(StatusCode::FORBIDDEN, format!("{why}\n")),
    }
}

fn read(view: &SharedView) -> std::sync::RwLockReadGuard<'_, WitnessView> {
    view.read().unwrap_or_else(|poison| poison.into_inner())
}

async fn status(identity: web::Data<Identity>, view: web::Data<SharedView>) -> HttpResponse {
    let view = read(&view);
    HttpResponse::Ok().json(Status {
        name: &identity.name,
        cosigner_key: &identity.cosigner_key,
        logs: view
            .state
            .logs
            .iter()
            .map(|(origin, log)| LogStatus {
                origin,
                tree_size: log.tree_size,
                forked: log.fork.is_some(),
            })
            .collect(),
        forked: view.state.forked(),
    })
}

/// `GET /v0/cosigned?origin=O`: the last head of O it cosigned, the note with the log's
/// signature and its cosignature.
async fn cosigned(view: web::Data<SharedView>, query: web::Query<OriginQuery>) -> HttpResponse {
    let view = read(&view);
    match view.state.logs.get(&query.origin) {
        Some(log) => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(log.note.clone()),
        None => HttpResponse::build(StatusCode::NOT_FOUND)
            .body(format!("no head of {} is cosigned here\n", query.origin)),
    }
}

/// `GET /v0/forks`: every fork seen, by origin, with its evidence.
async fn forks(view: web::Data<SharedView>) -> HttpResponse {
    let view = read(&view);
    let forks: std::collections::BTreeMap<&String, &crate::Fork> = view
        .state
        .logs
        .iter()
        .filter_map(|(origin, log)| log.fork.as_ref().map(|fork| (origin, fork)))
        .collect();
    HttpResponse::Ok().json(forks)
}

/// `GET /metrics`: Prometheus text.
async fn metrics(view: web::Data<SharedView>) -> HttpResponse {
    let view = read(&view);
    let mut text = String::new();
    text.push_str("# HELP fabric_witness_rounds_total Rounds of asking every followed server.\n");
    text.push_str("# TYPE fabric_witness_rounds_total counter\n");
    text.push_str(&format!(
        "fabric_witness_rounds_total {}\n",
        view.rounds_total
    ));
    text.push_str("# HELP fabric_witness_cosigned_total Heads cosigned since the start.\n");
    text.push_str("# TYPE fabric_witness_cosigned_total counter\n");
    text.push_str(&format!(
        "fabric_witness_cosigned_total {}\n",
        view.cosigned_total
    ));
    let logs = &view.state.logs;
    per_log(
        &mut text,
        (
            "fabric_witness_tree_size",
            "The size of the last head cosigned.",
        ),
        logs.iter().map(|(origin, log)| (origin, log.tree_size)),
    );
    per_log(
        &mut text,
        (
            "fabric_witness_forked",
            "1 for a log whose key signed two histories.",
        ),
        logs.iter()
            .map(|(origin, log)| (origin, u64::from(log.fork.is_some()))),
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

/// A gauge `name` with one sample per log origin.
fn per_log<'a>(
    text: &mut String,
    (name, help): (&str, &str),
    values: impl Iterator<Item = (&'a String, u64)>,
) {
    text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
    for (origin, value) in values {
        text.push_str(&format!("{name}{{origin=\"{}\"}} {value}\n", label(origin)));
    }
}

/// A label value in the text format: backslash and double quote escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}
