//! The similarity index: per space, time-partitioned HNSW shards (`hnsw_rs`) in memory tiers, deduplicating by
//! segment id, with snapshots on disk.
//!
//! Vectors are L2-normalised before insertion and search and compared by dot product, so distances are cosine
//! distances in [0, 2]. A space's index is a [`SpaceIndex`] ([`space`]), which ties together its open shard
//! ([`build`]), its sealed shards ([`shard`], searched over their frozen graphs: [`graph`]; their tiers'
//! representations: [`kernels`]), the tier policy that decides when to seal and which tier a shard belongs in
//! ([`policy`]), the search across its shards ([`search`]) and what it is on disk ([`manifest`]).

mod build;
mod graph;
mod kernels;
mod manifest;
mod policy;
mod search;
mod shard;
mod space;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use kernels::Tier;
pub use search::Request;
use serde::Deserialize;
pub use shard::Shard;
pub use space::{Offered, PointInfo, SpaceIndex, TierUsage};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::metrics::Metrics;
use crate::record::{DeadLetter, Segment, SegmentId, route};
use crate::wakeup::Wakeup;
use crate::{Error, FieldError};

const DAY: u64 = 86_400;

/// `[index]`: HNSW parameters, shards, tiers and snapshots.
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
    /// The open shard is sealed once it holds this many points...
    pub shard_max_points: usize,
    /// ... or once its first point is this old (seconds).
    pub shard_max_age_seconds: u64,
    /// A sealed shard unused for this long (seconds since it was sealed or last answered a query) moves to f16;
    /// 0: never by age.
    pub f16_after_seconds: u64,
    /// ... to int8; 0: never by age.
    pub int8_after_seconds: u64,
    /// ... out of memory, answered from the Parquet archive; 0: never by age.
    pub archive_after_seconds: u64,
    /// Memory (MiB) the index of one worker may hold; beyond it, the least recently used shards move down a tier.
    /// 0: no budget.
    pub memory_budget_mb: u64,
    /// Quantized tiers fetch `k × rescore_oversample` candidates and rescore them with the full-precision vectors
    /// kept on disk; 0 turns rescoring off.
    pub rescore_oversample: usize,
    /// A shard below f32 that answers this many queries moves one tier up.
    pub promote_after_hits: u32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            dir: PathBuf::from("var/index"),
            m: 32,
            ef_construction: 200,
            ef_search: 128,
            snapshot_interval_seconds: 60,
            shard_max_points: 100_000,
            shard_max_age_seconds: DAY,
            f16_after_seconds: 7 * DAY,
            int8_after_seconds: 30 * DAY,
            archive_after_seconds: 0,
            memory_budget_mb: 0,
            rescore_oversample: 4,
            promote_after_hits: 3,
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
        if self.shard_max_points < 2 {
            return Err(FieldError::new("shard_max_points", format!("{} is below 2", self.shard_max_points)));
        }
        let ages = [
            ("f16_after_seconds", self.f16_after_seconds),
            ("int8_after_seconds", self.int8_after_seconds),
            ("archive_after_seconds", self.archive_after_seconds),
        ];
        for pair in ages.windows(2) {
            let ((warm, a), (cold, b)) = (pair[0], pair[1]);
            if a > 0 && b > 0 && b < a {
                return Err(FieldError::new(cold, format!("{b} is below {warm} = {a}: tiers age in order")));
            }
        }
        if self.rescore_oversample > 64 {
            return Err(FieldError::new("rescore_oversample", format!("{} is above 64", self.rescore_oversample)));
        }
        Ok(IndexParams {
            dir: base.join(&self.dir),
            m: self.m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
            snapshot_interval: Duration::from_secs(self.snapshot_interval_seconds.max(1)),
            shard_max_points: self.shard_max_points,
            shard_max_age: Duration::from_secs(self.shard_max_age_seconds.max(1)),
            tier_ages: [self.f16_after_seconds, self.int8_after_seconds, self.archive_after_seconds],
            memory_budget: (self.memory_budget_mb > 0).then(|| self.memory_budget_mb as usize * (1 << 20)),
            rescore_oversample: self.rescore_oversample,
            promote_after_hits: self.promote_after_hits.max(1),
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
    /// Points that seal the open shard.
    pub shard_max_points: usize,
    /// Age that seals the open shard.
    pub shard_max_age: Duration,
    /// Seconds unused before f16, int8 and archive (0: never).
    pub tier_ages: [u64; 3],
    /// Bytes the index of one worker may hold.
    pub memory_budget: Option<usize>,
    /// Candidates per wanted neighbour rescored at full precision.
    pub rescore_oversample: usize,
    /// Answers that promote a shard one tier.
    pub promote_after_hits: u32,
}

/// Which segments may answer a query: all when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these sensors (none: any).
    pub sensors: Vec<String>,
    /// Only segments starting at or after this time (microseconds since the epoch).
    pub from_micros: Option<i64>,
    /// Only segments starting before this time.
    pub to_micros: Option<i64>,
}

impl Filter {
    /// Whether it lets everything through.
    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty() && self.from_micros.is_none() && self.to_micros.is_none()
    }

    /// Whether a segment of `sensor` starting at `start_micros` passes.
    pub fn admits(&self, sensor: &str, start_micros: i64) -> bool {
        self.from_micros.is_none_or(|from| start_micros >= from)
            && self.to_micros.is_none_or(|to| start_micros < to)
            && (self.sensors.is_empty() || self.sensors.iter().any(|s| s == sensor))
    }

    /// Whether segments starting within `[first, last]` may pass.
    pub fn overlaps(&self, (first, last): (i64, i64)) -> bool {
        self.from_micros.is_none_or(|from| last >= from) && self.to_micros.is_none_or(|to| first < to)
    }
}

/// The Parquet archive as a space's coldest tier: a scan of the archived embeddings that pass a filter.
pub trait ColdTier: Sync {
    /// Calls `visit(id, embedding)` for each archived segment that passes `filter` (more may be visited).
    fn scan(&self, filter: &Filter, visit: &mut dyn FnMut(u64, &[f32])) -> Result<(), Error>;
}

/// Seconds since the epoch.
pub fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `v / |v|`; rejects vectors of the wrong length or without a direction.
pub fn unit(v: &[f32], dim: usize) -> Result<Vec<f32>, Error> {
    if v.len() != dim {
        return Err(Error::Vector(format!("{} dimensions, the index holds {dim}", v.len())));
    }
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if !norm.is_finite() || norm < 1e-12 {
        return Err(Error::Vector(format!("its norm is {norm}: no direction to compare")));
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

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
}

impl Indices {
    /// No index opened yet; the ones opened are also entered in `registry`.
    pub fn new(params: IndexParams, dim: usize, registry: Registry) -> Self {
        Indices { params, dim, mine: HashMap::new(), registry }
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
        self.registry.insert(space, shared.clone());
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
                                    cause: "index",
                                }),
                            }
                        }
                    }
                    metrics.count("index", received, new.len());
                    metrics.time("index", started);
                    metrics.reject("index", "index", failed.len());
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
                for (space, index) in indices.spaces() {
                    let index = read(index);
                    metrics.index_points.with_label_values(&[space]).set(index.len() as i64);
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
    use crate::record::SegmentId;

    fn params(shard_max_points: usize) -> IndexParams {
        IndexConfig { m: 8, ef_construction: 48, shard_max_points, ..Default::default() }.build(Path::new("/")).unwrap()
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

    fn info(i: u64) -> PointInfo {
        PointInfo { sensor: format!("s{}", i % 3), start_micros: i as i64 * 5_000_000 }
    }

    fn search(index: &SpaceIndex, query: &[f32], k: usize, ef: usize, filter: &Filter) -> Vec<(SegmentId, f32)> {
        index.search(&Request { vector: query, k, ef, filter }, None, 0).unwrap()
    }

    /// Exact neighbours by brute force over `ids`.
    fn exact(query: &[f32], ids: impl Iterator<Item = u64>, dim: usize, k: usize, filter: &Filter) -> Vec<u64> {
        let q = unit(query, dim).unwrap();
        let mut all: Vec<(u64, f32)> = ids
            .filter(|i| filter.admits(&info(*i).sensor, info(*i).start_micros))
            .map(|i| (i, kernels::distance(&q, &unit(&vector(i, dim), dim).unwrap())))
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|(i, _)| i).collect()
    }

    #[test]
    fn every_point_is_found_by_its_own_vector_in_open_and_sealed_shards_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(300), 16);
        let vectors: Vec<Vec<f32>> = (0..1000).map(|i| vector(i, 16)).collect();
        // In parallel, as a catch-up does (hnsw_rs once lost points inserted in parallel: its issue #32).
        let points: Vec<_> = (0..1000).map(|i| (SegmentId(i), info(i), vectors[i as usize].as_slice())).collect();
        assert_eq!(index.insert_many(&points, 0).unwrap(), 1000);
        assert!(!index.insert(SegmentId(7), &info(7), &vector(999, 16), 0).unwrap());
        assert_eq!((index.len(), index.points(), index.shards().len()), (1000, 1000, 3));
        for i in 0..1000 {
            let found = search(&index, &vectors[i as usize], 1, 64, &Filter::default());
            assert_eq!(found[0].0, SegmentId(i), "point {i}");
            assert!(found[0].1 < 1e-4, "self-distance {}", found[0].1);
        }
    }

    #[test]
    fn fan_out_over_shards_equals_exact_neighbours_on_small_data() {
        // Property: for random shard sizes, point counts, filters and queries, the merged answer over shards (with
        // ef covering every point) equals brute force over all points.
        let dim = 8;
        let mut seed = 1u64;
        for case in 0..12 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let points = 20 + (seed >> 33) as usize % 200;
            let shard = 5 + (seed >> 40) as usize % 60;
            let dir = tempfile::tempdir().unwrap();
            let mut index = SpaceIndex::new(dir.path(), &params(shard), dim);
            for i in 0..points as u64 {
                index.insert(SegmentId(i), &info(i), &vector(i + 1000 * case, dim), 0).unwrap();
            }
            let filters = [
                Filter::default(),
                Filter { sensors: vec!["s1".into()], ..Default::default() },
                Filter { from_micros: Some(50_000_000), to_micros: Some(400_000_000), ..Default::default() },
            ];
            for (q, filter) in filters.iter().enumerate() {
                let query = vector(77_777 + case * 10 + q as u64, dim);
                let k = 1 + (seed >> 50) as usize % 10;
                let got: Vec<u64> = search(&index, &query, k, points, filter).into_iter().map(|(id, _)| id.0).collect();
                let want = {
                    let q = unit(&query, dim).unwrap();
                    let mut all: Vec<(u64, f32)> = (0..points as u64)
                        .filter(|i| filter.admits(&info(*i).sensor, info(*i).start_micros))
                        .map(|i| (i, kernels::distance(&q, &unit(&vector(i + 1000 * case, dim), dim).unwrap())))
                        .collect();
                    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                    all.into_iter().take(k).map(|(i, _)| i).collect::<Vec<_>>()
                };
                assert_eq!(got, want, "case {case} ({points} points, shards of {shard}), filter {filter:?}, k {k}");
            }
        }
    }

    #[test]
    fn quantized_tiers_keep_recall_and_rescoring_restores_exact_order() {
        let dim = 64;
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(100_000), dim);
        for i in 0..2000 {
            index.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap();
        }
        index.seal(0).unwrap();
        let recall = |index: &SpaceIndex| {
            let mut hits = 0;
            for q in 0..50 {
                let query = vector(50_000 + q, dim);
                let want = exact(&query, 0..2000, dim, 10, &Filter::default());
                let got = search(index, &query, 10, 128, &Filter::default());
                hits += got.iter().filter(|(id, _)| want.contains(&id.0)).count();
            }
            hits as f64 / 500.0
        };
        let full = recall(&index);
        let mut by_tier = Vec::new();
        for tier in [Tier::F16, Tier::Int8] {
            index.sealed[0].set_tier(tier).unwrap();
            by_tier.push((tier, recall(&index)));
        }
        assert!(full > 0.9, "f32 recall {full}");
        for (tier, r) in by_tier {
            assert!(r >= full - 0.005, "{tier:?} recall {r} vs f32 {full}");
        }
        // Without rescoring, int8 distances are approximate; with it, they are exact.
        let query = vector(123_456, dim);
        let rescored = search(&index, &query, 5, 128, &Filter::default());
        let q = unit(&query, dim).unwrap();
        for (id, d) in &rescored {
            let want = kernels::distance(&q, &unit(&vector(id.0, dim), dim).unwrap());
            assert!((d - want).abs() < 1e-5, "{id}: {d} vs {want}");
        }
    }

    #[test]
    fn shards_tiers_and_open_points_survive_a_reopen_and_stale_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut index = SpaceIndex::new(dir.path(), &params(40), dim);
        for i in 0..100 {
            index.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap();
        }
        index.sealed[0].set_tier(Tier::Int8).unwrap();
        index.sealed[1].set_tier(Tier::Archive).unwrap();
        index.changed = true;
        index.save().unwrap();
        std::fs::create_dir(dir.path().join("shard-999999")).unwrap();

        let mut reopened = SpaceIndex::open(dir.path(), &params(40), dim).unwrap();
        assert_eq!(reopened.len(), 100);
        let tiers: Vec<Tier> = reopened.shards().iter().map(Shard::tier).collect();
        assert_eq!(tiers, [Tier::Int8, Tier::Archive]);
        assert!(!dir.path().join("shard-999999").exists());
        assert!(!reopened.insert(SegmentId(5), &info(5), &vector(5, dim), 0).unwrap());
        assert!(reopened.insert(SegmentId(100), &info(100), &vector(100, dim), 0).unwrap());
        // The open shard kept where and when its points were recorded.
        let only_s2 = Filter { sensors: vec!["s2".into()], ..Default::default() };
        let found = search(&reopened, &vector(95, dim), 3, 64, &only_s2);
        assert!(found.iter().all(|(id, _)| id.0 % 3 == 2) && found[0].0 == SegmentId(95), "{found:?}");
        reopened.save().unwrap();
        assert_eq!(SpaceIndex::open(dir.path(), &params(40), dim).unwrap().len(), 101);
        assert!(matches!(SpaceIndex::open(dir.path(), &params(40), 9), Err(Error::Index { .. })));
    }

    #[test]
    fn archive_tier_is_answered_by_the_cold_scan() {
        struct Archive(usize);
        impl ColdTier for Archive {
            fn scan(&self, filter: &Filter, visit: &mut dyn FnMut(u64, &[f32])) -> Result<(), Error> {
                for i in 0..60u64 {
                    if filter.admits(&info(i).sensor, info(i).start_micros) {
                        visit(i, &vector(i, self.0));
                    }
                }
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(30), 8);
        for i in 0..60 {
            index.insert(SegmentId(i), &info(i), &vector(i, 8), 0).unwrap();
        }
        index.sealed[0].set_tier(Tier::Archive).unwrap();
        let request = Request { vector: &vector(3, 8), k: 1, ef: 32, filter: &Filter::default() };
        assert_ne!(index.search(&request, None, 0).unwrap()[0].0, SegmentId(3), "skipped without the archive");
        assert_eq!(index.search(&request, Some(&Archive(8)), 0).unwrap()[0].0, SegmentId(3));
    }

    #[test]
    fn shards_age_down_the_tiers_fit_the_budget_and_come_back_up_when_used() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            m: 8,
            ef_construction: 32,
            shard_max_points: 50,
            shard_max_age_seconds: 100,
            f16_after_seconds: 1_000,
            int8_after_seconds: 2_000,
            archive_after_seconds: 0,
            promote_after_hits: 2,
            ..Default::default()
        };
        let params = config.build(Path::new("/")).unwrap();
        let dim = 32;
        let mut index = SpaceIndex::new(dir.path(), &params, dim);
        for i in 0..120 {
            index.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap();
        }
        let tiers = |index: &SpaceIndex| index.shards().iter().map(Shard::tier).collect::<Vec<_>>();
        assert_eq!(tiers(&index), [Tier::F32, Tier::F32]);
        // The open shard (20 points) seals by age; old shards age into f16, then int8.
        assert!(index.maintain(150, None).unwrap());
        assert_eq!(tiers(&index), [Tier::F32; 3]);
        index.maintain(1_100, None).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::F16, Tier::F32]);
        index.maintain(2_050, None).unwrap();
        assert_eq!(tiers(&index), [Tier::Int8, Tier::Int8, Tier::F16]);
        // Two answers from the first shard promote it one tier.
        for _ in 0..2 {
            let found = index
                .search(&Request { vector: &vector(1, dim), k: 1, ef: 32, filter: &Filter::default() }, None, 2_060)
                .unwrap();
            assert_eq!(found[0].0, SegmentId(1));
        }
        index.maintain(2_070, None).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::Int8, Tier::F16]);
        // A budget just below what the space holds pushes the least recently used shard down one tier; again, the
        // next one.
        index.maintain(2_080, Some(index.bytes() - 1)).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::Archive, Tier::F16]);
        index.maintain(2_090, Some(index.bytes() - 1)).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::Archive, Tier::Int8]);
        let usage: HashMap<Tier, TierUsage> = index.usage().into_iter().collect();
        assert_eq!((usage[&Tier::F16].points, usage[&Tier::Archive].points, usage[&Tier::Int8].points), (50, 50, 20));
        assert!(usage[&Tier::F16].bytes_per_point() > usage[&Tier::Int8].bytes_per_point());
        assert!(usage[&Tier::Int8].bytes_per_point() > usage[&Tier::Archive].bytes_per_point());
    }

    #[test]
    fn a_snapshot_point_missing_from_the_archive_is_passed_on_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(1000), 4);
        for i in 0..3 {
            index.insert(SegmentId(i), &info(i), &vector(i, 4), 0).unwrap();
        }
        // The archive holds 0 and 1; 2 was in the snapshot only.
        index.reconcile(&[0, 1].into_iter().collect());
        assert_eq!(index.unarchived(), 1);
        let offer = |index: &mut SpaceIndex, i| index.offer(SegmentId(i), &info(i), &vector(i, 4), 0).unwrap();
        assert_eq!(offer(&mut index, 1), Offered::Duplicate);
        assert_eq!(offer(&mut index, 2), Offered::Unarchived);
        assert_eq!(offer(&mut index, 2), Offered::Duplicate);
        assert_eq!(offer(&mut index, 3), Offered::Inserted);
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn a_batch_offer_is_an_offer_after_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(5), 4);
        index.insert(SegmentId(0), &info(0), &vector(0, 4), 0).unwrap();
        index.insert(SegmentId(1), &info(1), &vector(1, 4), 0).unwrap();
        index.reconcile(&[0].into_iter().collect());
        let (v2, v3, zero) = (vector(2, 4), vector(3, 4), [0.0f32; 4]);
        let points: Vec<(SegmentId, PointInfo, &[f32])> = vec![
            (SegmentId(0), info(0), &v2),
            (SegmentId(1), info(1), &v2),
            (SegmentId(2), info(2), &v2),
            (SegmentId(9), info(9), &zero),
            (SegmentId(2), info(2), &v2),
            (SegmentId(3), info(3), &v3),
        ];
        let offered: Vec<_> = index.offer_many(&points, 0).into_iter().map(|r| r.map_err(|_| "error")).collect();
        use Offered::*;
        assert_eq!(offered, [Ok(Duplicate), Ok(Unarchived), Ok(Inserted), Err("error"), Ok(Duplicate), Ok(Inserted)]);
        assert_eq!(index.len(), 4);
        assert_eq!(search(&index, &v3, 1, 16, &Filter::default())[0].0, SegmentId(3));
    }

    #[test]
    fn r13_an_empty_open_shard_can_be_walked() {
        // hnsw_rs's own iterator panics on an empty graph: a space with no point yet (its first segments still on
        // their way to the archive) and a space whose open shard was just sealed must both be walkable.
        let dir = tempfile::tempdir().unwrap();
        let empty = SpaceIndex::new(dir.path(), &params(4), 8);
        let mut visited = 0;
        empty.for_each_vector(|_, _| visited += 1);
        assert_eq!(visited, 0);

        let mut index = SpaceIndex::new(dir.path(), &params(4), 8);
        for i in 0..4 {
            index.insert(SegmentId(i), &info(i), &vector(i, 8), 0).unwrap();
        }
        assert_eq!(index.shards().len(), 1, "the fourth point sealed the open shard");
        let mut ids = Vec::new();
        index.for_each_vector(|id, v| {
            assert_eq!(v.len(), 8);
            ids.push(id.0);
        });
        ids.sort_unstable();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert!(index.vector(SegmentId(9)).is_none());
        index.save().unwrap();
        let reopened = SpaceIndex::open(dir.path(), &params(4), 8).unwrap();
        assert_eq!(reopened.len(), 4);
    }

    #[test]
    fn r13_a_seal_that_cannot_be_written_changes_nothing_and_is_tried_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut index = SpaceIndex::new(dir.path(), &params(4), dim);
        // A file where the seal writes its shard makes the write fail, as a full disk would.
        let blocker = dir.path().join(".shard-000001.tmp");
        std::fs::write(&blocker, b"in the way").unwrap();
        for i in 0..6 {
            assert!(index.insert(SegmentId(i), &info(i), &vector(i, dim), 10).unwrap(), "point {i} is inserted");
        }
        assert_eq!(
            (index.len(), index.points(), index.shards().len()),
            (6, 6, 0),
            "every point stays in the open shard"
        );
        let found = |index: &SpaceIndex, i: u64| search(index, &vector(i, dim), 1, 64, &Filter::default())[0].0;
        for i in 0..6 {
            assert_eq!(found(&index, i), SegmentId(i));
            assert_eq!(index.point(SegmentId(i)), Some(info(i)));
        }
        // Within a minute of the failure no seal is tried; then one is, and succeeds once the disk has room.
        std::fs::remove_file(&blocker).unwrap();
        index.insert(SegmentId(6), &info(6), &vector(6, dim), 20).unwrap();
        assert_eq!(index.shards().len(), 0);
        index.insert(SegmentId(7), &info(7), &vector(7, dim), 80).unwrap();
        assert_eq!((index.shards().len(), index.shards()[0].len(), index.len()), (1, 8, 8));
        for i in 8..12 {
            index.insert(SegmentId(i), &info(i), &vector(i, dim), 80).unwrap();
        }
        assert_eq!(index.shards().len(), 2);
        for i in 0..12 {
            assert_eq!(found(&index, i), SegmentId(i), "point {i} after the seals");
            assert_eq!(index.point(SegmentId(i)), Some(info(i)));
            assert!(index.vector(SegmentId(i)).is_some());
        }
        index.save().unwrap();
        let reopened = SpaceIndex::open(dir.path(), &params(4), dim).unwrap();
        assert_eq!((reopened.len(), reopened.points()), (12, 12));
    }

    #[test]
    fn r13_a_reader_never_writes_and_reads_an_index_that_a_writer_keeps_republishing() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut writer = SpaceIndex::new(dir.path(), &params(5), dim);
        for i in 0..12 {
            writer.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap();
        }
        writer.save().unwrap();
        // A seal cut short leaves a directory no manifest names: the owner removes it, a reader leaves it.
        std::fs::create_dir(dir.path().join(".shard-000099.tmp")).unwrap();
        let listing = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = listing();
        let mut reader = SpaceIndex::open_read_only(dir.path(), &params(5), dim).unwrap();
        assert_eq!(reader.len(), 12);
        for i in 12..30 {
            assert!(reader.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap());
        }
        reader.maintain(1_000_000, Some(1)).unwrap();
        assert!(reader.save().is_err(), "a reader refuses to publish");
        assert_eq!(reader.len(), 30);
        assert_eq!(listing(), before, "the reader changed the directory");

        // Readers racing a writer that seals and republishes all the time always open a consistent index.
        let path = dir.path().to_path_buf();
        let writing = std::thread::spawn(move || {
            for i in 12..400 {
                writer.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap();
                writer.save().unwrap();
            }
        });
        let mut opened = 0;
        while !writing.is_finished() {
            let index = SpaceIndex::open_read_only(&path, &params(5), dim).unwrap();
            assert!(index.len() >= 12 && index.len() == index.points());
            opened += 1;
        }
        writing.join().unwrap();
        assert!(opened > 0);
        assert_eq!(SpaceIndex::open(&path, &params(5), dim).unwrap().len(), 400);
    }

    #[test]
    fn vectors_without_direction_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(1000), 4);
        assert!(index.insert(SegmentId(1), &info(1), &[0.0; 4], 0).is_err());
        assert!(index.insert(SegmentId(1), &info(1), &[f32::NAN, 0.0, 0.0, 1.0], 0).is_err());
        assert!(index.insert(SegmentId(1), &info(1), &[1.0; 3], 0).is_err());
        assert!(index.is_empty());
    }

    #[test]
    fn tier_ages_must_grow_colder_in_order() {
        let config = IndexConfig { f16_after_seconds: 100, int8_after_seconds: 50, ..Default::default() };
        assert_eq!(config.build(Path::new("/")).unwrap_err().field, "int8_after_seconds");
        let params = IndexConfig { archive_after_seconds: 0, ..Default::default() }.build(Path::new("/")).unwrap();
        assert_eq!(params.tier_for_age(0), Tier::F32);
        assert_eq!(params.tier_for_age(8 * DAY), Tier::F16);
        assert_eq!(params.tier_for_age(365 * DAY), Tier::Int8);
    }
}
