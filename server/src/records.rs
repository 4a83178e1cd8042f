//! `POST /v0/records` (docs/FORMAT.md §19.2): an artifact's record, signed by an owner or a
//! registered recorder. Like a job, it is decoded here, its signature verified by the tick
//! that sequences it, and its author judged by the authority table; a refusal by a known key
//! is recorded as a `rejected` event.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use fabric_actors::gate::check_decoded;
use fabric_actors::serve::Request;
use fabric_api::wire::{RecordAccepted, RecordRequest};
use fabric_events::{Body, Hash32};

use crate::handlers::{read_json, refused, sequence, within_allowance, Refusal, Shared};

pub(crate) async fn record(
    shared: web::Data<Shared>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    within_allowance(&shared, &request, record_heard(&shared, &request, payload)).await
}

async fn record_heard(
    shared: &Shared,
    request: &HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let record: RecordRequest = match read_json(
        shared,
        request,
        payload,
        "an artifact's record, {\"event\": SIGNED_EVENT} (docs/FORMAT.md §19.2)",
    )
    .await
    {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let signed = match record.event.decode() {
        Ok(signed) => signed,
        Err(wrong) => {
            shared.metrics.unreadable_request();
            return Refusal::new(StatusCode::BAD_REQUEST, "bad_body", wrong.to_string()).response();
        }
    };
    let checked = check_decoded(&signed);
    let blake3 = match &checked {
        Ok(event) => match &event.body {
            Body::ArtifactRecorded(artifact) => artifact.blake3,
            _ => Hash32::default(),
        },
        Err(_) => Hash32::default(),
    };
    let ack = match sequence(shared, Request::Record { signed, checked }).await {
        Ok(ack) => ack,
        Err(refusal) => return refusal.response(),
    };
    if let Some(refusal) = refused(&ack) {
        return refusal.response();
    }
    HttpResponse::Accepted().json(RecordAccepted {
        blake3,
        seq: ack.seq,
        status: "recorded".to_owned(),
        tick: ack.tick,
    })
}
