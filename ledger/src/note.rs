//! Tree heads as checkpoints in the transparency-log ecosystem's text format: a C2SP
//! tlog-checkpoint (c2sp.org/tlog-checkpoint) in a signed note (c2sp.org/signed-note), signed
//! with Ed25519 by the ledger key in force (docs/FORMAT.md §17). Standard note verifiers check
//! its signature; witnesses cosign it.
//!
//! ```text
//! fabric/3f0a…(32 hex digits)
//! 1234
//! <base64 of the 32-byte root>
//!
//! — fabric/3f0a… <base64 of key ID (4 bytes) ‖ signature (64 bytes)>
//! ```
//!
//! The note text is the origin, the tree size and the root, each on a line ending in a
//! newline. The root is Fabric's Merkle root: RFC 9162's tree with BLAKE3 for SHA-256
//! (docs/FORMAT.md §4), not RFC 6962's SHA-256 tree. The origin names the log, whatever
//! key signs it: `fabric/` and the first 16 bytes of the genesis entry's hash in lowercase
//! hex. Its first byte, a lowercase `f`, starts neither an event message nor a tree head
//! message (`FABRICv1…`), so no signature by a ledger key is valid as two of them.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::Signer;
use fabric_events::wire::verify_signature;
use fabric_events::{Hash32, PublicKey, SignatureBytes, SigningKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// What starts every origin of a Fabric log.
pub const ORIGIN_PREFIX: &str = "fabric/";
/// Bytes of the genesis hash an origin names (in hex, twice as many digits).
const ORIGIN_HASH_BYTES: usize = 16;
/// The signed-note signature type of Ed25519 (c2sp.org/signed-note).
pub const ED25519_SIGNATURE_TYPE: u8 = 0x01;
/// The signed-note signature type of timestamped Ed25519 witness cosignatures
/// (c2sp.org/tlog-cosignature).
pub const COSIGNATURE_TYPE: u8 = 0x04;
/// The first line of what a cosignature signs.
const COSIGNATURE_HEADER: &str = "cosignature/v1";
/// The most signature lines a note may carry (the format asks verifiers to accept 16); more
/// is refused, so that a note's size is bounded.
pub const NOTE_SIGNATURES_MAX: usize = 32;
/// The most bytes a note may have: text, blank line and signature lines.
pub const NOTE_BYTES_MAX: usize = 16 * 1024;
/// The longest key name a signature line may have.
const KEY_NAME_BYTES_MAX: usize = 256;
/// The em dash (U+2014) and space that start a signature line.
const SIGNATURE_LINE_START: &str = "\u{2014} ";

/// Why text is not a checkpoint, or its signature does not verify.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("checkpoint note: {0}")]
pub struct NoteError(String);

fn fail<T>(why: impl Into<String>) -> Result<T, NoteError> {
    Err(NoteError(why.into()))
}

/// The origin of the log whose genesis entry (seq 0) has `genesis_hash`.
pub fn origin_of(genesis_hash: &Hash32) -> String {
    let hex: String = genesis_hash.as_bytes()[..ORIGIN_HASH_BYTES]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{ORIGIN_PREFIX}{hex}")
}

/// The note key ID of an Ed25519 key named `name`: the first 4 bytes, big-endian, of
/// SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).
pub fn key_id(name: &str, key: &PublicKey) -> u32 {
    typed_key_id(name, ED25519_SIGNATURE_TYPE, key)
}

/// The key ID of a witness's Ed25519 cosigning key named `name`: as [`key_id`] with type
/// 0x04.
pub fn cosigner_key_id(name: &str, key: &PublicKey) -> u32 {
    typed_key_id(name, COSIGNATURE_TYPE, key)
}

fn typed_key_id(name: &str, signature_type: u8, key: &PublicKey) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', signature_type]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The verifier key string of note tools (`name+hex key ID+base64(0x01 ‖ public key)`), as
/// `golang.org/x/mod/sumdb/note` reads it.
pub fn verifier_key(name: &str, key: &PublicKey) -> String {
    typed_verifier_key(name, ED25519_SIGNATURE_TYPE, key)
}

/// A witness's cosigner verifier key (`name+hex key ID+base64(0x04 ‖ public key)`).
pub fn cosigner_verifier_key(name: &str, key: &PublicKey) -> String {
    typed_verifier_key(name, COSIGNATURE_TYPE, key)
}

fn typed_verifier_key(name: &str, signature_type: u8, key: &PublicKey) -> String {
    let mut typed = Vec::with_capacity(33);
    typed.push(signature_type);
    typed.extend_from_slice(key.as_bytes());
    let id = typed_key_id(name, signature_type, key);
    format!("{name}+{id:08x}+{}", BASE64.encode(typed))
}

/// A fabric's checkpoint verifier key (type 0x01) read back: its origin and ledger key.
pub fn parse_log_verifier_key(vkey: &str) -> Result<(String, PublicKey), NoteError> {
    match parse_verifier_key(vkey)? {
        (origin, ED25519_SIGNATURE_TYPE, key) => Ok((origin, key)),
        _ => fail(format!(
            "{vkey} is no fabric's checkpoint verifier key (type 0x01): its /v0/health or its \
             `fabric init --commit` gives it"
        )),
    }
}

/// A verifier key read back: its name, and the Ed25519 key of a note signature (type 0x01)
/// or of a cosignature (0x04).
pub fn parse_verifier_key(vkey: &str) -> Result<(String, u8, PublicKey), NoteError> {
    // The key's base64 may hold `+`; the name and the key ID never do.
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(id), Some(typed)) = (parts.next(), parts.next(), parts.next()) else {
        return fail(format!("verifier key {vkey:?} is not name+key ID+key"));
    };
    check_key_name(name, "the verifier key's name")?;
    let typed = BASE64
        .decode(typed)
        .map_err(|error| NoteError(format!("verifier key {vkey:?}: {error}")))?;
    let (signature_type, key) = match typed.as_slice() {
        [signature_type @ (ED25519_SIGNATURE_TYPE | COSIGNATURE_TYPE), key @ ..] => {
            match <[u8; 32]>::try_from(key) {
                Ok(key) => (*signature_type, PublicKey(key)),
                Err(_) => return fail(format!("verifier key {vkey:?}: not a 32-byte key")),
            }
        }
        _ => {
            return fail(format!(
                "verifier key {vkey:?}: not an Ed25519 key of type 0x01 or 0x04"
            ))
        }
    };
    if format!("{:08x}", typed_key_id(name, signature_type, &key)) != id {
        return fail(format!(
            "verifier key {vkey:?}: its key ID is not its name's and key's"
        ));
    }
    Ok((name.to_owned(), signature_type, key))
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The signer's key name.
    pub name: String,
    /// Its key ID.
    pub key_id: u32,
    /// The signature bytes after the key ID (64 for Ed25519; other types may differ).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The signature line: `— name base64(key ID ‖ signature)` and a newline.
    pub fn line(&self) -> String {
        let mut bytes = Vec::with_capacity(4 + self.signature.len());
        bytes.extend_from_slice(&self.key_id.to_be_bytes());
        bytes.extend_from_slice(&self.signature);
        format!(
            "{SIGNATURE_LINE_START}{} {}\n",
            self.name,
            BASE64.encode(bytes)
        )
    }
}

/// A tree head as a signed checkpoint note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointNote {
    /// The log's origin (first line).
    pub origin: String,
    /// Entries in the tree (second line).
    pub tree_size: u64,
    /// Their Merkle root (third line).
    pub root: Hash32,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl CheckpointNote {
    /// The head (`tree_size`, `root`) of the log `origin`, signed by `secret` under the
    /// origin as key name.
    pub fn sign(origin: &str, tree_size: u64, root: Hash32, secret: &SigningKey) -> Self {
        let mut note = Self {
            origin: origin.to_owned(),
            tree_size,
            root,
            signatures: Vec::new(),
        };
        note.add_signature(origin, secret);
        note
    }

    /// Adds a signature of the note text by `secret` under `name` (a witness's cosignature
    /// of the same type, or a second key during a rotation).
    pub fn add_signature(&mut self, name: &str, secret: &SigningKey) {
        let key = PublicKey::from(&secret.verifying_key());
        let signature = secret.sign(self.text().as_bytes());
        self.signatures.push(NoteSignature {
            name: name.to_owned(),
            key_id: key_id(name, &key),
            signature: signature.to_bytes().to_vec(),
        });
    }

    /// Adds a witness's cosignature (c2sp.org/tlog-cosignature): by `secret` under `name`,
    /// at POSIX time `timestamp`, over `cosignature/v1`, `time TIMESTAMP` and the note text.
    pub fn cosign(&mut self, name: &str, secret: &SigningKey, timestamp: u64) {
        let key = PublicKey::from(&secret.verifying_key());
        let signature = secret.sign(&self.cosigned_message(timestamp));
        let mut bytes = Vec::with_capacity(8 + 64);
        bytes.extend_from_slice(&timestamp.to_be_bytes());
        bytes.extend_from_slice(&signature.to_bytes());
        self.signatures.push(NoteSignature {
            name: name.to_owned(),
            key_id: cosigner_key_id(name, &key),
            signature: bytes,
        });
    }

    /// Checks the cosignature of the witness `key` under `name`: its time, when it verifies.
    pub fn verify_cosignature(&self, name: &str, key: &PublicKey) -> Result<u64, NoteError> {
        let id = cosigner_key_id(name, key);
        let line = self
            .signatures
            .iter()
            .find(|line| line.name == name && line.key_id == id)
            .ok_or_else(|| NoteError(format!("no cosignature of {name} with key ID {id:08x}")))?;
        let Ok(bytes) = <[u8; 72]>::try_from(line.signature.as_slice()) else {
            return fail(format!(
                "the cosignature of {name} has {} bytes, not 72",
                line.signature.len()
            ));
        };
        let (time, signature) = bytes.split_at(8);
        let mut time_bytes = [0u8; 8];
        time_bytes.copy_from_slice(time);
        let timestamp = u64::from_be_bytes(time_bytes);
        let mut signature_bytes = [0u8; 64];
        signature_bytes.copy_from_slice(signature);
        let message = self.cosigned_message(timestamp);
        match verify_signature(key, &SignatureBytes(signature_bytes), &message) {
            Ok(()) => Ok(timestamp),
            Err(_) => fail(format!("the cosignature of {name} ({key}) does not verify")),
        }
    }

    fn cosigned_message(&self, timestamp: u64) -> Vec<u8> {
        format!("{COSIGNATURE_HEADER}\ntime {timestamp}\n{}", self.text()).into_bytes()
    }

    /// The signed note text: origin, size and base64 root, each line ending in a newline.
    pub fn text(&self) -> String {
        fabric_events::covenant::checkpoint_body(&self.origin, self.tree_size, &self.root)
    }

    /// The whole note: text, blank line, signature lines.
    pub fn encode(&self) -> String {
        let mut out = self.text();
        out.push('\n');
        for signature in &self.signatures {
            out.push_str(&signature.line());
        }
        out
    }

    /// Checks that the note carries a valid Ed25519 signature by `key` under `name`. A
    /// signature line with that name and key ID that does not verify fails the note, as the
    /// format asks; lines of other keys are ignored.
    pub fn verify(&self, name: &str, key: &PublicKey) -> Result<(), NoteError> {
        let id = key_id(name, key);
        let text = self.text();
        let mut found = false;
        for line in &self.signatures {
            if line.name != name || line.key_id != id {
                continue;
            }
            let bytes: [u8; 64] = match line.signature.as_slice().try_into() {
                Ok(bytes) => bytes,
                Err(_) => {
                    return fail(format!(
                        "the signature of {name} has {} bytes, not 64",
                        line.signature.len()
                    ))
                }
            };
            if verify_signature(key, &SignatureBytes(bytes), text.as_bytes()).is_err() {
                return fail(format!("the signature of {name} ({key}) does not verify"));
            }
            found = true;
        }
        match found {
            true => Ok(()),
            false => fail(format!("no signature of {name} with key ID {id:08x}")),
        }
    }

    /// Reads a note strictly: valid UTF-8 without control characters but newlines, at most
    /// [`NOTE_BYTES_MAX`] bytes, a text of exactly the three checkpoint lines (Fabric's
    /// checkpoints have no extension lines), a blank line, and 1 to [`NOTE_SIGNATURES_MAX`]
    /// well-formed signature lines. Signatures are not checked here: see
    /// [`CheckpointNote::verify`].
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        if note.len() > NOTE_BYTES_MAX {
            return fail(format!("{} bytes (at most {NOTE_BYTES_MAX})", note.len()));
        }
        if let Some(at) = note.find(|c: char| c.is_control() && c != '\n') {
            return fail(format!("a control character at byte {at}"));
        }
        // The text ends at the last blank line; the note itself ends in a newline.
        let Some(body) = note.strip_suffix('\n') else {
            return fail("it does not end in a newline");
        };
        let Some((text, lines)) = body.rsplit_once("\n\n") else {
            return fail("no blank line between the text and the signatures");
        };
        let fields: Vec<&str> = text.split('\n').collect();
        let [origin, size, root] = fields[..] else {
            return fail(format!(
                "its text has {} lines, not 3 (origin, tree size, root)",
                fields.len()
            ));
        };
        check_key_name(origin, "the origin")?;
        let tree_size = parse_size(size)?;
        let root = parse_root(root)?;
        let signatures = lines
            .split('\n')
            .enumerate()
            .map(|(index, line)| parse_signature_line(index + 1, line))
            .collect::<Result<Vec<_>, _>>()?;
        if signatures.len() > NOTE_SIGNATURES_MAX {
            return fail(format!(
                "{} signature lines (at most {NOTE_SIGNATURES_MAX})",
                signatures.len()
            ));
        }
        Ok(Self {
            origin: origin.to_owned(),
            tree_size,
            root,
            signatures,
        })
    }
}

/// A key name (or origin): non-empty, bounded, without Unicode spaces or `+`.
fn check_key_name(name: &str, what: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.len() > KEY_NAME_BYTES_MAX {
        return fail(format!(
            "{what} has {} bytes (1 to {KEY_NAME_BYTES_MAX})",
            name.len()
        ));
    }
    if name.contains(|c: char| c.is_whitespace() || c == '+') {
        return fail(format!("{what} {name:?} holds a space or a plus"));
    }
    Ok(())
}

/// The tree size line: decimal, no leading zero (but `0` itself).
fn parse_size(line: &str) -> Result<u64, NoteError> {
    let canonical = !line.is_empty()
        && line.bytes().all(|byte| byte.is_ascii_digit())
        && (line == "0" || !line.starts_with('0'));
    match canonical.then(|| line.parse::<u64>().ok()).flatten() {
        Some(size) => Ok(size),
        None => fail(format!(
            "the tree size line {line:?} is not a decimal number without leading zeros"
        )),
    }
}

/// The root line: the standard base64 of 32 bytes.
fn parse_root(line: &str) -> Result<Hash32, NoteError> {
    base64_hash(line, "the root line")
}

/// A line holding the standard base64 of a 32-byte hash (a root, a proof's hash), in its one
/// canonical spelling; `what` names the line in the error.
pub fn base64_hash(line: &str, what: &str) -> Result<Hash32, NoteError> {
    let bytes = BASE64
        .decode(line)
        .map_err(|error| NoteError(format!("{what} is not base64: {error}")))?;
    match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(hash) if BASE64.encode(hash) == line => Ok(Hash32(hash)),
        _ => fail(format!("{what} {line:?} is not the base64 of 32 bytes")),
    }
}

/// Signature line `number` (from 1): `— name base64(key ID ‖ signature)`.
fn parse_signature_line(number: usize, line: &str) -> Result<NoteSignature, NoteError> {
    let what = |why: &str| NoteError(format!("signature line {number}: {why}"));
    let rest = line
        .strip_prefix(SIGNATURE_LINE_START)
        .ok_or_else(|| what("it does not start with an em dash and a space"))?;
    let (name, encoded) = rest
        .split_once(' ')
        .ok_or_else(|| what("no space between the key name and the signature"))?;
    check_key_name(name, "its key name").map_err(|error| what(&error.0))?;
    let bytes = BASE64
        .decode(encoded)
        .map_err(|error| what(&format!("the signature is not base64: {error}")))?;
    if bytes.len() < 5 {
        return Err(what(
            "the signature has fewer than 5 bytes (a key ID and more)",
        ));
    }
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        signature: bytes[4..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_events::keys;

    fn note() -> (CheckpointNote, SigningKey) {
        let secret = keys::generate();
        let origin = origin_of(&Hash32([7; 32]));
        (
            CheckpointNote::sign(&origin, 1234, Hash32([9; 32]), &secret),
            secret,
        )
    }

    #[test]
    fn a_signed_note_reads_back_and_verifies_with_its_key_only() {
        let (note, secret) = note();
        let text = note.encode();
        assert!(text.starts_with("fabric/07070707070707070707070707070707\n1234\n"));
        assert!(text.contains("\n\n\u{2014} fabric/0707"));
        let read = CheckpointNote::parse(&text).expect("parses");
        assert_eq!(read, note);
        let key = PublicKey::from(&secret.verifying_key());
        read.verify(&note.origin, &key).expect("verifies");
        let other = PublicKey::from(&keys::generate().verifying_key());
        assert!(read.verify(&note.origin, &other).is_err());
        assert!(read.verify("fabric/other", &key).is_err());
    }

    #[test]
    fn a_changed_size_or_root_fails_the_signature() {
        let (note, secret) = note();
        let key = PublicKey::from(&secret.verifying_key());
        let mut bigger = note.clone();
        bigger.tree_size += 1;
        assert!(bigger.verify(&note.origin, &key).is_err());
        let mut other_root = note.clone();
        other_root.root = Hash32([8; 32]);
        assert!(other_root.verify(&note.origin, &key).is_err());
    }

    #[test]
    fn a_cosignature_under_another_name_is_kept_and_each_verifies() {
        let (mut note, secret) = note();
        let witness = keys::generate();
        note.add_signature("witness.example/w1", &witness);
        let read = CheckpointNote::parse(&note.encode()).expect("parses");
        assert_eq!(read.signatures.len(), 2);
        let witness_key = PublicKey::from(&witness.verifying_key());
        read.verify("witness.example/w1", &witness_key)
            .expect("witness");
        read.verify(&note.origin, &PublicKey::from(&secret.verifying_key()))
            .expect("log");
    }

    #[test]
    fn malformed_notes_are_refused_naming_what_is_wrong() {
        let (note, _) = note();
        let good = note.encode();
        let cases = [
            (good.replacen("1234", "01234", 1), "leading zeros"),
            (good.replacen("1234", "12a4", 1), "not a decimal"),
            (good.replacen("\n\n", "\n", 1), "blank line"),
            (good.replacen('\u{2014}', "-", 1), "em dash"),
            (good.trim_end().to_owned(), "newline"),
            (good.replacen("1234\n", "1234\nextra\n", 1), "not 3"),
            (good.replacen("fabric/", "fab ric/", 1), "space or a plus"),
            (good.replacen("1234", "12\u{7}34", 1), "control character"),
            ("x".repeat(NOTE_BYTES_MAX + 1), "at most"),
        ];
        for (text, why) in cases {
            let error = CheckpointNote::parse(&text).expect_err(why);
            assert!(error.0.contains(why), "{why}: {error}");
        }
    }

    #[test]
    fn a_witness_cosignature_verifies_with_its_time_and_fails_changed() {
        let (mut note, secret) = note();
        let witness = keys::generate();
        let witness_key = PublicKey::from(&witness.verifying_key());
        note.cosign("witness.example/w1", &witness, 1_700_000_000);
        let read = CheckpointNote::parse(&note.encode()).expect("parses");
        assert_eq!(
            read.verify_cosignature("witness.example/w1", &witness_key),
            Ok(1_700_000_000)
        );
        // A cosignature is no log signature, and the log's signature no cosignature.
        assert!(read.verify("witness.example/w1", &witness_key).is_err());
        let log_key = PublicKey::from(&secret.verifying_key());
        assert!(read.verify_cosignature(&note.origin, &log_key).is_err());
        let mut changed = read.clone();
        changed.tree_size += 1;
        assert!(changed
            .verify_cosignature("witness.example/w1", &witness_key)
            .is_err());
    }

    #[test]
    fn verifier_keys_read_back_and_a_wrong_key_id_is_refused() {
        let key = PublicKey([5; 32]);
        let vkey = cosigner_verifier_key("w.example/1", &key);
        assert_eq!(
            parse_verifier_key(&vkey),
            Ok(("w.example/1".to_owned(), COSIGNATURE_TYPE, key))
        );
        let log = verifier_key("fabric/00", &key);
        assert_eq!(
            parse_verifier_key(&log).map(|(_, kind, _)| kind),
            Ok(ED25519_SIGNATURE_TYPE)
        );
        let renamed = log.replacen("fabric/00", "fabric/01", 1);
        assert!(parse_verifier_key(&renamed).is_err());
        assert!(parse_verifier_key("nothing").is_err());
    }

    #[test]
    fn key_ids_and_verifier_keys_follow_the_note_rule() {
        let key = PublicKey([3; 32]);
        let mut hasher = Sha256::new();
        hasher.update(b"a.example/log\n\x01");
        hasher.update([3u8; 32]);
        let digest = hasher.finalize();
        let id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        assert_eq!(key_id("a.example/log", &key), id);
        let vkey = verifier_key("a.example/log", &key);
        assert!(
            vkey.starts_with(&format!("a.example/log+{id:08x}+AQMD")),
            "{vkey}"
        );
    }
}
