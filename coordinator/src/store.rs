//! Durable state: every pipeline's [`PipelineRecord`], written before any decision is announced.
//!
//! [`StateStore`] is the seam: the embedded default is [`FileStore`] (one JSON file replaced
//! atomically); a Kubernetes ConfigMap store can implement the same trait later. The engine
//! always saves the *whole* state, so a store never has to merge partial updates.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sluice_core::pipeline::PipelineRecord;
use thiserror::Error;

/// Version of the file layout written by [`FileStore`]; bumped on incompatible changes.
const FORMAT_VERSION: u32 = 1;

/// Why the state could not be loaded or saved.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The state file exists but could not be read.
    #[error("cannot read state file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The state file is not a valid sluice state.
    #[error("state file {path} is corrupt (not a valid sluice state); fix or move it away")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The state file was written by an incompatible version.
    #[error(
        "state file {path} has format version {found}; this coordinator reads version {expected}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Version this build understands.
        expected: u32,
    },
    /// The state could not be encoded.
    #[error("cannot encode the state")]
    Encode(#[source] serde_json::Error),
    /// The state file could not be written (temp file, write, fsync or rename).
    #[error("cannot write state file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The blocking I/O task died (panicked or was cancelled by a runtime shutdown).
    #[error("state file I/O task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Where the coordinator keeps its pipelines across restarts.
///
/// Methods return boxed futures so that the engine can hold a `dyn StateStore` and remote
/// stores (Kubernetes) can be truly asynchronous.
pub trait StateStore: Send + Sync + 'static {
    /// Every stored pipeline; empty when nothing was ever stored.
    fn load(&self) -> BoxFuture<'_, Result<Vec<PipelineRecord>, StoreError>>;

    /// Replaces the stored state with `records`, durably, before returning `Ok`.
    fn save<'a>(
        &'a self,
        records: &'a [&'a PipelineRecord],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Where the state lives, for logs.
    fn describe(&self) -> String;
}

/// What the state file holds.
#[derive(Debug, Serialize, Deserialize)]
struct FileState<P> {
    /// [`FORMAT_VERSION`].
    format: u32,
    /// Every pipeline, sorted by name.
    pipelines: P,
}

/// A JSON file replaced atomically on every save (temp file in the same directory, write,
/// fsync, rename over the old file, fsync the directory).
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path` (nothing is read or written yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the state file (the temp file must be on the same file system
    /// for the rename to be atomic).
    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn load_blocking(path: &Path) -> Result<Vec<PipelineRecord>, StoreError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        // Check the format version before the records, so that a future layout is reported as
        // such rather than as corruption.
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let corrupt = |source| StoreError::Corrupt {
            path: path.into(),
            source,
        };
        let header: Header = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if header.format != FORMAT_VERSION {
            return Err(StoreError::Version {
                path: path.into(),
                found: header.format,
                expected: FORMAT_VERSION,
            });
        }
        let state: FileState<Vec<PipelineRecord>> =
            serde_json::from_slice(&bytes).map_err(corrupt)?;
        Ok(state.pipelines)
    }

    fn write_blocking(path: &Path, dir: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()
    }
}

impl StateStore for FileStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<PipelineRecord>, StoreError>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Self::load_blocking(&path))
                .await
                .map_err(StoreError::Task)?
        })
    }

    fn save<'a>(
        &'a self,
        records: &'a [&'a PipelineRecord],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let state = FileState {
                format: FORMAT_VERSION,
                pipelines: records,
            };
            let bytes = serde_json::to_vec_pretty(&state).map_err(StoreError::Encode)?;
            let (path, dir) = (self.path.clone(), self.dir());
            // fsync can take a while: keep it off the async worker threads.
            tokio::task::spawn_blocking(move || Self::write_blocking(&path, &dir, &bytes))
                .await
                .map_err(StoreError::Task)?
                .map_err(|source| StoreError::Write {
                    path: self.path.clone(),
                    source,
                })
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_file_is_empty_and_saves_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        assert!(store.load().await.unwrap().is_empty());
        let mut a = PipelineRecord::new("ns/a", 5);
        a.epoch = 3;
        let b = PipelineRecord::new("ns/b", 6);
        store.save(&[&a, &b]).await.unwrap();
        assert_eq!(store.load().await.unwrap(), vec![a.clone(), b]);
        store.save(&[&a]).await.unwrap();
        assert_eq!(store.load().await.unwrap(), vec![a]);
        // Only the state file is left behind: temp files are renamed over it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn corrupt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = FileStore::new(&path).load().await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("state.json"), "{err}");
    }

    #[tokio::test]
    async fn other_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, br#"{"format": 99, "pipelines": []}"#).unwrap();
        let err = FileStore::new(&path).load().await.unwrap_err();
        assert!(
            matches!(err, StoreError::Version { found: 99, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unwritable_directory_is_a_write_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("missing-dir").join("state.json"));
        let err = store.save(&[]).await.unwrap_err();
        assert!(matches!(err, StoreError::Write { .. }), "{err:?}");
    }
}
