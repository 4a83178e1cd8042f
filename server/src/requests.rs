//! What every request goes through before its handler: the connection's admission
//! ([`crate::connections`]), a deadline and a read timeout on its body, and the end of
//! streamed answers (`/v0/events?follow=true`) and of half-read bodies when the server stops.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderValue};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage, HttpResponse};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connections::Slot;
use crate::handlers::error;
use crate::limits::{BODY_READ_TIMEOUT_MS, REQUEST_DEADLINE_MS};

/// Why a request body was cut off before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyCut {
    /// No piece of it came for [`BODY_READ_TIMEOUT_MS`].
    Stalled,
    /// It was not complete [`REQUEST_DEADLINE_MS`] after the head.
    Deadline,
    /// The server is stopping.
    ShuttingDown,
}

impl BodyCut {
    /// The answer to a request whose body was cut off; its connection is closed after it.
    fn response(self) -> HttpResponse {
        match self {
            BodyCut::Stalled => error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("no part of the request body came for {BODY_READ_TIMEOUT_MS} ms"),
            ),
            BodyCut::Deadline => error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body was not complete {REQUEST_DEADLINE_MS} ms after its head"
                ),
            ),
            BodyCut::ShuttingDown => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is stopping: the request body was not read to its end",
            ),
        }
    }
}

/// Whether the server is stopping: `true` once SIGINT/SIGTERM came.
pub(crate) type Stopping = watch::Receiver<bool>;

/// Completes when the server starts stopping (or its stop signal is gone).
async fn stopped(mut stopping: Stopping) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// The middleware: admission, the body's deadline, streams that end on stop.
pub(crate) fn guard<S>(
    request: ServiceRequest,
    service: &S,
    stopping: &Stopping,
    following: Option<&crate::follow::Following>,
) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error>,
    S::Future: 'static,
{
    let mut request = request;
    own_headers(&mut request);
    if let Some(following) = following.filter(|following| !following.is_sequencing()) {
        if request.method() == actix_web::http::Method::POST {
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", |path| path.as_str())
                .to_owned();
            let answer = to_sequencer(following, &path);
            return Box::pin(async move { Ok(request.into_response(answer)) });
        }
    }
    let refusal = request
        .conn_data::<Slot>()
        .and_then(|slot| slot.refusal(request.path()));
    if let Some(refusal) = refusal {
        return Box::pin(async move { Ok(request.into_response(closing(refusal))) });
    }
    let cut = Rc::new(Cell::new(None));
    match request.take_payload() {
        // Nothing to time (a request without a body).
        Payload::None => {}
        payload => request.set_payload(timed_payload(payload, Rc::clone(&cut), stopping.clone())),
    }
    let answer = service.call(request);
    let stopping = stopping.clone();
    Box::pin(async move {
        let response = answer.await?;
        if let Some(why) = cut.get() {
            // Whatever the handler made of the cut-off body, the client learns why.
            return Ok(response.into_response(closing(why.response())));
        }
        Ok(response.map_body(|_, body| ends_on_stop(body, stopping)))
    })
}

/// A follower of a replicated log appends nothing (nor signs): a submission, or a request for
/// what only the sequencer signs, is sent to the acting sequencer (307, the same method,
/// `path` and body at its address), or refused (503 `no_sequencer`) while no message of the
/// log has named one yet.
pub(crate) fn to_sequencer(following: &crate::follow::Following, path: &str) -> HttpResponse {
    let Some(sequencer) = following.sequencer() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_sequencer",
            "this replica follows the replicated log and knows no sequencer yet: try again, or \
             submit to another replica",
        );
    };
    let location = format!("{}{path}", sequencer.trim_end_matches('/'));
    let mut answer = error(
        StatusCode::TEMPORARY_REDIRECT,
        "not_sequencer",
        format!("this replica follows the replicated log: ask the sequencer, {location}"),
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        answer
            .headers_mut()
            .insert(actix_web::http::header::LOCATION, value);
    }
    answer
}

/// Copies the request's headers out of the buffer its connection read them into, into a map
/// of their own size. actix keeps finished requests and request heads for reuse (up to 128 of
/// each per worker) with their headers, and a header value as parsed is a slice of its
/// connection's 8 KiB read buffer: without the copy, each request kept would hold on to the
/// buffer of a connection long closed, and to a map sized for 16 headers. After a burst of
/// connections that is megabytes per worker, which no trim can give back.
fn own_headers(request: &mut ServiceRequest) {
    let headers = request.headers_mut();
    let mut owned = HeaderMap::with_capacity(headers.len_keys());
    for (name, value) in headers.iter() {
        let copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        owned.append(name.clone(), copy);
    }
    *headers = owned;
}

/// `response`, after which the connection is closed.
fn closing(mut response: HttpResponse) -> HttpResponse {
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    response
}

/// The request body, cut off (an error to the handler, `cut` set) when it stalls, misses the
/// request deadline or the server stops.
fn timed_payload(payload: Payload, cut: Rc<Cell<Option<BodyCut>>>, stopping: Stopping) -> Payload {
    let deadline = Instant::now() + Duration::from_millis(REQUEST_DEADLINE_MS);
    let stall = Duration::from_millis(BODY_READ_TIMEOUT_MS);
    let state = (payload, cut, stopping, false);
    let stream = futures_util::stream::unfold(state, move |state| async move {
        let (mut payload, cut, stopping, done) = state;
        if done {
            return None;
        }
        let why = tokio::select! {
            piece = payload.next() => {
                let piece = piece?;
                return Some((piece, (payload, cut, stopping, false)));
            }
            () = tokio::time::sleep(stall) => BodyCut::Stalled,
            () = tokio::time::sleep_until(deadline) => BodyCut::Deadline,
            () = stopped(stopping.clone()) => BodyCut::ShuttingDown,
        };
        cut.set(Some(why));
        let error = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{why:?}"));
        Some((Err(error.into()), (payload, cut, stopping, true)))
    });
    Payload::Stream {
        payload: Box::pin(stream),
    }
}

/// A streamed body (the follow stream of `/v0/events`) ends when the server starts stopping;
/// a body of known size is sent as it is.
fn ends_on_stop(body: BoxBody, stopping: Stopping) -> BoxBody {
    match body.size() {
        BodySize::Stream => BoxBody::new(EndsOnStop {
            body,
            stop: Box::pin(stopped(stopping)),
        }),
        BodySize::None | BodySize::Sized(_) => body,
    }
}

/// A body that ends (cleanly, as if complete) once `stop` completes.
struct EndsOnStop {
    body: BoxBody,
    stop: Pin<Box<dyn Future<Output = ()>>>,
}

impl MessageBody for EndsOnStop {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.stop.as_mut().poll(context).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut this.body).poll_next(context)
    }
}
