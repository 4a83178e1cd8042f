//! The one atomic file write: a temporary file beside the target (`<name>.tmp`, same folder),
//! written, synced, then renamed over the target, so a reader (or a crash) never sees half of
//! a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A file (or its temporary file) that could not be written.
#[derive(Debug, Error)]
#[error("could not write {}", path.display())]
pub struct WriteError {
    /// The file: the target, or its temporary file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

impl WriteError {
    fn at(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The temporary file of `path`: `<name>.tmp` in the same folder.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_with(path, |writer| {
        writer
            .write_all(bytes)
            .map_err(WriteError::at(&temporary_path(path)))
    })
}

/// Writes `path` atomically through a buffered writer that `fill` fills; returns what `fill`
/// returns. `fill`'s own errors pass through (the temporary file then stays behind, and the
/// target is untouched).
pub fn write_with<T, E: From<WriteError>>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<T, E>,
) -> Result<T, E> {
    let tmp = temporary_path(path);
    let file = File::create(&tmp).map_err(WriteError::at(&tmp))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let value = fill(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(|err| WriteError::at(&tmp)(err.into_error()))?;
    file.sync_all().map_err(WriteError::at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(WriteError::at(path))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_file_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("summary.json");
        write_atomically(&path, b"one").expect("first write");
        write_atomically(&path, b"two").expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert!(!temporary_path(&path).exists());
        assert_eq!(
            temporary_path(&path).file_name().and_then(|n| n.to_str()),
            Some("summary.json.tmp")
        );
    }

    #[test]
    fn a_write_into_a_missing_folder_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing").join("a.json");
        let err = write_atomically(&path, b"x").expect_err("no folder");
        assert_eq!(err.path, temporary_path(&path));
        assert!(err.to_string().contains("a.json.tmp"), "{err}");
    }

    #[test]
    fn a_failing_fill_leaves_the_target_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.json");
        write_atomically(&path, b"old").expect("write");
        let result: Result<(), WriteError> = write_with(&path, |_| {
            Err(WriteError {
                path: path.clone(),
                source: std::io::Error::other("stop"),
            })
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"old");
    }
}
