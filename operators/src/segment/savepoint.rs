//! Savepoints of earlier releases: one file per worker (`segmenter-<w>-of-<W>.bin`) holding every sensor's timeline
//! after a clean stop. A job moves what they hold into the sensor [`Store`] before it starts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::sensors::Segmenter;
use super::store::Store;
use super::timeline::Timeline;

const SAVEPOINT_VERSION: u32 = 1;

/// The per-worker savepoint files (`segmenter-<w>-of-<W>.bin`) of earlier releases, which held every sensor's
/// timeline after a clean stop; a job moves what they hold to the [`Store`] before it starts.
#[derive(Default, Serialize, Deserialize)]
pub struct Savepoint {
    version: u32,
    timelines: Vec<((String, String), Timeline)>,
}

impl Savepoint {
    /// Sensors held.
    pub fn len(&self) -> usize {
        self.timelines.len()
    }

    /// Whether no sensor is held.
    pub fn is_empty(&self) -> bool {
        self.timelines.is_empty()
    }

    /// Reads one.
    pub fn read(path: &Path) -> std::io::Result<Savepoint> {
        let savepoint: Savepoint = bincode::deserialize(&std::fs::read(path)?).map_err(std::io::Error::other)?;
        if savepoint.version != SAVEPOINT_VERSION {
            return Err(std::io::Error::other(format!(
                "savepoint version {} is not {SAVEPOINT_VERSION}",
                savepoint.version
            )));
        }
        Ok(savepoint)
    }

    /// Moves every sensor it holds to `store`.
    pub fn into_store(self, store: &mut Store) -> std::io::Result<()> {
        for ((space, sensor), timeline) in self.timelines {
            Segmenter::store_timeline(store, &space, &sensor, timeline)?;
        }
        Ok(())
    }
}
