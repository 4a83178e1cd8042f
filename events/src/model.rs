//! Models: the job types a served fabric runs on its kernels, and a model's registration
//! (docs/FORMAT.md §1.2, §13.1).
//!
//! A model is a job type and its weights, registered by an owner command
//! ([`OwnerAction::RegisterModel`](crate::OwnerAction::RegisterModel)). Its content address is
//! BLAKE3 of its weights; a job names it by its workload string `model_id@model_version`.
//! [`JobType`] mirrors `fabric_gpu_kernels::models::ModelJob` (same names, kernels and byte
//! sizes; a test in a crate that links both checks they agree), so that the log can be judged
//! without linking the kernels.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::types::Hash32;

/// Most bytes of a model's weights: the registration travels inline in one owner command,
/// which must fit an event (`MAX_EVENT_BYTES`).
pub const MODEL_WEIGHTS_MAX_BYTES: usize = 8_192;
/// Most bytes of a model id or a model version.
pub const MODEL_NAME_MAX_BYTES: usize = 64;
/// Most diffusion steps a `predict_next_state` model may ask for.
pub const PREDICT_STEPS_MAX: u32 = 64;
/// Largest right shift of a `predict_next_state` model (a shift of an i32 by 32 or more is
/// not defined).
pub const PREDICT_SHIFT_MAX: u32 = 31;

/// The job type of a model: which kernel runs it and the sizes of its input, weights and
/// output. Variants are appended, never reordered.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    /// `encode_state` on `embed` v1: state 16×64 int8 times projection 16×64 int8 transposed.
    EncodeState,
    /// `score_sequence` on `rerank` v1: the 8 best of 128 corpus rows for each of 4 queries.
    ScoreSequence,
    /// `predict_next_state` on `simulate` v1: diffusion steps on a 32×32 grid of i32.
    PredictNextState,
}

impl JobType {
    /// Every job type, in tag order.
    pub const ALL: [JobType; 3] = [
        JobType::EncodeState,
        JobType::ScoreSequence,
        JobType::PredictNextState,
    ];

    /// Its name (`encode_state`, `score_sequence`, `predict_next_state`).
    pub fn name(self) -> &'static str {
        match self {
            JobType::EncodeState => "encode_state",
            JobType::ScoreSequence => "score_sequence",
            JobType::PredictNextState => "predict_next_state",
        }
    }

    /// The job type of a name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|job| job.name() == name)
    }

    /// The id of the kernel it runs on (a receipt's `kernel.id`).
    pub fn kernel_id(self) -> &'static str {
        match self {
            JobType::EncodeState => "embed",
            JobType::ScoreSequence => "rerank",
            JobType::PredictNextState => "simulate",
        }
    }

    /// The version of the kernel it runs on (a receipt's `kernel.version`).
    pub fn kernel_version(self) -> u32 {
        1
    }

    /// Bytes of a job's input.
    pub fn input_bytes(self) -> usize {
        match self {
            JobType::EncodeState => 16 * 64,
            JobType::ScoreSequence => 4 * 64,
            JobType::PredictNextState => 32 * 32 * 4,
        }
    }

    /// Bytes of a model's weights.
    pub fn weights_bytes(self) -> usize {
        match self {
            JobType::EncodeState => 16 * 64,
            JobType::ScoreSequence => 128 * 64,
            JobType::PredictNextState => 12,
        }
    }

    /// Bytes of a job's output.
    pub fn output_bytes(self) -> usize {
        match self {
            JobType::EncodeState => 16 * 16 * 4,
            JobType::ScoreSequence => 4 * 8 * 8,
            JobType::PredictNextState => 32 * 32 * 4,
        }
    }

    /// Why `weights` are not weights of this job type, if they are not: the wrong size, or
    /// for `predict_next_state` (alpha i32 LE ‖ shift u32 LE ‖ steps u32 LE) a shift over
    /// [`PREDICT_SHIFT_MAX`] or steps outside 1..=[`PREDICT_STEPS_MAX`].
    pub fn check_weights(self, weights: &[u8]) -> Result<(), String> {
        if weights.len() != self.weights_bytes() {
            return Err(format!(
                "weights of a {} model have {} bytes, not {}",
                self.name(),
                weights.len(),
                self.weights_bytes()
            ));
        }
        if self == JobType::PredictNextState {
            let word = |at: usize| {
                u32::from_le_bytes([
                    weights[at],
                    weights[at + 1],
                    weights[at + 2],
                    weights[at + 3],
                ])
            };
            let (shift, steps) = (word(4), word(8));
            if shift > PREDICT_SHIFT_MAX || steps == 0 || steps > PREDICT_STEPS_MAX {
                return Err(format!(
                    "predict_next_state weights need shift <= {PREDICT_SHIFT_MAX} and \
                     1 <= steps <= {PREDICT_STEPS_MAX}, not shift {shift} and steps {steps}"
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for JobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A model joins the fabric (carried by
/// [`OwnerAction::RegisterModel`](crate::OwnerAction::RegisterModel)).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRegistered {
    /// The model's id, e.g. `state-encoder` (1 to 64 bytes of `[a-z0-9._-]`).
    pub model_id: String,
    /// Its version, e.g. `1.0` (same rule as the id).
    pub model_version: String,
    /// Its job type.
    pub job_type: JobType,
    /// Its weights (hex in JSON), exactly the job type's weights size.
    #[serde(with = "crate::hex_serde")]
    pub weights: Vec<u8>,
}

impl ModelRegistered {
    /// The workload string jobs of this model carry: `model_id@model_version`.
    pub fn workload(&self) -> String {
        workload(&self.model_id, &self.model_version)
    }

    /// The model's content address: BLAKE3 of its weights.
    pub fn weights_hash(&self) -> Hash32 {
        Hash32(*blake3::hash(&self.weights).as_bytes())
    }

    /// Why this registration cannot be a model, if it cannot: an id or version that is empty,
    /// over [`MODEL_NAME_MAX_BYTES`] or has a character outside `[a-z0-9._-]`, or weights
    /// that do not fit the job type.
    pub fn check(&self) -> Result<(), String> {
        check_model_name("model id", &self.model_id)?;
        check_model_name("model version", &self.model_version)?;
        self.job_type
            .check_weights(&self.weights)
            .map_err(|problem| format!("model `{}`: {problem}", self.workload()))
    }
}

/// The workload string of a model: `model_id@model_version`.
pub fn workload(model_id: &str, model_version: &str) -> String {
    format!("{model_id}@{model_version}")
}

/// Why `name` cannot be a model id or version (`what`), if it cannot.
pub fn check_model_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if name.len() > MODEL_NAME_MAX_BYTES {
        return Err(format!(
            "the {what} has {} bytes, more than {MODEL_NAME_MAX_BYTES}",
            name.len()
        ));
    }
    if let Some(bad) = name.chars().find(|c| !is_model_name_char(*c)) {
        return Err(format!(
            "the {what} `{}` has the character {bad:?}; only a-z, 0-9, `.`, `_` and `-` are allowed",
            name.escape_default()
        ));
    }
    Ok(())
}

fn is_model_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predict(shift: u32, steps: u32) -> Vec<u8> {
        [1i32.to_le_bytes(), shift.to_le_bytes(), steps.to_le_bytes()].concat()
    }

    #[test]
    fn names_round_trip_and_sizes_fit_an_event() {
        for job in JobType::ALL {
            assert_eq!(JobType::from_name(job.name()), Some(job));
            assert!(job.weights_bytes() <= MODEL_WEIGHTS_MAX_BYTES);
            assert_eq!(job.kernel_version(), 1);
        }
        assert_eq!(JobType::from_name("encode"), None);
        let registration = ModelRegistered {
            model_id: "corpus".to_owned(),
            model_version: "1".to_owned(),
            job_type: JobType::ScoreSequence,
            weights: vec![0x7f; MODEL_WEIGHTS_MAX_BYTES],
        };
        let command = crate::Event::new(
            crate::Role::Owner,
            1,
            1,
            crate::OwnerCommand {
                action: crate::OwnerAction::RegisterModel { registration },
                expiry_tick: 10,
                approvals: vec![
                    crate::Approval {
                        owner: crate::PublicKey([1; 32]),
                        signature: crate::SignatureBytes([2; 64]),
                    };
                    16
                ],
            },
        );
        crate::encode_event(&command).expect("the largest model fits an event with 16 approvals");
    }

    #[test]
    fn weights_are_checked_like_the_kernels_check_them() {
        assert!(JobType::PredictNextState
            .check_weights(&predict(31, 64))
            .is_ok());
        let error = JobType::PredictNextState
            .check_weights(&predict(3, 0))
            .expect_err("no steps");
        assert!(error.contains("steps 0"), "{error}");
        let error = JobType::PredictNextState
            .check_weights(&predict(32, 1))
            .expect_err("shift 32");
        assert!(error.contains("shift 32"), "{error}");
        assert!(JobType::PredictNextState
            .check_weights(&predict(3, 65))
            .is_err());
        let error = JobType::EncodeState
            .check_weights(&[0; 1023])
            .expect_err("short");
        assert!(error.contains("1023 bytes, not 1024"), "{error}");
    }

    #[test]
    fn model_names_are_short_lowercase_words() {
        for good in ["a", "state-encoder", "v1.2_rc-3", &"x".repeat(64)] {
            assert!(check_model_name("model id", good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "is empty"),
            (&"x".repeat(65) as &str, "65 bytes"),
            ("Encoder", "'E'"),
            ("a@b", "'@'"),
            ("a b", "' '"),
            ("é", "'é'"),
        ] {
            let error = check_model_name("model id", bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
        let model = ModelRegistered {
            model_id: "enc".to_owned(),
            model_version: "2".to_owned(),
            job_type: JobType::PredictNextState,
            weights: predict(3, 16),
        };
        assert_eq!(model.workload(), "enc@2");
        assert_eq!(
            model.weights_hash(),
            Hash32(*blake3::hash(&model.weights).as_bytes())
        );
        assert!(model.check().is_ok());
    }
}
