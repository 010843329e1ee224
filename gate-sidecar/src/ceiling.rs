//! The gate's persisted high-mark ceiling.
//!
//! A gate's prepare vote is only sound if its high mark covers every record ever decided under
//! its gate id — including by an earlier incarnation of this sidecar that crashed before
//! reporting its progress. So before deciding any record above the ceiling, the sidecar raises
//! the ceiling (record's event time + a step) and writes it to a file atomically; a restarted
//! sidecar starts from that ceiling (`GateCore::resume`) and votes accordingly. The step makes
//! the write rare: once per `step` of event time.

use std::path::{Path, PathBuf};

use sluice_core::EventTime;
use thiserror::Error;

/// The ceiling could not be read or written.
#[derive(Debug, Error)]
pub enum CeilingError {
    /// Reading the file failed.
    #[error("cannot read the high-mark file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a number.
    #[error("the high-mark file {path} does not hold an event time: {content:?}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
    /// Writing the file failed.
    #[error("cannot write the high-mark file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The largest event time this gate id may have decided, kept on disk.
#[derive(Debug)]
pub struct Ceiling {
    path: PathBuf,
    current: Option<EventTime>,
    step: EventTime,
}

impl Ceiling {
    /// Loads the ceiling from `path` (none when the file does not exist).
    pub fn load(path: &Path, step: EventTime) -> Result<Self, CeilingError> {
        let current = match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim().parse().map_err(|_| CeilingError::Corrupt {
                path: path.into(),
                content: text.chars().take(40).collect(),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(CeilingError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.into(),
            current,
            step: step.max(1),
        })
    }

    /// The ceiling loaded or last written.
    pub fn current(&self) -> Option<EventTime> {
        self.current
    }

    /// Makes sure the ceiling covers `ts`, writing a higher one first when it does not.
    pub fn cover(&mut self, ts: EventTime) -> Result<(), CeilingError> {
        if self.current.is_some_and(|c| ts <= c) {
            return Ok(());
        }
        let next = ts.saturating_add(self.step);
        let write = |source| CeilingError::Write {
            path: self.path.clone(),
            source,
        };
        crate::atomic_file::replace(&self.path, format!("{next}\n").as_bytes()).map_err(write)?;
        self.current = Some(next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_with_a_step_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.highmark");
        let mut c = Ceiling::load(&path, 1_000).unwrap();
        assert_eq!(c.current(), None);
        c.cover(5).unwrap();
        assert_eq!(c.current(), Some(1_005));
        c.cover(1_005).unwrap();
        assert_eq!(c.current(), Some(1_005), "covered: no write");
        c.cover(1_006).unwrap();
        assert_eq!(Ceiling::load(&path, 1).unwrap().current(), Some(2_006));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.highmark");
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            Ceiling::load(&path, 1),
            Err(CeilingError::Corrupt { .. })
        ));
    }
}
