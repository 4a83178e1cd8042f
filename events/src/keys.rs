//! ed25519 keys: fresh ones from the operating system's randomness, deterministic ones derived
//! from a seed (simulations), and key files.
//!
//! A secret key file is one JSON object on one line:
//! `{"format":"fabric-ed25519-secret-key-v1","secret_key":"<64 hex>","public_key":"<64 hex>"}`,
//! created with mode 0600. Loading refuses a file that group or others may read, like ssh does.
//! A public key file is `{"format":"fabric-ed25519-public-key-v1","public_key":"<64 hex>"}`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::PublicKey;

const SECRET_FORMAT: &str = "fabric-ed25519-secret-key-v1";
const PUBLIC_FORMAT: &str = "fabric-ed25519-public-key-v1";
const DERIVE_CONTEXT: &str = "fabric 2026-11 ed25519 key derivation v1";

/// What can go wrong with a key or key file.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The secret key file may be read by group or others.
    #[error(
        "{path}: secret key file has permissions {mode:04o}, which lets others read it; \
         run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a key file of the expected format.
    #[error("{path}: not a Fabric key file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file exists and overwriting was not asked for.
    #[error("{path}: already exists; refusing to overwrite a key (remove it first)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// 32 bytes that are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key: {0}")]
    InvalidPublicKey(PublicKey),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyFile {
    format: String,
    secret_key: String,
    public_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFile {
    format: String,
    public_key: String,
}

/// A new key from the operating system's randomness.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// A key derived from `(seed, purpose)`, identical on every machine: a simulation with the
/// same seed signs with the same keys. `purpose` names the holder, e.g. `node/earth.core-alpha`.
///
/// The 32-byte ChaCha20 seed is BLAKE3 in key-derivation mode (context
/// `"fabric 2026-11 ed25519 key derivation v1"`) over `seed` (u64 LE) ‖ `purpose`; the key is
/// the first 32 bytes that ChaCha20 produces from it.
pub fn derive_signing_key(seed: u64, purpose: &str) -> SigningKey {
    let mut hasher = blake3::Hasher::new_derive_key(DERIVE_CONTEXT);
    hasher.update(&seed.to_le_bytes());
    hasher.update(purpose.as_bytes());
    let mut rng = ChaCha20Rng::from_seed(*hasher.finalize().as_bytes());
    SigningKey::generate(&mut rng)
}

/// Parses 32 bytes as a public key, refusing bytes that are not a curve point.
pub fn verifying_key(public: &PublicKey) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(public.as_bytes()).map_err(|_| KeyError::InvalidPublicKey(*public))
}

/// The path of the public key file that goes with a secret key file: `FILE.pub`.
pub fn public_path(secret_path: &Path) -> PathBuf {
    let mut name = secret_path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes a secret key file (mode 0600) and its `.pub` companion, each atomically: written to a
/// temporary file in the same folder, synced, then renamed into place.
pub fn save_secret(path: &Path, key: &SigningKey, overwrite: bool) -> Result<(), KeyError> {
    let public = public_path(path);
    if !overwrite {
        for existing in [path, public.as_path()] {
            if existing.exists() {
                return Err(KeyError::Exists {
                    path: existing.to_path_buf(),
                });
            }
        }
    }
    let secret = SecretKeyFile {
        format: SECRET_FORMAT.to_owned(),
        secret_key: hex::encode(key.to_bytes()),
        public_key: hex::encode(key.verifying_key().to_bytes()),
    };
    write_atomic(path, &to_json_line(&secret), 0o600)?;
    save_public(&public, &key.verifying_key())
}

/// Writes a public key file (mode 0644) atomically.
pub fn save_public(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    let file = PublicKeyFile {
        format: PUBLIC_FORMAT.to_owned(),
        public_key: hex::encode(key.to_bytes()),
    };
    write_atomic(path, &to_json_line(&file), 0o644)
}

/// Reads a secret key file, refusing one that group or others may read, and checking that its
/// public key matches its secret key.
pub fn load_secret(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let malformed = |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let metadata = fs::metadata(path).map_err(io)?;
    check_private(path, &metadata)?;
    let text = fs::read_to_string(path).map_err(io)?;
    let file: SecretKeyFile = serde_json::from_str(text.trim_end())
        .map_err(|err| malformed(format!("invalid JSON: {err}")))?;
    if file.format != SECRET_FORMAT {
        return Err(malformed(format!(
            "format is {:?}, expected {SECRET_FORMAT:?}",
            file.format
        )));
    }
    let secret = crate::hex_serde::decode_fixed::<32>(&file.secret_key)
        .map_err(|reason| malformed(format!("secret_key: {reason}")))?;
    let key = SigningKey::from_bytes(&secret);
    let public = crate::hex_serde::decode_fixed::<32>(&file.public_key)
        .map_err(|reason| malformed(format!("public_key: {reason}")))?;
    if key.verifying_key().to_bytes() != public {
        return Err(malformed(
            "public_key does not belong to secret_key".to_owned(),
        ));
    }
    Ok(key)
}

/// Reads a public key file.
pub fn load_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let malformed = |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file: PublicKeyFile = serde_json::from_str(text.trim_end())
        .map_err(|err| malformed(format!("invalid JSON: {err}")))?;
    if file.format != PUBLIC_FORMAT {
        return Err(malformed(format!(
            "format is {:?}, expected {PUBLIC_FORMAT:?}",
            file.format
        )));
    }
    let public = crate::hex_serde::decode_fixed::<32>(&file.public_key)
        .map_err(|reason| malformed(format!("public_key: {reason}")))?;
    verifying_key(&PublicKey(public)).map_err(|err| malformed(err.to_string()))
}

fn to_json_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("key files serialise to JSON");
    line.push(b'\n');
    line
}

#[cfg(unix)]
fn check_private(path: &Path, metadata: &fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _metadata: &fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| KeyError::Malformed {
        path: path.to_path_buf(),
        reason: "the path names no file".to_owned(),
    })?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(file_name);
    temporary_name.push(format!(".tmp-{}", std::process::id()));
    let temporary = folder.join(temporary_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = (|| {
        let mut file = options.open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        fs::File::open(&folder)?.sync_all()
    })();
    if written.is_err() {
        // Best effort: leave no half-written temporary behind.
        let _ = fs::remove_file(&temporary);
    }
    written.map_err(io)
}
