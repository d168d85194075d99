//! The similarity index: one HNSW graph (`hnsw_rs`) per space, deduplicating by segment id, with snapshots on disk.
//!
//! Vectors are L2-normalised before insertion and search and compared by dot product, so distances are cosine
//! distances in [0, 2]. A snapshot is written into a fresh directory and then published by atomically replacing the
//! space's `CURRENT` file, so a crash mid-write leaves the previous snapshot in force; segments archived after the
//! snapshot are caught up from the archive when the index is opened.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo};
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::metrics::Metrics;
use crate::record::{DeadLetter, Segment, SegmentId, route};
use crate::wakeup::Wakeup;
use crate::{Error, FieldError};

/// hnsw_rs only dumps graphs built with its maximum layer count.
const LAYERS: usize = 16;
/// Shrinks normalised vectors a hair so rounding can never push a dot product above 1 (hnsw_rs asserts on it).
const SHRINK: f32 = 1.0 - 4e-6;
const SNAPSHOT_BASENAME: &str = "index";

/// `[index]`: HNSW parameters and snapshots.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Directory of the snapshots (one subdirectory per space); a relative path is resolved against the directory of
    /// the config file.
    pub dir: PathBuf,
    /// Links per node (M); layer 0 keeps twice as many.
    pub m: usize,
    /// Beam width while inserting (efConstruction).
    pub ef_construction: usize,
    /// Beam width while searching (efSearch), unless a query sets its own.
    pub ef_search: usize,
    /// Seconds between snapshots of a changed index (one is also written when the job stops).
    pub snapshot_interval_seconds: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            dir: PathBuf::from("var/index"),
            m: 32,
            ef_construction: 200,
            ef_search: 128,
            snapshot_interval_seconds: 60,
        }
    }
}

impl IndexConfig {
    /// Validates; `base` is the directory relative paths are resolved against.
    pub fn build(&self, base: &Path) -> Result<IndexParams, FieldError> {
        if self.dir.as_os_str().is_empty() {
            return Err(FieldError::new("dir", "is empty"));
        }
        if !(2..=255).contains(&self.m) {
            return Err(FieldError::new("m", format!("{} is outside 2..=255", self.m)));
        }
        if self.ef_construction < self.m {
            return Err(FieldError::new(
                "ef_construction",
                format!("{} is below m = {}", self.ef_construction, self.m),
            ));
        }
        if self.ef_search == 0 {
            return Err(FieldError::new("ef_search", "must be at least 1"));
        }
        Ok(IndexParams {
            dir: base.join(&self.dir),
            m: self.m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
            snapshot_interval: Duration::from_secs(self.snapshot_interval_seconds.max(1)),
        })
    }
}

/// Validated index parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexParams {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// Links per node.
    pub m: usize,
    /// Insert beam width.
    pub ef_construction: usize,
    /// Default search beam width.
    pub ef_search: usize,
    /// Time between snapshots.
    pub snapshot_interval: Duration,
}

/// One space's HNSW graph and the ids it holds.
pub struct SpaceIndex {
    hnsw: Hnsw<'static, f32, DistDot>,
    ids: HashSet<u64>,
    /// Ids in the graph that the archive is not known to hold: a snapshot taken before their archive file was
    /// written, then a crash. A replay of such a segment must reach the archive again.
    unarchived: HashSet<u64>,
    dim: usize,
    unsaved: usize,
}

/// What [`SpaceIndex::offer`] did with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// A new id: inserted; the segment goes on to the sinks.
    Inserted,
    /// In the graph but not in the archive: not inserted again; the segment goes on to the sinks.
    Unarchived,
    /// Indexed and archived already: dropped.
    Duplicate,
}

impl SpaceIndex {
    /// An empty index for vectors of `dim` dimensions.
    pub fn new(params: &IndexParams, dim: usize) -> Self {
        SpaceIndex {
            hnsw: Hnsw::new(params.m, 10_000, LAYERS, params.ef_construction, DistDot),
            ids: HashSet::new(),
            unarchived: HashSet::new(),
            dim,
            unsaved: 0,
        }
    }

    /// Opens the snapshot published in `dir`, or an empty index when there is none.
    pub fn open(dir: &Path, params: &IndexParams, dim: usize) -> Result<Self, Error> {
        let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
        let current = match fs::read_to_string(dir.join("CURRENT")) {
            Ok(name) => dir.join(name.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SpaceIndex::new(params, dim)),
            Err(e) => return Err(failed(format!("cannot read CURRENT: {e}"))),
        };
        // A reloaded hnsw_rs graph borrows its loader for as long as it lives; the loader is a few bytes and an index
        // is opened once per process, so it is leaked to give the graph a 'static lifetime.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&current, SNAPSHOT_BASENAME)));
        let hnsw: Hnsw<'static, f32, DistDot> =
            io.load_hnsw().map_err(|e| failed(format!("cannot load snapshot {}: {e}", current.display())))?;
        let mut ids = HashSet::new();
        if hnsw.get_nb_point() > 0 {
            for point in hnsw.get_point_indexation() {
                if point.get_v().len() != dim {
                    return Err(failed(format!(
                        "snapshot holds {}-dimensional vectors but the model produces {dim}: it belongs to another model",
                        point.get_v().len()
                    )));
                }
                ids.insert(point.get_origin_id() as u64);
            }
        }
        Ok(SpaceIndex { hnsw, ids, unarchived: HashSet::new(), dim, unsaved: 0 })
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Points in the graph itself (equal to [`SpaceIndex::len`] unless an id was inserted twice).
    pub fn points(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// Whether the index holds no points.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is indexed.
    pub fn contains(&self, id: SegmentId) -> bool {
        self.ids.contains(&id.0)
    }

    /// Records which of the indexed ids the archive holds: the others are re-archived when a replay offers them.
    pub fn reconcile(&mut self, archived: &HashSet<u64>) {
        self.unarchived = self.ids.difference(archived).copied().collect();
    }

    /// Ids in the graph that the archive is not known to hold.
    pub fn unarchived(&self) -> usize {
        self.unarchived.len()
    }

    /// Offers a segment from the stream: see [`Offered`].
    pub fn offer(&mut self, id: SegmentId, embedding: &[f32]) -> Result<Offered, Error> {
        if self.ids.contains(&id.0) {
            return Ok(if self.unarchived.remove(&id.0) { Offered::Unarchived } else { Offered::Duplicate });
        }
        self.insert(id, embedding)?;
        Ok(Offered::Inserted)
    }

    /// Inserts `embedding` under `id`; returns false (and changes nothing) when `id` is already indexed.
    pub fn insert(&mut self, id: SegmentId, embedding: &[f32]) -> Result<bool, Error> {
        if self.ids.contains(&id.0) {
            return Ok(false);
        }
        let vector = normalized(embedding, self.dim)?;
        self.hnsw.insert((&vector, id.0 as usize));
        self.ids.insert(id.0);
        self.unsaved += 1;
        Ok(true)
    }

    /// The `k` nearest segments to `query`, nearest first, with cosine distances.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<(SegmentId, f32)>, Error> {
        let vector = normalized(query, self.dim)?;
        let found = self.hnsw.search(&vector, k, ef.max(k));
        // Undo the shrink so that a vector's distance to itself reads as 0.
        Ok(found
            .into_iter()
            .map(|n| (SegmentId(n.d_id as u64), (1.0 - (1.0 - n.distance) / (SHRINK * SHRINK)).max(0.0)))
            .collect())
    }

    /// Points inserted since the last snapshot.
    pub fn unsaved(&self) -> usize {
        self.unsaved
    }

    /// Writes a snapshot into `dir` and publishes it; does nothing when the index is empty or unchanged.
    pub fn save(&mut self, dir: &Path) -> Result<(), Error> {
        if self.unsaved == 0 || self.is_empty() {
            return Ok(());
        }
        let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
        fs::create_dir_all(dir).map_err(|e| failed(format!("cannot create directory: {e}")))?;
        let previous = fs::read_to_string(dir.join("CURRENT")).ok().map(|s| s.trim().to_owned());
        let sequence = snapshot_sequence(previous.as_deref()) + 1;
        let name = format!("snapshot-{sequence:010}");
        let target = dir.join(&name);
        let _ = fs::remove_dir_all(&target);
        fs::create_dir_all(&target).map_err(|e| failed(format!("cannot create {}: {e}", target.display())))?;
        self.hnsw.file_dump(&target, SNAPSHOT_BASENAME).map_err(|e| failed(format!("cannot write snapshot: {e}")))?;
        for file in ["graph", "data"] {
            let path = target.join(format!("{SNAPSHOT_BASENAME}.hnsw.{file}"));
            fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        }
        publish(dir, &name).map_err(|e| failed(format!("cannot publish snapshot: {e}")))?;
        if let Some(previous) = previous.filter(|p| *p != name) {
            let _ = fs::remove_dir_all(dir.join(previous));
        }
        self.unsaved = 0;
        Ok(())
    }
}

fn snapshot_sequence(name: Option<&str>) -> u64 {
    name.and_then(|n| n.strip_prefix("snapshot-")).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Atomically points `dir/CURRENT` at `name`.
fn publish(dir: &Path, name: &str) -> std::io::Result<()> {
    let tmp = dir.join("CURRENT.tmp");
    let mut file = fs::File::create(&tmp)?;
    writeln!(file, "{name}")?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join("CURRENT"))?;
    fs::File::open(dir)?.sync_all()
}

/// `v / |v|`, shrunk by [`SHRINK`]; rejects vectors of the wrong length or without a direction.
pub fn normalized(v: &[f32], dim: usize) -> Result<Vec<f32>, Error> {
    if v.len() != dim {
        return Err(Error::Vector(format!("{} dimensions, the index holds {dim}", v.len())));
    }
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if !norm.is_finite() || norm < 1e-12 {
        return Err(Error::Vector(format!("its norm is {norm}: no direction to compare")));
    }
    let scale = (f64::from(SHRINK) / norm) as f32;
    Ok(v.iter().map(|x| x * scale).collect())
}

/// The indices of the spaces one worker owns; snapshots live under `params.dir/space=<space>/`.
pub struct Indices {
    params: IndexParams,
    dim: usize,
    spaces: HashMap<String, SpaceIndex>,
}

impl Indices {
    /// No index opened yet.
    pub fn new(params: IndexParams, dim: usize) -> Self {
        Indices { params, dim, spaces: HashMap::new() }
    }

    /// The index of `space`, opened from its snapshot on first use.
    pub fn space(&mut self, space: &str) -> Result<&mut SpaceIndex, Error> {
        if !self.spaces.contains_key(space) {
            let index = SpaceIndex::open(&space_dir(&self.params.dir, space), &self.params, self.dim)?;
            self.spaces.insert(space.to_owned(), index);
        }
        Ok(self.spaces.get_mut(space).expect("inserted above"))
    }

    /// Adds an index opened elsewhere (e.g. caught up from the archive).
    pub fn insert(&mut self, space: String, index: SpaceIndex) {
        self.spaces.insert(space, index);
    }

    /// The spaces opened so far.
    pub fn spaces(&self) -> impl Iterator<Item = (&str, &SpaceIndex)> {
        self.spaces.iter().map(|(name, index)| (name.as_str(), index))
    }

    /// Snapshots every index changed since its last snapshot.
    pub fn save(&mut self) -> Result<(), Error> {
        for (space, index) in &mut self.spaces {
            index.save(&space_dir(&self.params.dir, space))?;
        }
        Ok(())
    }
}

/// Where `space`'s snapshots live under the index directory.
pub fn space_dir(dir: &Path, space: &str) -> PathBuf {
    dir.join(format!("space={space}"))
}

/// The streams the index operator emits.
pub struct Indexed<'scope> {
    /// Segments the archive does not hold yet: new ones, and replayed ones a snapshot held but the archive lacked.
    pub to_archive: StreamVec<'scope, u64, Segment>,
    /// Every segment offered, replays included — the segments topic is at-least-once, and a replay may follow a
    /// publication that never reached the broker — except replayed windows whose head predates the audio this job
    /// received ([`Segment::resumed`]): an earlier run cut those from more audio, and published that version.
    pub to_publish: StreamVec<'scope, u64, Segment>,
    /// Segments that could not be indexed.
    pub dead_letters: StreamVec<'scope, u64, DeadLetter>,
}

/// Inserts segments into their space's index.
pub trait Index<'scope> {
    /// Routes each segment to the worker owning its space and inserts it unless its id is already indexed; see
    /// [`Indexed`] for what goes where. Snapshots are written every `snapshot_interval` and when the input ends.
    fn index(self, indices: Indices, metrics: Metrics) -> Indexed<'scope>;
}

impl<'scope> Index<'scope> for StreamVec<'scope, u64, Segment> {
    fn index(self, mut indices: Indices, metrics: Metrics) -> Indexed<'scope> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("Index".to_owned(), scope);
        let info = builder.operator_info();
        let mut input = builder.new_input(self, ExchangePact::new(|s: &Segment| route(&s.key.space)));
        let (archive_out, to_archive) = builder.new_output::<Vec<Segment>>();
        let (publish_out, to_publish) = builder.new_output::<Vec<Segment>>();
        let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
        let mut archive_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Segment>>>::from(archive_out);
        let mut publish_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Segment>>>::from(publish_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
        let mut wakeup = Wakeup::new(scope.activator_for(info.address.clone()));
        let interval = indices.params.snapshot_interval;
        builder.build(move |_capabilities| {
            let mut last_save = Instant::now();
            let mut finished = false;
            move |frontiers| {
                let mut archive_session = archive_out.activate();
                let mut publish_session = publish_out.activate();
                let mut dead_session = dead_out.activate();
                input.for_each(|capability, batch| {
                    let (mut new, mut replayed, mut failed) = (Vec::new(), Vec::new(), Vec::new());
                    let mut duplicates = HashMap::<String, u64>::new();
                    let received = batch.len();
                    for segment in batch.drain(..) {
                        let offered = indices
                            .space(&segment.key.space)
                            .and_then(|index| index.offer(segment.key.id(), &segment.embedding));
                        match offered {
                            Ok(Offered::Inserted | Offered::Unarchived) => new.push(segment),
                            Ok(Offered::Duplicate) => {
                                *duplicates.entry(segment.key.space.clone()).or_default() += 1;
                                if !segment.resumed {
                                    replayed.push(segment);
                                }
                            }
                            Err(error) => failed.push(DeadLetter {
                                origin: Some(segment.origin.clone()),
                                key: Some(segment.key.sensor.as_bytes().to_vec()),
                                headers: Vec::new(),
                                payload: Vec::new(),
                                reason: format!("segment {} not indexed: {error}", segment.key.id()),
                                cause: "index",
                            }),
                        }
                    }
                    metrics.count("index", received, new.len());
                    metrics.reject("index", "index", failed.len());
                    for (space, n) in duplicates {
                        metrics.duplicates.with_label_values(&[space.as_str()]).inc_by(n);
                    }
                    publish_session.session(&capability).give_iterator(new.iter().cloned().chain(replayed));
                    archive_session.session(&capability).give_iterator(new.into_iter());
                    dead_session.session(&capability).give_iterator(failed.into_iter());
                });
                for (space, index) in indices.spaces() {
                    metrics.index_points.with_label_values(&[space]).set(index.len() as i64);
                }
                let ended = frontiers[0].is_empty();
                if (ended && !finished) || last_save.elapsed() >= interval {
                    if let Err(error) = indices.save() {
                        tracing::error!(%error, "Index snapshot failed; the archive still holds every segment.");
                    }
                    last_save = Instant::now();
                    finished = ended;
                }
                if !ended {
                    wakeup.within(interval);
                }
            }
        });
        Indexed { to_archive, to_publish, dead_letters }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> IndexParams {
        IndexConfig { m: 8, ef_construction: 32, ..Default::default() }.build(Path::new("/")).unwrap()
    }

    fn vector(seed: u64, dim: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_point_is_found_by_its_own_vector_and_duplicates_are_refused() {
        let mut index = SpaceIndex::new(&params(), 16);
        for i in 0..500 {
            assert!(index.insert(SegmentId(i), &vector(i, 16)).unwrap());
        }
        assert!(!index.insert(SegmentId(7), &vector(999, 16)).unwrap());
        assert_eq!(index.len(), 500);
        for i in 0..500 {
            let found = index.search(&vector(i, 16), 1, 64).unwrap();
            assert_eq!(found[0].0, SegmentId(i));
            assert!(found[0].1 < 1e-4, "self-distance {}", found[0].1);
        }
    }

    #[test]
    fn snapshots_round_trip_and_keep_accepting_inserts() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(&params(), 8);
        for i in 0..100 {
            index.insert(SegmentId(i), &vector(i, 8)).unwrap();
        }
        index.save(dir.path()).unwrap();
        index.insert(SegmentId(100), &vector(100, 8)).unwrap();
        index.save(dir.path()).unwrap();
        let snapshots: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(snapshots.len(), 2, "CURRENT and one snapshot: {snapshots:?}");

        let mut reopened = SpaceIndex::open(dir.path(), &params(), 8).unwrap();
        assert_eq!(reopened.len(), 101);
        assert!(reopened.contains(SegmentId(100)));
        assert!(!reopened.insert(SegmentId(5), &vector(5, 8)).unwrap());
        assert!(reopened.insert(SegmentId(101), &vector(101, 8)).unwrap());
        assert_eq!(reopened.search(&vector(101, 8), 1, 32).unwrap()[0].0, SegmentId(101));
        reopened.save(dir.path()).unwrap();
        assert_eq!(SpaceIndex::open(dir.path(), &params(), 8).unwrap().len(), 102);
        assert!(matches!(SpaceIndex::open(dir.path(), &params(), 9), Err(Error::Index { .. })));
    }

    #[test]
    fn a_snapshot_point_missing_from_the_archive_is_passed_on_once() {
        let mut index = SpaceIndex::new(&params(), 4);
        for i in 0..3 {
            index.insert(SegmentId(i), &vector(i, 4)).unwrap();
        }
        // The archive holds 0 and 1; 2 was in the snapshot only.
        index.reconcile(&[0, 1].into_iter().collect());
        assert_eq!(index.unarchived(), 1);
        assert_eq!(index.offer(SegmentId(1), &vector(1, 4)).unwrap(), Offered::Duplicate);
        assert_eq!(index.offer(SegmentId(2), &vector(2, 4)).unwrap(), Offered::Unarchived);
        assert_eq!(index.offer(SegmentId(2), &vector(2, 4)).unwrap(), Offered::Duplicate);
        assert_eq!(index.offer(SegmentId(3), &vector(3, 4)).unwrap(), Offered::Inserted);
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn vectors_without_direction_are_rejected() {
        let mut index = SpaceIndex::new(&params(), 4);
        assert!(index.insert(SegmentId(1), &[0.0; 4]).is_err());
        assert!(index.insert(SegmentId(1), &[f32::NAN, 0.0, 0.0, 1.0]).is_err());
        assert!(index.insert(SegmentId(1), &[1.0; 3]).is_err());
    }
}
