//! The gate's channels, kept on disk so a restarted sidecar still knows them.
//!
//! A closed channel counts in the gate watermark until it reconnects (see
//! `sluice_core::watermark`): its sink subtask will replay from a checkpoint. A sidecar that
//! crashed and restarted would otherwise start with no channel at all — and a gate with no
//! channel counts as drained, so a drain could complete before the subtasks reconnect and replay.
//! The restarted gate knows them with no watermark: what the crashed sidecar held or had not yet
//! delivered comes again from the clients' replay, below the watermarks they had sent. Only the
//! ids are kept; the list is written atomically (temporary file, fsync, rename) when a new
//! channel id opens and when one expires.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The channel list could not be read or written.
#[derive(Debug, Error)]
pub enum KnownChannelsError {
    /// Reading the file failed.
    #[error("cannot read the channels file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a channel list.
    #[error("the channels file {path} is not a channel list")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the file failed.
    #[error("cannot write the channels file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    /// Channel ids (each the sink subtask's, stable across its restarts).
    channels: Vec<String>,
}

/// Reads the channel ids (none when the file does not exist).
pub fn load(path: &Path) -> Result<Vec<String>, KnownChannelsError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KnownChannelsError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let file: File =
        serde_json::from_slice(&bytes).map_err(|source| KnownChannelsError::Corrupt {
            path: path.into(),
            source,
        })?;
    Ok(file.channels)
}

/// Replaces the list atomically.
pub fn save(path: &Path, channels: &[String]) -> Result<(), KnownChannelsError> {
    let file = File {
        format: 1,
        channels: channels.to_vec(),
    };
    let write = || {
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        crate::atomic_file::replace(path, &bytes)
    };
    write().map_err(|source| KnownChannelsError::Write {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_list_loads_back_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.channels");
        assert!(load(&path).unwrap().is_empty());
        let list = vec!["0".to_owned(), "1".to_owned()];
        save(&path, &list).unwrap();
        assert_eq!(load(&path).unwrap(), list);
        std::fs::write(&path, "garbage").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("not a channel list"), "{err}");
    }
}
