//! A subscriber of the stream that trusts nothing it receives: each message must be a valid
//! export line whose signature verifies, carrying its seq as `Nats-Msg-Id`, and linked to the
//! one before by `prev`.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use fabric_events::{Entry, Event, ExportError, ExportLine, Hash32};
use futures_util::StreamExt;

use crate::{BusError, STREAM, STREAM_SUBJECTS};

/// What to read.
#[derive(Clone, Debug)]
pub struct TailOptions {
    /// The server.
    pub url: String,
    /// Events before this seq are skipped.
    pub from: u64,
    /// Only subjects matching this pattern (default: the whole log). With a narrower one, gaps
    /// and links cannot be checked (other events sit between), only lines and signatures.
    pub subject: String,
    /// Stop after this long without a message (default: follow forever).
    pub idle_exit: Option<Duration>,
}

impl TailOptions {
    /// Follow the whole log of `url` from the start.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            from: 0,
            subject: STREAM_SUBJECTS.to_owned(),
            idle_exit: None,
        }
    }
}

/// One verified event.
#[derive(Clone, Debug)]
pub struct TailEvent {
    /// Its subject.
    pub subject: String,
    /// Its entry.
    pub entry: Entry,
    /// Its event.
    pub event: Event,
    /// The export line, as received.
    pub line: String,
}

/// Something wrong in what the stream delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailWarning {
    /// Seqs missing between two delivered ones.
    Gap {
        /// First missing.
        first: u64,
        /// Last missing.
        last: u64,
    },
    /// A seq delivered again, or out of order.
    Duplicate {
        /// The seq.
        seq: u64,
        /// The latest seq before it.
        after: u64,
    },
    /// An entry's `prev` is not the hash of the one before.
    Chain {
        /// The seq.
        seq: u64,
    },
    /// A signature that does not verify, or a line whose signature field is not its entry's.
    BadSignature {
        /// The seq the line claims.
        seq: u64,
        /// Why.
        detail: String,
    },
    /// A message that is not a valid export line, or whose `Nats-Msg-Id` is not its seq.
    BadLine {
        /// The message's subject.
        subject: String,
        /// Why.
        detail: String,
    },
}

impl std::fmt::Display for TailWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailWarning::Gap { first, last } => {
                write!(
                    f,
                    "gap: seqs {first}..{last} missing ({} events)",
                    last - first + 1
                )
            }
            TailWarning::Duplicate { seq, after } => {
                write!(f, "duplicate: seq {seq} delivered after seq {after}")
            }
            TailWarning::Chain { seq } => write!(
                f,
                "chain broken at seq {seq}: its prev is not the hash of seq {}",
                seq.wrapping_sub(1)
            ),
            TailWarning::BadSignature { seq, detail } => {
                write!(f, "bad signature at seq {seq}: {detail}")
            }
            TailWarning::BadLine { subject, detail } => {
                write!(f, "bad line on {subject}: {detail}")
            }
        }
    }
}

/// What a tail saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailReport {
    /// Events verified and handed on.
    pub events: u64,
    /// Warnings raised.
    pub warnings: u64,
}

/// Checks each message against the ones before it.
pub struct Checker {
    from: u64,
    whole_log: bool,
    last: Option<(u64, Hash32)>,
}

impl Checker {
    /// A checker for messages from seq `from` on; `whole_log` when no subject filter hides
    /// events (so gaps and links can be checked).
    pub fn new(from: u64, whole_log: bool) -> Self {
        Self {
            from,
            whole_log,
            last: None,
        }
    }

    /// Checks one message: the event when it is good and at or after `from`, and what is wrong.
    pub fn check(
        &mut self,
        subject: &str,
        msg_id: Option<&str>,
        payload: &[u8],
    ) -> (Option<TailEvent>, Vec<TailWarning>) {
        let bad_line = |detail: String| TailWarning::BadLine {
            subject: subject.to_owned(),
            detail,
        };
        let Ok(line) = std::str::from_utf8(payload) else {
            return (None, vec![bad_line("the payload is not UTF-8".to_owned())]);
        };
        let parsed = match ExportLine::parse(line) {
            Ok(parsed) => parsed,
            Err(err) => return (None, vec![bad_line(err.to_string())]),
        };
        let seq = parsed.seq;
        let entry = match parsed.verify() {
            Ok(entry) => entry,
            Err(err @ ExportError::Signature { .. })
            | Err(
                err @ ExportError::Mismatch {
                    field: "signature", ..
                },
            ) => {
                return (
                    None,
                    vec![TailWarning::BadSignature {
                        seq,
                        detail: err.to_string(),
                    }],
                )
            }
            Err(err) => return (None, vec![bad_line(err.to_string())]),
        };
        let mut warnings = Vec::new();
        if msg_id != Some(seq.to_string().as_str()) {
            warnings.push(bad_line(format!(
                "seq {seq} arrived with Nats-Msg-Id {}",
                msg_id.unwrap_or("(none)")
            )));
        }
        if seq < self.from {
            return (None, warnings);
        }
        let hash = entry.hash();
        match self.last {
            Some((last, _)) if seq <= last => {
                warnings.push(TailWarning::Duplicate { seq, after: last });
                return (None, warnings);
            }
            Some((last, last_hash)) if self.whole_log => {
                if seq > last + 1 {
                    warnings.push(TailWarning::Gap {
                        first: last + 1,
                        last: seq - 1,
                    });
                } else if entry.prev != last_hash {
                    warnings.push(TailWarning::Chain { seq });
                }
            }
            None if self.whole_log && seq > self.from => warnings.push(TailWarning::Gap {
                first: self.from,
                last: seq - 1,
            }),
            _ => {}
        }
        self.last = Some((seq, hash));
        let event = match entry.event() {
            Ok(event) => event,
            Err(err) => {
                warnings.push(bad_line(err.to_string()));
                return (None, warnings);
            }
        };
        (
            Some(TailEvent {
                subject: subject.to_owned(),
                entry,
                event,
                line: line.to_owned(),
            }),
            warnings,
        )
    }
}

/// Reads the stream as `options` say, handing each verified event and each warning on, until
/// it has been idle for `options.idle_exit` (or forever).
pub fn tail(
    options: &TailOptions,
    mut on_event: impl FnMut(&TailEvent),
    mut on_warning: impl FnMut(&TailWarning),
) -> Result<TailReport, BusError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| BusError::Runtime(err.to_string()))?;
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(options.url.split(',').map(str::trim).collect::<Vec<_>>())
            .await
            .map_err(|err| BusError::Connect {
                url: options.url.clone(),
                detail: err.to_string(),
            })?;
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream
            .get_stream(STREAM)
            .await
            .map_err(|err| BusError::Stream(err.to_string()))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: options.subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ..OrderedConfig::default()
            })
            .await
            .map_err(|err| BusError::Tail(err.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|err| BusError::Tail(err.to_string()))?;
        let mut checker = Checker::new(options.from, options.subject == STREAM_SUBJECTS);
        let mut report = TailReport::default();
        loop {
            let next = match options.idle_exit {
                Some(idle) => match tokio::time::timeout(idle, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => messages.next().await,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => return Err(BusError::Tail(err.to_string())),
                None => break,
            };
            let msg_id = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get("Nats-Msg-Id"))
                .map(|value| value.as_str().to_owned());
            let (event, warnings) = checker.check(
                message.subject.as_str(),
                msg_id.as_deref(),
                &message.payload,
            );
            for warning in &warnings {
                report.warnings += 1;
                on_warning(warning);
            }
            if let Some(event) = event {
                report.events += 1;
                on_event(&event);
            }
        }
        Ok(report)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_events::{derive_signing_key, Heartbeat, Role, SignedEvent};

    /// Export lines of a chained log of `count` heartbeats.
    fn lines(count: u64) -> Vec<String> {
        let key = derive_signing_key(5, "bus/tests");
        let mut prev = Hash32::default();
        (0..count)
            .map(|seq| {
                let event = Event::new(
                    Role::Node,
                    seq,
                    seq,
                    Heartbeat {
                        node: "earth.a".into(),
                        running_jobs: 0,
                    },
                );
                let signed = SignedEvent::sign(&event, &key).expect("small");
                let entry = Entry::new(seq, prev, signed);
                prev = entry.hash();
                entry.export_line().expect("encodes")
            })
            .collect()
    }

    fn check(checker: &mut Checker, seq: u64, line: &str) -> Vec<TailWarning> {
        let id = seq.to_string();
        checker
            .check("fabric.events.earth.heartbeat", Some(&id), line.as_bytes())
            .1
    }

    #[test]
    fn a_whole_log_in_order_raises_nothing() {
        let mut checker = Checker::new(0, true);
        for (seq, line) in lines(6).iter().enumerate() {
            assert_eq!(check(&mut checker, seq as u64, line), vec![]);
        }
    }

    #[test]
    fn gaps_duplicates_broken_links_and_wrong_ids_are_named() {
        let log = lines(8);
        let mut checker = Checker::new(0, true);
        check(&mut checker, 0, &log[0]);
        check(&mut checker, 1, &log[1]);
        assert_eq!(
            check(&mut checker, 4, &log[4]),
            vec![TailWarning::Gap { first: 2, last: 3 }]
        );
        assert_eq!(
            check(&mut checker, 1, &log[1]),
            vec![TailWarning::Duplicate { seq: 1, after: 4 }]
        );
        // A line of another log at the next seq: valid on its own, but not linked to seq 4.
        let other = {
            let key = derive_signing_key(6, "bus/tests/other");
            let event = Event::new(
                Role::Node,
                5,
                5,
                Heartbeat {
                    node: "x".into(),
                    running_jobs: 1,
                },
            );
            let signed = SignedEvent::sign(&event, &key).expect("small");
            Entry::new(5, Hash32([9; 32]), signed)
                .export_line()
                .expect("encodes")
        };
        assert_eq!(
            check(&mut checker, 5, &other),
            vec![TailWarning::Chain { seq: 5 }]
        );
        let warnings = checker
            .check(
                "fabric.events.earth.heartbeat",
                Some("99"),
                log[6].as_bytes(),
            )
            .1;
        assert!(
            matches!(
                &warnings[..],
                [TailWarning::BadLine { .. }, TailWarning::Chain { seq: 6 }]
            ),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_changed_signature_is_a_bad_signature() {
        let log = lines(3);
        let at = log[1].find("\"signature\":\"").expect("a signature") + 13;
        let mut damaged = log[1].clone().into_bytes();
        damaged[at] = if damaged[at] == b'0' { b'1' } else { b'0' };
        let damaged = String::from_utf8(damaged).expect("ascii");
        let mut checker = Checker::new(0, true);
        check(&mut checker, 0, &log[0]);
        let warnings = check(&mut checker, 1, &damaged);
        assert!(
            matches!(&warnings[..], [TailWarning::BadSignature { seq: 1, .. }]),
            "{warnings:?}"
        );
        assert!(warnings[0]
            .to_string()
            .starts_with("bad signature at seq 1"));
    }

    #[test]
    fn a_start_after_from_is_a_gap_unless_subjects_are_filtered() {
        let log = lines(4);
        let mut whole = Checker::new(1, true);
        assert_eq!(
            check(&mut whole, 3, &log[3]),
            vec![TailWarning::Gap { first: 1, last: 2 }]
        );
        let mut filtered = Checker::new(1, false);
        assert_eq!(check(&mut filtered, 3, &log[3]), vec![]);
        // Below --from: skipped without a word.
        let mut late = Checker::new(2, true);
        assert_eq!(check(&mut late, 0, &log[0]), vec![]);
    }
}
