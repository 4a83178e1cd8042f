//! Key files of a fabric whose keys its operator and owners hold: the public keys the genesis
//! ceremony (`fabric init`) registers, the secrets `fabric serve` signs with, each checked
//! against the key the log registered, and the operator's key folder of a world (`fabric
//! keygen --world`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fabric_events::{keys, PublicKey, SigningKey};
use fabric_ledger::Ledger;
use fabric_projections::State;

use crate::world::World;

/// The ledger key's file in the folder `fabric keygen --world` writes.
pub const LEDGER_KEY_FILE: &str = "ledger.key";
/// The folder of router keys (`<shard>.key`) in the folder `fabric keygen --world` writes.
pub const ROUTER_KEYS_DIR: &str = "routers";
/// The folder of node keys (`<node>.key`) in the folder `fabric keygen --world` writes.
pub const NODE_KEYS_DIR: &str = "nodes";

/// What went wrong with a key file; each message names the flag, the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// A key given does not fit (duplicated, unregistered, another key than the log's).
    #[error("{0}")]
    Refused(String),
    /// A key file could not be read, written or used; `context` names it.
    #[error("{context}")]
    Failed {
        /// The flag and the file.
        context: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl KeyFileError {
    fn failed(context: String, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        KeyFileError::Failed {
            context,
            source: Box::new(source),
        }
    }
}

/// The public key of a secret key.
pub fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from(&key.verifying_key())
}

/// The secret key in `path`, given with `flag`.
pub fn load_secret(path: &Path, flag: &str) -> Result<SigningKey, KeyFileError> {
    keys::load_secret(path).map_err(|err| {
        KeyFileError::failed(
            format!("{flag} {}: cannot load the secret key", path.display()),
            err,
        )
    })
}

/// The public key in `path`, given as `what`.
pub fn load_public(path: &Path, what: &str) -> Result<PublicKey, KeyFileError> {
    let key = keys::load_public(path).map_err(|err| {
        KeyFileError::failed(
            format!("{what}: cannot load the public key {}", path.display()),
            err,
        )
    })?;
    Ok(PublicKey::from(&key))
}

/// The owners' public keys (`--owner`): distinct, at least `threshold` of them, `threshold`
/// ≥ 1.
pub fn owner_keys(paths: &[PathBuf], threshold: u32) -> Result<Vec<PublicKey>, KeyFileError> {
    let mut owners = Vec::with_capacity(paths.len());
    let mut seen = BTreeSet::new();
    for path in paths {
        let key = load_public(path, "--owner")?;
        if !seen.insert(key) {
            return Err(KeyFileError::Refused(format!(
                "--owner {}: the same key as an earlier --owner ({key}); owners must be distinct",
                path.display()
            )));
        }
        owners.push(key);
    }
    if !(threshold >= 1 && threshold as usize <= owners.len()) {
        return Err(KeyFileError::Refused(format!(
            "--threshold {threshold}: must be between 1 and the number of owners ({})",
            owners.len()
        )));
    }
    Ok(owners)
}

/// The clients of `--client NAME=FILE.pub` pairs.
pub fn client_keys(specs: &[String]) -> Result<Vec<(String, PublicKey)>, KeyFileError> {
    let mut names = BTreeSet::new();
    let mut clients = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((name, path)) = spec
            .split_once('=')
            .filter(|(name, path)| !name.is_empty() && !path.is_empty())
        else {
            return Err(KeyFileError::Refused(format!(
                "--client {spec}: expected NAME=FILE.pub"
            )));
        };
        if !names.insert(name.to_owned()) {
            return Err(KeyFileError::Refused(format!(
                "--client {name} is given twice"
            )));
        }
        let key = load_public(Path::new(path), &format!("--client {name}"))?;
        clients.push((name.to_owned(), key));
    }
    Ok(clients)
}

/// The public key of each of `names` in `dir` (given with `flag`): `<name>.key.pub` (as
/// `fabric keygen` writes it) or `<name>.pub`.
pub fn public_keys_of<'a>(
    dir: &Path,
    flag: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<PublicKey>, KeyFileError> {
    names
        .map(|name| {
            let path = [format!("{name}.key.pub"), format!("{name}.pub")]
                .into_iter()
                .map(|file| dir.join(file))
                .find(|path| path.is_file())
                .ok_or_else(|| {
                    KeyFileError::Refused(format!(
                        "{flag} {}: no public key of {name} ({name}.key.pub or {name}.pub)",
                        dir.display()
                    ))
                })?;
            load_public(&path, &format!("{flag} ({name})"))
        })
        .collect()
}

/// The state of the stored log, to check the keys against what it registered.
pub fn current_state(ledger: &Ledger) -> Result<State, KeyFileError> {
    let restored = crate::restore(&ledger.reader(), &ledger.ledger_key()).map_err(|err| {
        KeyFileError::failed("could not restore the state of the log".to_owned(), err)
    })?;
    let mut state = restored.state;
    for (event, signed) in &restored.stored {
        state.admit(&signed.author, event).map_err(|err| {
            KeyFileError::Refused(format!("the stored log does not fit its state: {err}"))
        })?;
    }
    Ok(state)
}

/// The secret key of each `(name, registered key)` from `dir/<name>.key` (given with `flag`),
/// which must be the key the log registered for it, or the key it held before a rotation to a
/// `staged` key.
pub fn registered_keys<'a>(
    dir: &Path,
    flag: &str,
    staged: &[SigningKey],
    names: impl Iterator<Item = (&'a str, Option<PublicKey>)>,
) -> Result<Vec<SigningKey>, KeyFileError> {
    names
        .map(|(name, registered)| {
            let path = dir.join(format!("{name}.key"));
            let key = keys::load_secret(&path).map_err(|err| {
                KeyFileError::failed(format!("{flag}: cannot load the key of {name}"), err)
            })?;
            let given = public(&key);
            let Some(registered) = registered else {
                return Err(KeyFileError::Refused(format!(
                    "{flag}: {name} is not registered in the log"
                )));
            };
            let rotated_to_staged = staged
                .iter()
                .any(|secret| public(secret) == registered);
            if !(given == registered || rotated_to_staged) {
                return Err(KeyFileError::Refused(format!(
                    "{flag}: {} holds the key {given}, but the log registered {registered} for {name}",
                    path.display()
                )));
            }
            Ok(key)
        })
        .collect()
}

/// The router keys (`--router-keys`) of `world` from their folder, each checked against the key `state` registered (or a rotation to a `staged` key).
pub fn registered_router_keys(
    world: &World,
    state: &State,
    router_keys: &Path,
    staged: &[SigningKey],
) -> Result<Vec<SigningKey>, KeyFileError> {
    registered_keys(
        router_keys,
        "--router-keys",
        staged,
        world.shards.iter().map(|shard| {
            let registered = state.shards().iter().find(|s| s.name == shard.name);
            (shard.name.as_str(), registered.map(|s| s.router_key))
        }),
    )
}

/// Writes the operator's keys of `world` into `out` (`fabric keygen --world`):
/// `out/ledger.key`, `out/routers/<shard>.key`, `out/nodes/<node>.key`, each mode 0600 with
/// its `.pub`; existing files are replaced only with `force`. Returns the secret keys' paths.
pub fn write_world_keys(
    world: &World,
    out: &Path,
    force: bool,
) -> Result<Vec<PathBuf>, KeyFileError> {
    let mut paths = vec![out.join(LEDGER_KEY_FILE)];
    paths.extend(world.shards.iter().map(|shard| {
        out.join(ROUTER_KEYS_DIR)
            .join(format!("{}.key", shard.name))
    }));
    paths.extend(
        world
            .nodes
            .iter()
            .map(|node| out.join(NODE_KEYS_DIR).join(format!("{}.key", node.name))),
    );
    for dir in [out.join(ROUTER_KEYS_DIR), out.join(NODE_KEYS_DIR)] {
        std::fs::create_dir_all(&dir).map_err(|err| {
            KeyFileError::failed(format!("could not create {}", dir.display()), err)
        })?;
    }
    for path in &paths {
        keys::save_secret(path, &keys::generate(), force).map_err(|err| {
            KeyFileError::failed(
                format!("could not write the key to {}", path.display()),
                err,
            )
        })?;
    }
    Ok(paths)
}
