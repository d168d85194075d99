//! The similarity index: per space, time-partitioned HNSW shards in memory tiers, deduplicating by segment id, with
//! snapshots on disk; the open shard's write buffer linked into its graph by a background thread.
//!
//! Vectors are L2-normalised before insertion and search and compared by dot product, so distances are cosine
//! distances in [0, 2]. A space's index is a [`SpaceIndex`] ([`space`]), which ties together its open shard
//! ([`build`]), its sealed shards ([`shard`], searched over their frozen graphs: [`graph`]; their tiers'
//! representations: [`kernels`]; chorus's own parallel graph builder: [`builder`]), the tier policy that decides when to seal and which tier a shard belongs in
//! ([`policy`]), the search across its shards ([`search`]) and what it is on disk ([`manifest`]). `[index]` and its
//! validated parameters are in [`config`]; a point's sensor and time, filters and unit vectors in [`point`]. Files
//! below this one never import it: it wires them (the registry of spaces, the operator) and re-exports what callers
//! use.

mod build;
mod builder;
mod config;
mod graph;
mod kernels;
mod manifest;
mod point;
mod policy;
mod search;
mod shard;
mod space;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use builder::build as build_graph;
pub use config::{Builder, Construction, IndexConfig, IndexParams};
pub use graph::Graph;
pub use kernels::Tier;
pub use point::{Filter, PointInfo, unit};
pub use policy::now_seconds;
pub use search::Request;
pub use shard::Shard;
pub use space::{Offered, SpaceIndex, TierUsage};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::Error;
use crate::cause::Cause;
use crate::metrics::Metrics;
use crate::record::{DeadLetter, Segment, SegmentId, route};
use crate::wakeup::Wakeup;

/// A space's index, shared between the worker that inserts into it and the threads that query it.
pub type SharedSpace = Arc<RwLock<SpaceIndex>>;

/// Every space's index in this process, by name.
#[derive(Clone, Default)]
pub struct Registry(Arc<RwLock<HashMap<String, SharedSpace>>>);

impl Registry {
    /// The index of `space`, if this process holds it.
    pub fn get(&self, space: &str) -> Option<SharedSpace> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(space).cloned()
    }

    /// The spaces this process holds, sorted.
    pub fn spaces(&self) -> Vec<String> {
        let mut spaces: Vec<String> = self.0.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        spaces.sort();
        spaces
    }

    fn insert(&self, space: String, index: SharedSpace) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(space, index);
    }
}

/// Takes a space's lock even when a thread panicked holding it (the index is still consistent: every change to it
/// is made under the lock and completes or fails as a whole).
pub fn read(space: &SharedSpace) -> std::sync::RwLockReadGuard<'_, SpaceIndex> {
    space.read().unwrap_or_else(|e| e.into_inner())
}

/// See [`read`].
pub fn write(space: &SharedSpace) -> std::sync::RwLockWriteGuard<'_, SpaceIndex> {
    space.write().unwrap_or_else(|e| e.into_inner())
}

/// The indices of the spaces one worker owns; files live under `params.dir/space=<space>/`.
pub struct Indices {
    params: IndexParams,
    dim: usize,
    mine: HashMap<String, SharedSpace>,
    registry: Registry,
    linker: Linker,
}

/// Points the background thread links into a space's graph per hold of its read lock: an insert waiting for the
/// write lock waits for at most one such batch.
const LINK_BATCH: usize = 16;
/// How often the index operator reports a write buffer's size while the background builder drains it.
const BUFFER_REPORT: Duration = Duration::from_millis(250);
/// How long the background thread sleeps when no write buffer holds a point, unless an insert wakes it.
const LINK_IDLE: Duration = Duration::from_millis(50);

/// The background thread that links the write buffers of a worker's spaces into their graphs (chorus's builder,
/// `build.rs`), beside searches, so that the worker's inserts return once their vectors are buffered.
#[derive(Default)]
struct Linker {
    spaces: Arc<Mutex<HashMap<String, SharedSpace>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Linker {
    /// Adds `space` (named `name`, replacing one of that name) to those the thread links, starting the thread on the
    /// first.
    fn watch(&mut self, name: &str, space: SharedSpace) {
        self.spaces.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), space);
        if self.thread.is_some() {
            return;
        }
        let (spaces, stop) = (self.spaces.clone(), self.stop.clone());
        let spawned = std::thread::Builder::new().name("chorus-index-link".into()).spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let watched: Vec<SharedSpace> =
                    spaces.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
                let linked: usize = watched.iter().map(|space| read(space).link(LINK_BATCH)).sum();
                if linked == 0 {
                    std::thread::park_timeout(LINK_IDLE);
                }
            }
        });
        match spawned {
            Ok(thread) => self.thread = Some(thread),
            // Without the thread, inserts link what exceeds the buffer's bound and seals link the rest.
            Err(error) => {
                tracing::warn!(%error, "The index's background builder cannot start; inserts link their own points.")
            }
        }
    }

    /// Wakes the thread: points wait in a write buffer.
    fn nudge(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for Linker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Indices {
    /// No index opened yet; the ones opened are also entered in `registry`.
    pub fn new(params: IndexParams, dim: usize, registry: Registry) -> Self {
        Indices { params, dim, mine: HashMap::new(), registry, linker: Linker::default() }
    }

    /// Wakes the background thread that links the write buffers into the graphs: call after inserting.
    pub fn nudge(&self) {
        self.linker.nudge();
    }

    /// The index of `space`, opened from its snapshot on first use.
    pub fn space(&mut self, space: &str) -> Result<SharedSpace, Error> {
        if let Some(index) = self.mine.get(space) {
            return Ok(index.clone());
        }
        let index = SpaceIndex::open(&space_dir(&self.params.dir, space), &self.params, self.dim)?;
        Ok(self.insert(space.to_owned(), index))
    }

    /// Adds an index opened elsewhere (e.g. caught up from the archive).
    pub fn insert(&mut self, space: String, index: SpaceIndex) -> SharedSpace {
        let shared = Arc::new(RwLock::new(index));
        self.mine.insert(space.clone(), shared.clone());
        self.linker.watch(&space, shared.clone());
        self.registry.insert(space, shared.clone());
        // One more space: each space's share of the budget shrinks.
        let budget = self.budget();
        for index in self.mine.values() {
            write(index).set_budget(budget);
        }
        shared
    }

    /// The spaces opened so far.
    pub fn spaces(&self) -> impl Iterator<Item = (&str, &SharedSpace)> {
        self.mine.iter().map(|(name, index)| (name.as_str(), index))
    }

    /// The budget of each space: the worker's budget shared evenly among the spaces it holds.
    fn budget(&self) -> Option<usize> {
        self.params.memory_budget.map(|b| b / self.mine.len().max(1))
    }

    /// Applies the tier policy to every space (see [`SpaceIndex::maintain`]).
    pub fn maintain(&mut self, now: u64) -> Result<(), Error> {
        let budget = self.budget();
        for index in self.mine.values() {
            write(index).maintain(now, budget)?;
        }
        Ok(())
    }

    /// Snapshots every index changed since its last snapshot.
    pub fn save(&mut self) -> Result<(), Error> {
        for index in self.mine.values() {
            write(index).save()?;
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
    /// publication that never reached the broker. A replayed window whose head predates the audio this job received
    /// keeps its [`Segment::resumed`] mark (an earlier run may have cut it from more audio: the job publishes the
    /// archived version); new segments go out unmarked.
    pub to_publish: StreamVec<'scope, u64, Segment>,
    /// Segments that could not be indexed.
    pub dead_letters: StreamVec<'scope, u64, DeadLetter>,
}

/// Inserts segments into their space's index.
pub trait Index<'scope> {
    /// Routes each segment to the worker owning its space and inserts it unless its id is already indexed; see
    /// [`Indexed`] for what goes where. Snapshots are written every `snapshot_interval` and when the input ends.
    ///
    /// # Examples
    /// ```
    /// use chorus_operators::index::{Index, IndexConfig, Indices, Registry, read, space_dir};
    /// use chorus_operators::metrics::Metrics;
    /// use chorus_operators::record::{Origin, Segment, SegmentKey};
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::{Map, ToStream};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let params = IndexConfig::default().build(dir.path()).unwrap();
    /// let snapshots = space_dir(&params.dir, "birds");
    /// let registry = Registry::default();
    /// let indices = Indices::new(params, 4, registry.clone());
    /// let segment = |start: i64, embedding: Vec<f32>| Segment {
    ///     key: SegmentKey { space: "birds".into(), sensor: "s1".into(), start, sample_rate: 1_000, len: 2_000 },
    ///     coverage: 1.0,
    ///     origin: Origin { topic: "audio".into(), partition: 0, offset: start / 1_000 },
    ///     resumed: false,
    ///     embedding,
    ///     audio: Vec::new(),
    /// };
    /// // Two new segments, the first one again (a replay), and one whose embedding has no direction.
    /// let segments = vec![
    ///     segment(0, vec![1.0, 0.0, 0.0, 0.0]),
    ///     segment(1_000, vec![0.0, 1.0, 0.0, 0.0]),
    ///     segment(0, vec![1.0, 0.0, 0.0, 0.0]),
    ///     segment(2_000, vec![0.0; 4]),
    /// ];
    /// let (archived, published, dead_letters) = timely::example(move |scope| {
    ///     let indexed = segments.to_stream(scope).index(indices, Metrics::unregistered());
    ///     let starts = |segment: Segment| segment.key.start;
    ///     let archived = indexed.to_archive.map(starts).capture();
    ///     let published = indexed.to_publish.map(starts).capture();
    ///     (archived, published, indexed.dead_letters.map(|letter| letter.reason).capture())
    /// });
    /// let starts = |captured: Vec<(u64, Vec<i64>)>| captured.into_iter().flat_map(|(_, s)| s).collect::<Vec<_>>();
    /// // The new segments go to the archive; every segment offered, the replay too, is published again.
    /// assert_eq!(starts(archived.extract()), [0, 1_000]);
    /// assert_eq!(starts(published.extract()), [0, 0, 1_000]);
    /// let dead_letters: Vec<String> = dead_letters.extract().into_iter().flat_map(|(_, d)| d).collect();
    /// assert_eq!(dead_letters.len(), 1);
    /// assert!(dead_letters[0].contains("no direction"), "{dead_letters:?}");
    /// // The space's index holds the two new segments, and its snapshot was written when the input ended.
    /// assert_eq!(read(&registry.get("birds").unwrap()).len(), 2);
    /// assert!(snapshots.join("CURRENT").is_file());
    /// ```
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
                    let started = Instant::now();
                    let now = now_seconds();
                    // Per space, in arrival order, the new segments inserted in parallel.
                    let mut by_space: HashMap<String, Vec<Segment>> = HashMap::new();
                    for segment in batch.drain(..) {
                        by_space.entry(segment.key.space.clone()).or_default().push(segment);
                    }
                    for (space, segments) in by_space {
                        let points: Vec<(SegmentId, PointInfo, &[f32])> = segments
                            .iter()
                            .map(|s| {
                                let info =
                                    PointInfo { sensor: s.key.sensor.clone(), start_micros: s.key.start_micros() };
                                (s.key.id(), info, s.embedding.as_slice())
                            })
                            .collect();
                        let offered = match indices.space(&space) {
                            Ok(index) => write(&index).offer_many(&points, now),
                            Err(error) => {
                                let message = error.to_string();
                                points
                                    .iter()
                                    .map(|_| Err(Error::Index { path: space.clone(), message: message.clone() }))
                                    .collect()
                            }
                        };
                        drop(points);
                        for (segment, offered) in segments.into_iter().zip(offered) {
                            match offered {
                                Ok(Offered::Inserted | Offered::Unarchived) => new.push(segment),
                                Ok(Offered::Duplicate) => {
                                    *duplicates.entry(segment.key.space.clone()).or_default() += 1;
                                    replayed.push(segment);
                                }
                                Err(error) => failed.push(DeadLetter {
                                    origin: Some(segment.origin.clone()),
                                    key: Some(segment.key.sensor.as_bytes().to_vec()),
                                    headers: Vec::new(),
                                    payload: Vec::new(),
                                    reason: format!("segment {} not indexed: {error}", segment.key.id()),
                                    cause: Cause::Index,
                                }),
                            }
                        }
                    }
                    indices.nudge();
                    metrics.count("index", received, new.len());
                    metrics.time("index", started);
                    metrics.reject("index", Cause::Index, failed.len());
                    for (space, n) in duplicates {
                        metrics.duplicates.with_label_values(&[space.as_str()]).inc_by(n);
                    }
                    // The segments topic takes no audio: only the archive keeps it.
                    let fresh = new.iter().map(|s| Segment { resumed: false, ..s.without_audio() });
                    publish_session.session(&capability).give_iterator(fresh.chain(replayed.into_iter().map(
                        |mut s| {
                            s.audio = Vec::new();
                            s
                        },
                    )));
                    archive_session.session(&capability).give_iterator(new.into_iter());
                    dead_session.session(&capability).give_iterator(failed.into_iter());
                });
                let mut buffered = 0;
                for (space, index) in indices.spaces() {
                    let index = read(index);
                    metrics.index_points.with_label_values(&[space]).set(index.len() as i64);
                    metrics.index_buffered.with_label_values(&[space]).set(index.buffered() as i64);
                    buffered += index.buffered();
                    for (tier, usage) in index.usage() {
                        metrics.index_bytes.with_label_values(&[space, tier.name()]).set(usage.bytes as i64);
                    }
                }
                let ended = frontiers[0].is_empty();
                if (ended && !finished) || last_save.elapsed() >= interval {
                    if let Err(error) = indices.maintain(now_seconds()) {
                        tracing::error!(%error, "Index tier maintenance failed; the shards stay where they are.");
                    }
                    if let Err(error) = indices.save() {
                        tracing::error!(%error, "Index snapshot failed; the archive still holds every segment.");
                    }
                    last_save = Instant::now();
                    finished = ended;
                }
                if !ended {
                    // While the background builder drains a write buffer, its gauge is read again soon.
                    wakeup.within(if buffered > 0 { BUFFER_REPORT } else { interval });
                }
            }
        });
        Indexed { to_archive, to_publish, dead_letters }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The tests of the configuration, and the fixtures the tests of every file of the index (and the refinement's
    //! kNN) share.

    use std::ops::Range;

    use super::build::{OpenShard, prepare};
    use super::*;
    use crate::record::SegmentId;

    /// Inserts the points `ids` into `index` at time 0, each with the info and vector its id gives.
    pub(super) fn insert_range(index: &mut SpaceIndex, ids: Range<u64>, dim: usize) {
        for i in ids {
            index.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap();
        }
    }

    pub(super) fn params(shard_max_points: usize) -> IndexParams {
        IndexConfig { m: 8, ef_construction: 48, shard_max_points, ..Default::default() }.build(Path::new("/")).unwrap()
    }

    /// A pseudo-random vector with components in [-1, 1], the same for the same seed.
    pub(crate) fn vector(seed: u64, dim: usize) -> Vec<f32> {
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

    pub(super) fn info(i: u64) -> PointInfo {
        PointInfo { sensor: format!("s{}", i % 3), start_micros: i as i64 * 5_000_000 }
    }

    pub(super) fn search(
        index: &SpaceIndex,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &Filter,
    ) -> Vec<(SegmentId, f32)> {
        index.search(&Request { vector: query, k, ef, filter }, 0).unwrap()
    }

    /// Exact neighbours by brute force over `ids`.
    pub(super) fn exact(
        query: &[f32],
        ids: impl Iterator<Item = u64>,
        dim: usize,
        k: usize,
        filter: &Filter,
    ) -> Vec<u64> {
        let q = unit(query, dim).unwrap();
        let mut all: Vec<(u64, f32)> = ids
            .filter(|i| filter.admits(&info(*i).sensor, info(*i).start_micros))
            .map(|i| (i, kernels::distance(&q, &unit(&vector(i, dim), dim).unwrap())))
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|(i, _)| i).collect()
    }

    /// An open shard holding `ids`, each with its [`vector`] and [`info`].
    pub(super) fn open_shard(ids: Range<u64>, dim: usize) -> OpenShard {
        open_shard_by(Builder::default(), ids, dim)
    }

    /// [`open_shard`] built by `builder`, its points linked into the graph.
    pub(super) fn open_shard_by(builder: Builder, ids: Range<u64>, dim: usize) -> OpenShard {
        let infos: Vec<(u64, PointInfo)> = ids.map(|i| (i, info(i))).collect();
        let points: Vec<(u64, &PointInfo, Vec<f32>)> =
            infos.iter().map(|(i, info)| (*i, info, prepare(&vector(*i, dim), dim).unwrap())).collect();
        let mut open = OpenShard::new(&IndexParams { builder, ..params(1_000) }, dim);
        open.insert(&points, 0);
        open.link_all();
        open
    }

    #[test]
    fn r17_inserts_return_with_their_vectors_buffered_searched_at_once_and_linked_behind_them() {
        let (dim, n) = (32, 3_000u64);
        let dir = tempfile::tempdir().unwrap();
        let params = IndexParams {
            dir: dir.path().to_path_buf(),
            m: 16,
            ef_construction: 100,
            buffer_max_points: 5_000,
            ..params(100_000)
        };
        let mut indices = Indices::new(params.clone(), dim, Registry::default());
        let space = indices.space("birds").unwrap();
        let vectors: Vec<Vec<f32>> = (0..n).map(|i| vector(i, dim)).collect();
        let found_self =
            |index: &SpaceIndex, i: u64| search(index, &vectors[i as usize], 1, 16, &Filter::default())[0].0;
        for batch in (0..n).collect::<Vec<_>>().chunks(500) {
            let points: Vec<_> =
                batch.iter().map(|i| (SegmentId(*i), info(*i), vectors[*i as usize].as_slice())).collect();
            let mut index = write(&space);
            assert!(index.offer_many(&points, 0).iter().all(|o| matches!(o, Ok(Offered::Inserted))));
            // Read-your-writes: every vector acknowledged is found by its own vector at once, linked or not.
            assert!(batch.iter().all(|i| found_self(&index, *i) == SegmentId(*i)));
            drop(index);
            indices.nudge();
        }
        // The background thread drains the buffer into the graph.
        let started = Instant::now();
        while read(&space).buffered() > 0 {
            assert!(started.elapsed() < Duration::from_secs(60), "{} points still buffered", read(&space).buffered());
            std::thread::sleep(Duration::from_millis(10));
        }
        let index = read(&space);
        assert_eq!((index.len(), index.buffered()), (n as usize, 0));
        // Through the graph alone now: every point finds itself, and the answers are the exact neighbours.
        assert!((0..n).all(|i| found_self(&index, i) == SegmentId(i)));
        let mut hits = 0;
        for q in 0..100 {
            let query = vector(1_000_000 + q, dim);
            let want = exact(&query, 0..n, dim, 10, &Filter::default());
            hits += search(&index, &query, 10, 64, &Filter::default())
                .iter()
                .filter(|(id, _)| want.contains(&id.0))
                .count();
        }
        assert!(hits >= 950, "recall@10 at ef 64: {hits} of 1000");
        drop(index);
        indices.save().unwrap();
        drop(indices);
        // The thread stops with its worker's indices; the snapshot holds every point, linked.
        let reopened = SpaceIndex::open(&space_dir(&params.dir, "birds"), &params, dim).unwrap();
        assert_eq!((reopened.len(), reopened.buffered()), (n as usize, 0));
    }

    #[test]
    fn r17_a_full_write_buffer_is_linked_by_the_insert_itself_so_it_never_holds_more_than_its_bound() {
        let (dim, dir) = (16, tempfile::tempdir().unwrap());
        // No background thread: the inserts alone keep the buffer to its bound.
        let mut index = SpaceIndex::new(dir.path(), &IndexParams { buffer_max_points: 100, ..params(100_000) }, dim);
        let mut most = 0;
        for start in (0..2_000u64).step_by(70) {
            let points: Vec<_> = (start..start + 70).map(|i| (SegmentId(i), info(i), vector(i, dim))).collect();
            let points: Vec<_> = points.iter().map(|(id, info, v)| (*id, info.clone(), v.as_slice())).collect();
            index.offer_many(&points, 0);
            most = most.max(index.buffered());
        }
        assert_eq!(most, 100);
        assert_eq!((index.len(), index.buffered()), (2_030, 100));
        for i in (0..2_030).step_by(13) {
            assert_eq!(search(&index, &vector(i, dim), 1, 32, &Filter::default())[0].0, SegmentId(i), "point {i}");
        }
    }

    /// Sealed shard `name` under `dir`, holding `ids` as [`open_shard`] does, sealed at `now`.
    pub(super) fn sealed_shard(dir: &Path, name: &str, ids: Range<u64>, dim: usize, now: u64) -> Shard {
        let open = open_shard(ids, dim);
        let mut shard = Shard::seal(dir, name, |out| open.freeze_into(out), dim, now).unwrap();
        drop(open);
        shard.set_tier(Tier::F32).unwrap();
        shard
    }
}
