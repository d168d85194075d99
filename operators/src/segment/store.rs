//! Sensor state on disk: one file per sensor under `state_dir/sensors/`, holding the audio it sent that no window has
//! used up yet. A sensor gone quiet is moved there (so that it holds back neither its partition's commits nor
//! memory), every sensor is moved there when the job stops cleanly, and a sensor's next chunk brings it back. Files
//! are replaced whole and durably ([`crate::durable::replace_many`], sensors parked together in one batch); a job that
//! dies leaves them as they were.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bumped whenever the layout of a stored sensor changes.
const VERSION: u32 = 1;

/// What a sensor's file holds.
#[derive(Deserialize)]
struct Stored<State> {
    version: u32,
    space: String,
    sensor: String,
    state: State,
}

/// [`Stored`] as it is written, borrowing the state (the same bytes).
#[derive(Serialize)]
struct Storing<'a, State> {
    version: u32,
    space: &'a str,
    sensor: &'a str,
    state: &'a State,
}

/// The sensor files of one worker: a sensor is only ever read and written by the worker that owns it (the one the
/// segmenting exchange routes it to), which a file's name tells (`<route>-<key>.bin`), so the number of workers may
/// change between runs.
pub struct Store {
    dir: PathBuf,
    /// The keys of this worker's sensors with a file, as listed when opened and kept up to date since.
    present: HashSet<u64>,
}

impl Store {
    /// Opens (and creates) the store in `dir` for worker `worker` of `peers`.
    pub fn open(dir: &Path, worker: usize, peers: usize) -> io::Result<Store> {
        fs::create_dir_all(dir)?;
        let mut present = HashSet::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let Some((route, key)) = name.strip_suffix(".bin").and_then(|stem| stem.split_once('-')) else { continue };
            let (Ok(route), Ok(key)) = (u64::from_str_radix(route, 16), u64::from_str_radix(key, 16)) else { continue };
            if (route % peers.max(1) as u64) as usize == worker {
                present.insert(key);
            }
        }
        Ok(Store { dir: dir.to_path_buf(), present })
    }

    /// The `(space, sensor)` of every sensor with a file, read from the head of each file; a file that cannot be read
    /// is left out (loading it says why).
    pub(super) fn sensors(&self) -> Vec<(String, String)> {
        #[derive(Deserialize)]
        struct Head {
            version: u32,
            space: String,
            sensor: String,
        }
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut sensors = Vec::new();
        for entry in entries.flatten() {
            let Ok(file) = fs::File::open(entry.path()) else { continue };
            let Ok(head) = bincode::deserialize_from::<_, Head>(io::BufReader::new(file)) else { continue };
            if head.version == VERSION && self.present.contains(&Store::key(&head.space, &head.sensor)) {
                sensors.push((head.space, head.sensor));
            }
        }
        sensors
    }

    /// Sensors with a file.
    pub fn len(&self) -> usize {
        self.present.len()
    }

    /// Whether no sensor has a file.
    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    fn key(space: &str, sensor: &str) -> u64 {
        crate::record::SegmentId::of(space, sensor, 0).0
    }

    fn path(&self, space: &str, sensor: &str) -> PathBuf {
        let route = crate::record::route(space) ^ crate::record::route(sensor);
        self.dir.join(format!("{route:016x}-{:016x}.bin", Store::key(space, sensor)))
    }

    /// Writes a sensor's state, replacing its file whole.
    pub(super) fn save<State: Serialize>(&mut self, space: &str, sensor: &str, state: &State) -> io::Result<()> {
        self.save_many(&[(space, sensor, state)]).pop().expect("one outcome per sensor")
    }

    /// Writes several sensors' states `(space, sensor, state)`, each replacing its file whole, in one durable batch
    /// ([`crate::durable::replace_many`]); one outcome per sensor, in order.
    pub(super) fn save_many<State: Serialize>(&mut self, sensors: &[(&str, &str, &State)]) -> Vec<io::Result<()>> {
        let encoded: Vec<io::Result<(PathBuf, Vec<u8>)>> = sensors
            .iter()
            .map(|(space, sensor, state)| {
                let stored = Storing { version: VERSION, space, sensor, state: *state };
                let bytes = bincode::serialize(&stored).map_err(io::Error::other)?;
                Ok((self.path(space, sensor), bytes))
            })
            .collect();
        let files: Vec<(&Path, &[u8])> =
            encoded.iter().flatten().map(|(path, bytes)| (path.as_path(), bytes.as_slice())).collect();
        let mut replaced = crate::durable::replace_many(&files).into_iter();
        encoded
            .iter()
            .zip(sensors)
            .map(|(encoded, (space, sensor, _))| {
                let Err(error) = encoded else {
                    replaced.next().expect("one outcome per file")?;
                    self.present.insert(Store::key(space, sensor));
                    return Ok(());
                };
                Err(io::Error::new(error.kind(), error.to_string()))
            })
            .collect()
    }

    /// A sensor's stored state, if it has one; the file stays until [`Store::remove`].
    pub(super) fn load<State: DeserializeOwned>(&self, space: &str, sensor: &str) -> io::Result<Option<State>> {
        let key = Store::key(space, sensor);
        if !self.present.contains(&key) {
            return Ok(None);
        }
        let path = self.path(space, sensor);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let stored: Stored<State> = bincode::deserialize(&bytes)
            .map_err(|e| io::Error::other(format!("{} is not a stored sensor: {e}", path.display())))?;
        if stored.version != VERSION {
            return Err(io::Error::other(format!(
                "{} holds a sensor stored by another release (version {}, not {VERSION})",
                path.display(),
                stored.version
            )));
        }
        if stored.space != space || stored.sensor != sensor {
            // Two sensors whose names hash alike: the one stored keeps its file.
            return Err(io::Error::other(format!(
                "{} holds sensor '{}' of space '{}', whose key collides with sensor '{sensor}' of space '{space}'",
                path.display(),
                stored.sensor,
                stored.space
            )));
        }
        Ok(Some(stored.state))
    }

    /// Removes the files of `sensors` `(space, sensor)` (once what they held is durable elsewhere), syncing the
    /// directory once for them all; one outcome per sensor, in order.
    pub(super) fn remove_many(&mut self, sensors: &[(&str, &str)]) -> Vec<io::Result<()>> {
        let mut removed: Vec<io::Result<()>> = sensors
            .iter()
            .map(|(space, sensor)| {
                match fs::remove_file(self.path(space, sensor)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                self.present.remove(&Store::key(space, sensor));
                Ok(())
            })
            .collect();
        if removed.iter().any(Result::is_ok)
            && let Err(error) = crate::durable::sync_dir(&self.dir)
        {
            for outcome in removed.iter_mut().filter(|o| o.is_ok()) {
                *outcome = Err(io::Error::new(error.kind(), error.to_string()));
            }
        }
        removed
    }
}
