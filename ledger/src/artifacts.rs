//! The artifact store of a served fabric (docs/FORMAT.md §7): job inputs and node outputs,
//! content-addressed by BLAKE3, in one append-only file beside the ledger's sled data.
//!
//! Artifacts are kilobytes each and written once, one or two per job: in sled each insert
//! copies the whole leaf page it lands in, which cost a served fabric a fifth of its CPU. Here
//! an insert is one `write` at the end of the file, a lookup one `pread`, and the index (hash →
//! place) lives in memory, rebuilt at open by reading the file through.
//!
//! Durability: the ledger's group commit calls [`ArtifactLog::sync`] (`fdatasync`) before it
//! syncs its own data, so an artifact written before an append is durable when the append is.
//! A crash can leave the end of the file torn (a record cut short, or bytes that are no whole
//! record): the writer's open cuts the file back to its last whole record whose bytes hash to
//! its address, and says how many bytes it cut; those bytes were never acknowledged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use fabric_events::Hash32;

use crate::error::LedgerError;

/// The artifact file's name, in the ledger's folder.
pub const ARTIFACTS_FILE: &str = "artifacts.log";
/// The file's first bytes.
pub const ARTIFACTS_MAGIC: &[u8; 8] = b"FBLOBv1\n";
/// Most bytes of one artifact.
pub const ARTIFACT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Bytes before an artifact's bytes in its record: its BLAKE3 hash and its length (u32 LE).
const RECORD_HEADER_BYTES: usize = 32 + 4;

/// Where an artifact's bytes are in the file.
#[derive(Clone, Copy, Debug)]
struct Place {
    offset: u64,
    len: u32,
}

/// What opening the file found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArtifactsOpened {
    /// Artifacts stored.
    pub artifacts: u64,
    /// Bytes cut from the end of the file: a record a crash interrupted (writer's open only;
    /// a reader ignores them).
    pub cut_bytes: u64,
}

/// The artifact store: shared by the threads of a server (`Send + Sync`).
#[derive(Debug)]
pub struct ArtifactLog {
    path: PathBuf,
    /// `None` when opened read-only.
    appender: Option<Mutex<Appender>>,
    reader: File,
    index: RwLock<HashMap<Hash32, Place>>,
    unsynced: AtomicBool,
}

#[derive(Debug)]
struct Appender {
    file: File,
    end: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |cause| LedgerError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

impl ArtifactLog {
    /// Opens (or creates) the store at `path` for reading and appending; a torn end is cut.
    pub fn open(path: &Path) -> Result<(Self, ArtifactsOpened), LedgerError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io(path))?;
        let (index, mut end) = scan(path)?;
        let len = file.metadata().map_err(io(path))?.len();
        if end < len {
            file.set_len(end).map_err(io(path))?;
            file.sync_data().map_err(io(path))?;
        }
        let cut_bytes = len - end;
        if end == 0 {
            file.write_all(ARTIFACTS_MAGIC).map_err(io(path))?;
            file.sync_data().map_err(io(path))?;
            end = ARTIFACTS_MAGIC.len() as u64;
        }
        let opened = ArtifactsOpened {
            artifacts: index.len() as u64,
            cut_bytes,
        };
        let reader = File::open(path).map_err(io(path))?;
        let log = Self {
            path: path.to_path_buf(),
            appender: Some(Mutex::new(Appender { file, end })),
            reader,
            index: RwLock::new(index),
            unsynced: AtomicBool::new(false),
        };
        Ok((log, opened))
    }

    /// Opens the store at `path` for reading only (an auditor's): a missing file is an empty
    /// store, a torn end is left as it is and not read.
    pub fn open_read_only(path: &Path) -> Result<(Self, ArtifactsOpened), LedgerError> {
        let index = if path.exists() {
            scan(path)?.0
        } else {
            HashMap::new()
        };
        let reader = match File::open(path) {
            Ok(file) => file,
            // An empty store: every lookup misses before it reads.
            Err(_) => File::open("/dev/null").map_err(io(path))?,
        };
        let opened = ArtifactsOpened {
            artifacts: index.len() as u64,
            cut_bytes: 0,
        };
        let log = Self {
            path: path.to_path_buf(),
            appender: None,
            reader,
            index: RwLock::new(index),
            unsynced: AtomicBool::new(false),
        };
        Ok((log, opened))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Artifacts stored.
    pub fn len(&self) -> usize {
        self.index.read().map_or(0, |index| index.len())
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an artifact of this address is stored.
    pub fn contains(&self, hash: &Hash32) -> bool {
        self.index
            .read()
            .is_ok_and(|index| index.contains_key(hash))
    }

    /// The bytes stored at `hash`, as read from the file: a caller that serves them checks
    /// their hash (the file may have been damaged since it was written).
    pub fn get(&self, hash: &Hash32) -> Result<Option<Vec<u8>>, LedgerError> {
        let place = match self.index.read() {
            Ok(index) => index.get(hash).copied(),
            Err(_) => None,
        };
        let Some(place) = place else {
            return Ok(None);
        };
        let mut bytes = vec![0; place.len as usize];
        self.reader
            .read_exact_at(&mut bytes, place.offset)
            .map_err(io(&self.path))?;
        Ok(Some(bytes))
    }

    /// Stores `bytes` at their BLAKE3 address (`hash`, which the caller computed); an address
    /// already stored is not written again. Durable at the next [`ArtifactLog::sync`].
    pub fn insert(&self, hash: &Hash32, bytes: &[u8]) -> Result<(), LedgerError> {
        debug_assert_eq!(*blake3::hash(bytes).as_bytes(), hash.0);
        if bytes.len() > ARTIFACT_BYTES_MAX {
            return Err(io(&self.path)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "an artifact of {} bytes (at most {ARTIFACT_BYTES_MAX})",
                    bytes.len()
                ),
            )));
        }
        if self.contains(hash) {
            return Ok(());
        }
        let Some(appender) = &self.appender else {
            return Err(io(&self.path)(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the artifact store is open read-only",
            )));
        };
        let mut appender = appender.lock().map_err(|_| {
            io(&self.path)(std::io::Error::other("an earlier append failed midway"))
        })?;
        // Another thread may have stored it while this one waited.
        if self.contains(hash) {
            return Ok(());
        }
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + bytes.len());
        record.extend_from_slice(hash.as_bytes());
        record.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        record.extend_from_slice(bytes);
        if let Err(cause) = appender.file.write_all(&record) {
            // A record cut short would hide every later one from the next open's scan: cut
            // the file back to where it ended.
            let _ = appender.file.set_len(appender.end);
            return Err(io(&self.path)(cause));
        }
        let place = Place {
            offset: appender.end + RECORD_HEADER_BYTES as u64,
            len: bytes.len() as u32,
        };
        appender.end += record.len() as u64;
        self.unsynced.store(true, Ordering::Release);
        if let Ok(mut index) = self.index.write() {
            index.insert(*hash, place);
        }
        Ok(())
    }

    /// Makes every artifact inserted so far durable (`fdatasync`), when one was inserted
    /// since the last sync.
    pub fn sync(&self) -> Result<(), LedgerError> {
        let Some(appender) = &self.appender else {
            return Ok(());
        };
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let appender = appender.lock().map_err(|_| {
            io(&self.path)(std::io::Error::other("an earlier append failed midway"))
        })?;
        appender.file.sync_data().map_err(|cause| {
            self.unsynced.store(true, Ordering::Release);
            io(&self.path)(cause)
        })
    }
}

/// A ledger folder's artifacts as an auditor reads them: the artifact store, and the sled
/// tree `artifacts` where a server of an earlier build kept them (moved into the store when a
/// server opens the folder).
#[derive(Debug)]
pub struct StoredArtifacts {
    pub(crate) log: ArtifactLog,
    pub(crate) legacy: sled::Tree,
}

impl StoredArtifacts {
    /// The bytes stored at `hash` (a caller checks their hash).
    pub fn get(&self, hash: &Hash32) -> Result<Option<Vec<u8>>, LedgerError> {
        if let Some(bytes) = self.log.get(hash)? {
            return Ok(Some(bytes));
        }
        self.legacy
            .get(hash.as_bytes())
            .map(|bytes| bytes.map(|bytes| bytes.to_vec()))
            .map_err(|cause| LedgerError::Storage {
                context: "reading the artifacts tree",
                cause,
            })
    }
}

/// Reads the file through: the index of its whole records whose bytes hash to their address,
/// and where the last of them ends.
fn scan(path: &Path) -> Result<(HashMap<Hash32, Place>, u64), LedgerError> {
    let file = File::open(path).map_err(io(path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0; 8];
    match reader.read_exact(&mut magic) {
        Ok(()) if &magic == ARTIFACTS_MAGIC => {}
        Ok(()) => {
            return Err(io(path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an artifact store: its first bytes are not {ARTIFACTS_MAGIC:?}"),
            )))
        }
        // Created, and cut before its first bytes were synced.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Ok((HashMap::new(), 0));
        }
        Err(error) => return Err(io(path)(error)),
    }
    let mut index = HashMap::new();
    let mut end = ARTIFACTS_MAGIC.len() as u64;
    let mut bytes = Vec::new();
    loop {
        let mut header = [0; RECORD_HEADER_BYTES];
        if read_whole(&mut reader, &mut header).map_err(io(path))? < RECORD_HEADER_BYTES {
            break;
        }
        let mut hash = [0; 32];
        hash.copy_from_slice(&header[..32]);
        let len = u32::from_le_bytes([header[32], header[33], header[34], header[35]]) as usize;
        if len > ARTIFACT_BYTES_MAX {
            break;
        }
        bytes.resize(len, 0);
        if read_whole(&mut reader, &mut bytes).map_err(io(path))? < len {
            break;
        }
        if *blake3::hash(&bytes).as_bytes() != hash {
            break;
        }
        index.insert(
            Hash32(hash),
            Place {
                offset: end + RECORD_HEADER_BYTES as u64,
                len: len as u32,
            },
        );
        end += (RECORD_HEADER_BYTES + len) as u64;
    }
    Ok((index, end))
}

/// Reads into `buffer` until it is full or the file ends; how many bytes were read.
fn read_whole(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(bytes: &[u8]) -> Hash32 {
        Hash32(*blake3::hash(bytes).as_bytes())
    }

    #[test]
    fn artifacts_read_back_after_a_reopen_and_are_stored_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(ARTIFACTS_FILE);
        let (log, opened) = ArtifactLog::open(&path).expect("open");
        assert_eq!(opened, ArtifactsOpened::default());
        let one = vec![1u8; 1000];
        let two = b"two".to_vec();
        log.insert(&hash(&one), &one).expect("insert");
        log.insert(&hash(&two), &two).expect("insert");
        log.insert(&hash(&one), &one).expect("insert again");
        log.insert(&hash(&[]), &[]).expect("insert empty");
        log.sync().expect("sync");
        assert_eq!(log.get(&hash(&one)).expect("get"), Some(one.clone()));
        assert_eq!(log.get(&hash(b"none")).expect("get"), None);
        let size = std::fs::metadata(&path).expect("meta").len();
        assert_eq!(size, 8 + 3 * 36 + 1000 + 3);
        drop(log);
        let (log, opened) = ArtifactLog::open(&path).expect("reopen");
        assert_eq!(opened.artifacts, 3);
        assert_eq!(opened.cut_bytes, 0);
        assert_eq!(log.get(&hash(&two)).expect("get"), Some(two));
        assert_eq!(log.get(&hash(&[])).expect("get"), Some(Vec::new()));
        let (reader, _) = ArtifactLog::open_read_only(&path).expect("read only");
        assert_eq!(reader.get(&hash(&one)).expect("get"), Some(one.clone()));
        assert!(reader.insert(&hash(b"x"), b"x").is_err());
    }

    #[test]
    fn a_torn_end_is_cut_back_to_the_last_whole_record_and_the_store_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(ARTIFACTS_FILE);
        let (log, _) = ArtifactLog::open(&path).expect("open");
        let kept = vec![7u8; 300];
        let torn = vec![9u8; 300];
        log.insert(&hash(&kept), &kept).expect("insert");
        log.insert(&hash(&torn), &torn).expect("insert");
        log.sync().expect("sync");
        drop(log);
        let whole = std::fs::metadata(&path).expect("meta").len();
        let first_end = 8 + 36 + 300;
        for cut_at in [first_end + 1, first_end + 36, whole - 1] {
            let file = OpenOptions::new().write(true).open(&path).expect("file");
            file.set_len(cut_at).expect("cut");
            drop(file);
            let (read_only, _) = ArtifactLog::open_read_only(&path).expect("read only");
            assert_eq!(read_only.len(), 1);
            let (log, opened) = ArtifactLog::open(&path).expect("reopen");
            assert_eq!(opened.artifacts, 1);
            assert_eq!(opened.cut_bytes, cut_at - first_end);
            assert_eq!(log.get(&hash(&torn)).expect("get"), None);
            log.insert(&hash(&torn), &torn).expect("insert again");
            log.sync().expect("sync");
            drop(log);
            assert_eq!(std::fs::metadata(&path).expect("meta").len(), whole);
        }
        // Bytes that are no record (a page of zeros a crash left): cut as well.
        let mut file = OpenOptions::new().append(true).open(&path).expect("file");
        file.write_all(&[0; 100]).expect("zeros");
        drop(file);
        let (log, opened) = ArtifactLog::open(&path).expect("reopen");
        assert_eq!((opened.artifacts, opened.cut_bytes), (2, 100));
        assert_eq!(log.get(&hash(&kept)).expect("get"), Some(kept));
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(ARTIFACTS_FILE);
        std::fs::write(&path, b"something else entirely").expect("write");
        let error = ArtifactLog::open(&path).expect_err("refused").to_string();
        assert!(error.contains("not an artifact store"), "{error}");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"something else entirely"
        );
    }
}
