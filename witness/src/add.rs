//! A fabric asks a witness to cosign its head (docs/FORMAT.md §17.5, after C2SP
//! tlog-witness `add-checkpoint`): the note, the size the fabric believes the witness last
//! cosigned, and the consistency path from there. The request may come from anyone: the
//! note's signature is checked first, a path that does not hold is refused (422) and is no
//! evidence of a fork (whoever sent it chose it), and only two heads of one size signed by
//! the log's key are.

use fabric_events::Hash32;
use fabric_ledger::merkle::{verify_consistency, ConsistencyProof};
use fabric_ledger::note::{base64_hash, CheckpointNote};

use crate::{Last, Witness, WitnessError};

/// The most bytes of a request body.
pub const ADD_REQUEST_BYTES_MAX: usize = 24 * 1024;
/// The most consistency path lines (a path of a tree of 2^63 leaves has fewer).
pub const ADD_PROOF_LINES_MAX: usize = 64;

/// A request body read: `old SIZE`, the path (a base64 hash a line), a blank line, the note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddRequest {
    /// The size the sender believes the witness last cosigned (0: none).
    pub old_size: u64,
    /// The consistency path from `old_size` to the note's size.
    pub path: Vec<Hash32>,
    /// The note, as sent.
    pub note: String,
}

/// The witness's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddAnswer {
    /// 200: the cosignature line (`— name base64…\n`) of the note.
    Cosigned(String),
    /// 409: the witness last cosigned another size: this one.
    Conflict(u64),
    /// 422: the path does not lead from the head last cosigned to this one.
    Unproved(String),
    /// 403: no note of a log it witnesses signed by its key, or a forked log.
    Refused(String),
}

impl AddRequest {
    /// Reads a body strictly (at most [`ADD_REQUEST_BYTES_MAX`] bytes).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if body.len() > ADD_REQUEST_BYTES_MAX {
            return Err(format!(
                "{} bytes (at most {ADD_REQUEST_BYTES_MAX})",
                body.len()
            ));
        }
        let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
        let (head, note) = text
            .split_once("\n\n")
            .ok_or("no blank line between the proof and the note")?;
        let mut lines = head.split('\n');
        let old_size = lines
            .next()
            .and_then(|line| line.strip_prefix("old "))
            .and_then(|size| size.parse::<u64>().ok())
            .ok_or("the first line is not `old SIZE`")?;
        let path = lines
            .enumerate()
            .map(|(index, line)| {
                base64_hash(line, &format!("proof line {}", index + 1))
                    .map_err(|error| error.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if path.len() > ADD_PROOF_LINES_MAX {
            return Err(format!(
                "{} proof lines (at most {ADD_PROOF_LINES_MAX})",
                path.len()
            ));
        }
        Ok(Self {
            old_size,
            path,
            note: note.to_owned(),
        })
    }

    /// The body of the request.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let mut out = format!("old {}\n", self.old_size);
        for hash in &self.path {
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(hash.as_bytes()));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }
}

impl Witness {
    /// Judges a request (see the module documentation).
    pub fn add_checkpoint(&mut self, request: &AddRequest) -> Result<AddAnswer, WitnessError> {
        let note = match self.trusted_note(&request.note) {
            Ok(note) => note,
            Err(why) => return Ok(AddAnswer::Refused(why)),
        };
        let cosigned = match self.last_cosigned(&note.origin)? {
            Last::None if request.old_size != 0 => return Ok(AddAnswer::Conflict(0)),
            Last::None => return self.cosigned(note),
            Last::Forked(why) => return Ok(AddAnswer::Refused(why)),
            Last::Cosigned(cosigned) => cosigned,
        };
        if note.tree_size == cosigned.tree_size {
            if note.root != cosigned.root {
                let fork = self.same_size_fork(cosigned, note)?;
                return Ok(AddAnswer::Refused(fork.detail));
            }
            return Ok(AddAnswer::Cosigned(self.own_line(&cosigned)));
        }
        if request.old_size != cosigned.tree_size {
            return Ok(AddAnswer::Conflict(cosigned.tree_size));
        }
        if note.tree_size < cosigned.tree_size {
            return Ok(AddAnswer::Unproved(format!(
                "size {} is below the {} last cosigned",
                note.tree_size, cosigned.tree_size
            )));
        }
        let proof = ConsistencyProof {
            old_size: cosigned.tree_size,
            new_size: note.tree_size,
            path: request.path.clone(),
        };
        if let Err(error) = verify_consistency(&cosigned.root, &note.root, &proof) {
            return Ok(AddAnswer::Unproved(format!(
                "the path does not lead from size {} to {}: {error}",
                cosigned.tree_size, note.tree_size
            )));
        }
        self.cosigned(note)
    }

    fn cosigned(&mut self, note: CheckpointNote) -> Result<AddAnswer, WitnessError> {
        let cosigned = self.cosign(note)?;
        Ok(AddAnswer::Cosigned(self.own_line(&cosigned)))
    }

    /// This witness's signature line of `note`.
    pub(crate) fn own_line(&self, note: &CheckpointNote) -> String {
        note.signatures
            .iter()
            .find(|line| line.name == self.config.name)
            .map(|line| line.line())
            .unwrap_or_default()
    }
}
