//! `genesis.json` of the genesis ceremony (docs/FORMAT.md §10.2): the `fabric_genesis` event
//! of a fabric whose keys its operator and owners hold, signed by its ledger key when `fabric
//! init` writes the data folder, and read back (checked) by `fabric init --commit`.

use std::path::{Path, PathBuf};

use fabric_events::{Body, Event, KeyOrigin, SignedEvent};
use serde::{Deserialize, Serialize};

use crate::wire::{WireError, WireSignedEvent};

/// Version of `genesis.json`.
pub const GENESIS_FILE_FORMAT: u32 = 1;

const DESCRIPTION: &str =
    "Fabric genesis: the fabric_genesis event signed by the ledger key (docs/FORMAT.md §10.2)";

/// The signed genesis event of a data folder, as `fabric init` wrote it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisFile {
    /// Version of this file.
    pub format: u32,
    /// What the file is.
    pub description: String,
    /// The `fabric_genesis` event signed by the ledger key.
    pub event: WireSignedEvent,
}

/// Why a genesis file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GenesisFileError {
    /// The file could not be read (`fabric init` writes it).
    #[error("cannot read {}: `fabric init` writes it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: fabric_events::fs::WriteError,
    },
    /// Not JSON of the file's shape.
    #[error("{} is not a genesis file", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Another version of the file.
    #[error("{}: format {found} is not supported (this build reads format {GENESIS_FILE_FORMAT})", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
    /// The event's fields do not decode.
    #[error("{}: the signed event does not decode", path.display())]
    Wire {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: WireError,
    },
    /// The signature does not verify, or the event is not an operator genesis signed by the
    /// ledger key it names.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl GenesisFile {
    /// Writes `signed` (a genesis signed by its ledger key) to `path` atomically.
    pub fn save(path: &Path, signed: &SignedEvent) -> Result<(), GenesisFileError> {
        let file = GenesisFile {
            format: GENESIS_FILE_FORMAT,
            description: DESCRIPTION.to_owned(),
            event: WireSignedEvent::from_signed(signed),
        };
        let text =
            serde_json::to_string_pretty(&file).map_err(|source| GenesisFileError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        fabric_events::fs::write_atomically(path, text.as_bytes()).map_err(|source| {
            GenesisFileError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Reads the genesis at `path`: a `fabric_genesis` of key origin `operator` whose
    /// signature by the ledger key it names verifies.
    pub fn load(path: &Path) -> Result<(SignedEvent, Event), GenesisFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| GenesisFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: GenesisFile =
            serde_json::from_str(&text).map_err(|source| GenesisFileError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if file.format != GENESIS_FILE_FORMAT {
            return Err(GenesisFileError::Format {
                path: path.to_path_buf(),
                found: file.format,
            });
        }
        let signed = file
            .event
            .decode()
            .map_err(|source| GenesisFileError::Wire {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |reason: String| GenesisFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        signed
            .verify()
            .map_err(|error| invalid(format!("the signature does not verify: {error}")))?;
        let event = signed
            .event()
            .map_err(|error| invalid(format!("the event does not decode: {error}")))?;
        match &event.body {
            Body::FabricGenesis(genesis)
                if genesis.key_origin == KeyOrigin::Operator
                    && genesis.ledger_key == signed.author =>
            {
                Ok((signed, event))
            }
            _ => Err(invalid(
                "not an operator fabric_genesis signed by its own ledger key".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_events::{derive_signing_key, FabricGenesis, PublicKey, Role};

    fn genesis(key_origin: KeyOrigin, ledger_key: PublicKey) -> Event {
        Event::new(
            Role::Ledger,
            0,
            0,
            FabricGenesis {
                ledger_key,
                owners: vec![PublicKey([7; 32])],
                owner_threshold: 1,
                key_origin,
            },
        )
    }

    #[test]
    fn an_operator_genesis_round_trips_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("genesis.json");
        let key = derive_signing_key(3, "genesis file test");
        let public = PublicKey::from(&key.verifying_key());
        let event = genesis(KeyOrigin::Operator, public);
        let signed = SignedEvent::sign(&event, &key).unwrap();
        GenesisFile::save(&path, &signed).unwrap();
        assert_eq!(GenesisFile::load(&path).unwrap(), (signed, event));

        for wrong in [
            genesis(KeyOrigin::Simulation { seed: 1 }, public),
            genesis(KeyOrigin::Operator, PublicKey([9; 32])),
        ] {
            GenesisFile::save(&path, &SignedEvent::sign(&wrong, &key).unwrap()).unwrap();
            assert!(matches!(
                GenesisFile::load(&path),
                Err(GenesisFileError::Invalid { .. })
            ));
        }
        let mut tampered = SignedEvent::sign(&genesis(KeyOrigin::Operator, public), &key).unwrap();
        let last = tampered.signed.len() - 40;
        tampered.signed[last] ^= 1;
        GenesisFile::save(&path, &tampered).unwrap();
        let refused = GenesisFile::load(&path).unwrap_err().to_string();
        assert!(refused.contains("signature does not verify"), "{refused}");
    }
}
