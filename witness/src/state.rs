//! The witness's durable state (docs/FORMAT.md §17.4): per log, the last head it cosigned
//! (its note with the cosignature) and the fork it saw, if any; and the evidence folder.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fabric_events::Hash32;
use serde::{Deserialize, Serialize};

use crate::WitnessError;

/// The state file in the state folder.
pub const STATE_FILE: &str = "state.json";
/// The evidence folder in the state folder.
pub const FORKS_DIR: &str = "forks";
/// The most bytes the state file may have (64 logs of notes with a fork each fit).
const STATE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Everything the witness remembers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessState {
    /// Per log origin.
    pub logs: BTreeMap<String, LogState>,
}

/// What the witness remembers of one log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogState {
    /// The size of the last head it cosigned.
    pub tree_size: u64,
    /// That head's note, with the log's signature and this witness's cosignature.
    pub note: String,
    /// The fork it saw: once set, it cosigns nothing more of this log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork: Option<Fork>,
}

/// Two signed heads of one log that cannot both be true.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fork {
    /// What is wrong, in words.
    pub detail: String,
    /// The note the witness had cosigned (with its cosignature).
    pub cosigned: String,
    /// The note that contradicts it, as the log signed it.
    pub seen: String,
    /// The consistency path the log gave between them (empty for two heads of one size).
    pub path: Vec<Hash32>,
}

impl WitnessState {
    /// Reads `dir/state.json`, or an empty state when the folder has none (the folder is
    /// made).
    pub fn load(dir: &Path) -> Result<Self, WitnessError> {
        let failed = |path: &Path, detail: String| WitnessError::State {
            path: path.to_path_buf(),
            detail,
        };
        fs::create_dir_all(dir.join(FORKS_DIR)).map_err(|error| failed(dir, error.to_string()))?;
        let path = dir.join(STATE_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(error) => return Err(failed(&path, error.to_string())),
        };
        let length = file
            .metadata()
            .map_err(|error| failed(&path, error.to_string()))?
            .len();
        if length > STATE_BYTES_MAX {
            return Err(failed(
                &path,
                format!("{length} bytes (at most {STATE_BYTES_MAX})"),
            ));
        }
        serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|error| failed(&path, format!("not a witness state: {error}")))
    }

    /// Writes `dir/state.json` durably: a new file, synced, renamed over the old, and the
    /// folder synced, so that a crash leaves the old state or the new one whole.
    pub fn save(&self, dir: &Path) -> Result<(), WitnessError> {
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|error| WitnessError::State {
            path: path.clone(),
            detail: error.to_string(),
        })?;
        write_durably(dir, &path, &bytes)
    }

    /// Writes the evidence of `fork` in `dir/forks/`: both notes, what is wrong and the path.
    /// The file's path.
    pub fn keep_evidence(&self, dir: &Path, fork: &Fork) -> Result<PathBuf, WitnessError> {
        let folder = dir.join(FORKS_DIR);
        let taken = fs::read_dir(&folder)
            .map(|entries| entries.count())
            .unwrap_or(0);
        let path = folder.join(format!("fork-{}.json", taken + 1));
        let bytes = serde_json::to_vec_pretty(fork).map_err(|error| WitnessError::State {
            path: path.clone(),
            detail: error.to_string(),
        })?;
        write_durably(&folder, &path, &bytes)?;
        Ok(path)
    }

    /// Whether the witness saw a fork of any log.
    pub fn forked(&self) -> bool {
        self.logs.values().any(|log| log.fork.is_some())
    }
}

fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), WitnessError> {
    let failed = |what: &str, error: std::io::Error| WitnessError::State {
        path: path.to_path_buf(),
        detail: format!("{what}: {error}"),
    };
    let partial = path.with_extension("partial");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .map_err(|error| failed("creating", error))?;
    file.write_all(bytes)
        .map_err(|error| failed("writing", error))?;
    file.sync_all().map_err(|error| failed("syncing", error))?;
    fs::rename(&partial, path).map_err(|error| failed("renaming", error))?;
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(|error| failed("syncing its folder", error))
}
