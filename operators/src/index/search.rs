//! Search across a space's shards, open, sealed and archived, merged by distance.
//!
//! Each shard in memory searches itself (`build.rs` the open shard with hnsw_rs, `shard.rs` a sealed one over its
//! frozen graph); shards in the archive tier are answered by the cold scan of the Parquet archive. This file fans a
//! query out over them, in parallel when there are enough points to repay it, and merges the answers.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::build::OpenShard;
use super::kernels::{Tier, distance};
use super::point::{Filter, unit};
use super::shard::Shard;
use crate::Error;
use crate::record::SegmentId;

/// The Parquet archive as a space's coldest tier: a scan of the archived embeddings that pass a filter.
pub trait ColdTier: Sync {
    /// Calls `visit(id, embedding)` for each archived segment that passes `filter` (more may be visited).
    fn scan(&self, filter: &Filter, visit: &mut dyn FnMut(u64, &[f32])) -> Result<(), Error>;
}

/// Below this many points in memory, one thread searches every shard.
const PARALLEL_POINTS: usize = 20_000;
/// Stands for the open shard where a candidate names the sealed shard it came from.
const FROM_OPEN: usize = usize::MAX;

/// A search in one space.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The query vector (any length-`dim` vector with a direction).
    pub vector: &'a [f32],
    /// Neighbours wanted.
    pub k: usize,
    /// Beam width.
    pub ef: usize,
    /// Which segments may answer.
    pub filter: &'a Filter,
}

/// A found point: `(id, cosine distance, the sealed shard it came from or FROM_OPEN)`.
type Candidate = (u64, f32, usize);

/// A space's shards as a query sees them.
pub(super) struct FanOut<'a> {
    /// The shard taking inserts.
    pub(super) open: &'a OpenShard,
    /// The sealed shards, in every tier.
    pub(super) sealed: &'a [Shard],
    /// Vector length.
    pub(super) dim: usize,
    /// See [`IndexParams::rescore_oversample`](super::IndexParams::rescore_oversample).
    pub(super) oversample: usize,
}

impl FanOut<'_> {
    /// The `k` nearest segments, nearest first, with cosine distances, over every shard; `cold` answers for shards
    /// in the archive tier (without it they are skipped). Shards that answer are marked used at `now`.
    pub(super) fn search(
        &self,
        request: &Request<'_>,
        cold: Option<&dyn ColdTier>,
        now: u64,
    ) -> Result<Vec<(SegmentId, f32)>, Error> {
        let query = unit(request.vector, self.dim)?;
        let mut found = self.in_memory(&query, request);
        if let Some(cold) = cold {
            self.archived(&query, request.filter, cold, &mut found)?;
        }
        let found = merge(found, request.k);
        let answered: HashSet<usize> = found.iter().map(|(_, _, shard)| *shard).collect();
        for shard in answered.into_iter().filter_map(|i| self.sealed.get(i)) {
            shard.touch(now);
        }
        Ok(found.into_iter().map(|(id, d, _)| (SegmentId(id), d)).collect())
    }

    /// The candidates of the open shard, then of each sealed shard in memory that the filter may admit.
    fn in_memory(&self, query: &[f32], request: &Request<'_>) -> Vec<Candidate> {
        let (k, ef, filter) = (request.k, request.ef, request.filter);
        let warm: Vec<(usize, &Shard)> = (self.sealed.iter().enumerate())
            .filter(|(_, s)| s.tier() != Tier::Archive && s.may_admit(filter))
            .collect();
        let in_memory = self.open.len() + warm.iter().map(|(_, s)| s.len()).sum::<usize>();
        let search_sealed = |(i, shard): &(usize, &Shard)| -> Vec<Candidate> {
            shard.search(query, k, ef, self.oversample, filter).into_iter().map(|(id, d)| (id, d, *i)).collect()
        };
        let search_open = || -> Vec<Candidate> {
            self.open.search(query, k, ef, filter).into_iter().map(|(id, d)| (id, d, FROM_OPEN)).collect()
        };
        // In parallel only when there are two searches or more to share out, and enough points to repay the handoff.
        let searches = warm.len() + usize::from(self.open.len() > 0);
        let (mut found, sealed): (Vec<_>, Vec<_>) = if in_memory >= PARALLEL_POINTS && searches >= 2 {
            rayon::join(search_open, || warm.par_iter().map(search_sealed).collect())
        } else {
            (search_open(), warm.iter().map(search_sealed).collect())
        };
        found.extend(sealed.into_iter().flatten());
        found
    }

    /// Adds the candidates of the archive-tier shards the filter may admit, from the cold scan: each archived
    /// segment one of them holds, compared exactly. Scans nothing when there is no such shard.
    fn archived(
        &self,
        query: &[f32],
        filter: &Filter,
        cold: &dyn ColdTier,
        found: &mut Vec<Candidate>,
    ) -> Result<(), Error> {
        let archived =
            || (self.sealed.iter().enumerate()).filter(|(_, s)| s.tier() == Tier::Archive && s.may_admit(filter));
        if archived().next().is_none() {
            return Ok(());
        }
        let members: HashMap<u64, usize> =
            archived().flat_map(|(i, s)| s.rows().ids.iter().map(move |id| (*id, i))).collect();
        cold.scan(filter, &mut |id, embedding| {
            if let Some(shard) = members.get(&id)
                && let Ok(vector) = unit(embedding, self.dim)
            {
                found.push((id, distance(query, &vector), *shard));
            }
        })
    }
}

/// The first `k` of `found` by distance (ties by id), where an id that follows itself in that order (the same point
/// found in two shards, nothing between its two distances) counts once, as its first candidate.
fn merge(mut found: Vec<Candidate>, k: usize) -> Vec<Candidate> {
    found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    found.dedup_by_key(|(id, _, _)| *id);
    found.truncate(k);
    found
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::index::SpaceIndex;
    use crate::index::kernels;
    use crate::index::tests::{exact, info, open_shard, params, sealed_shard, search, vector};

    #[test]
    fn merge_orders_by_distance_then_id_keeps_an_id_once_and_the_first_k() {
        let found: Vec<Candidate> =
            vec![(5, 0.3, 0), (2, 0.1, FROM_OPEN), (9, 0.5, 2), (7, 0.1, 1), (2, 0.1, 1), (8, 0.3, 2)];
        let merged = [(2, 0.1, FROM_OPEN), (7, 0.1, 1), (5, 0.3, 0), (8, 0.3, 2), (9, 0.5, 2)];
        assert_eq!(merge(found.clone(), 10), merged, "point 2 of the open shard and of shard 1: its first candidate");
        assert_eq!(merge(found, 2), merged[..2]);
        assert!(merge(Vec::new(), 3).is_empty());
    }

    #[test]
    fn open_and_sealed_shards_answer_together_nearest_first_and_those_that_answer_are_marked_used() {
        let (dim, dir) = (8, tempfile::tempdir().unwrap());
        let open = open_shard(0..30, dim);
        let sealed = [
            sealed_shard(dir.path(), "shard-000001", 30..60, dim, 0),
            sealed_shard(dir.path(), "shard-000002", 60..90, dim, 0),
        ];
        let fan_out = FanOut { open: &open, sealed: &sealed, dim, oversample: 4 };
        let all = Filter::default();
        let query = vector(1_234, dim);
        let found = fan_out.search(&Request { vector: &query, k: 90, ef: 90, filter: &all }, None, 500).unwrap();
        let ids: Vec<u64> = found.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, exact(&query, 0..90, dim, 90, &all), "every point once, nearest first");
        let q = unit(&query, dim).unwrap();
        for (id, d) in &found {
            let want = distance(&q, &unit(&vector(id.0, dim), dim).unwrap());
            assert!((d - want).abs() < 1e-5, "{id}: {d} vs {want}");
        }
        let usage = || sealed.iter().map(|s| (s.hits(), s.last_used())).collect::<Vec<_>>();
        assert_eq!(usage(), [(1, 500), (1, 500)]);
        // A point of the open shard, then one of the second sealed shard: only the shard that answers is used.
        let nearest = |i: u64, now| {
            let request = Request { vector: &vector(i, dim), k: 1, ef: 32, filter: &all };
            fan_out.search(&request, None, now).unwrap()[0].0.0
        };
        assert_eq!(nearest(5, 600), 5);
        assert_eq!(usage(), [(1, 500), (1, 500)]);
        assert_eq!(nearest(65, 700), 65);
        assert_eq!(usage(), [(1, 500), (2, 700)]);
        // A filter no shard may admit leaves the sealed shards out.
        let nobody = Filter { sensors: vec!["nobody".into()], ..Default::default() };
        assert!(
            fan_out.search(&Request { vector: &query, k: 5, ef: 32, filter: &nobody }, None, 800).unwrap().is_empty()
        );
        assert!(fan_out.search(&Request { vector: &[0.0; 8], k: 5, ef: 32, filter: &all }, None, 800).is_err());
    }

    #[test]
    fn a_point_two_shards_hold_is_answered_once() {
        let (dim, dir) = (8, tempfile::tempdir().unwrap());
        let open = open_shard(0..10, dim);
        let sealed = [sealed_shard(dir.path(), "shard-000001", 5..15, dim, 0)];
        let fan_out = FanOut { open: &open, sealed: &sealed, dim, oversample: 4 };
        let filter = Filter::default();
        let found =
            fan_out.search(&Request { vector: &vector(7, dim), k: 4, ef: 32, filter: &filter }, None, 0).unwrap();
        let mut ids: Vec<u64> = found.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids[0], 7);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4, "{found:?}");
    }

    #[test]
    fn archive_tier_shards_are_answered_by_the_cold_scan_with_their_own_rows_only() {
        /// Every id it is given, and a count of the scans.
        struct Archive(Vec<u64>, AtomicUsize);
        impl ColdTier for Archive {
            fn scan(&self, filter: &Filter, visit: &mut dyn FnMut(u64, &[f32])) -> Result<(), Error> {
                self.1.fetch_add(1, Ordering::Relaxed);
                for id in self.0.iter().filter(|id| filter.admits(&info(**id).sensor, info(**id).start_micros)) {
                    visit(*id, &vector(*id, 8));
                }
                Ok(())
            }
        }
        let (dim, dir) = (8, tempfile::tempdir().unwrap());
        let open = open_shard(0..10, dim);
        let mut archived = sealed_shard(dir.path(), "shard-000001", 10..20, dim, 0);
        archived.set_tier(Tier::Archive).unwrap();
        let sealed = [archived, sealed_shard(dir.path(), "shard-000002", 20..30, dim, 0)];
        let fan_out = FanOut { open: &open, sealed: &sealed, dim, oversample: 4 };
        // The archive holds every point, and one no shard names.
        let archive = Archive((0..30).chain([99]).collect(), AtomicUsize::new(0));
        let all = Filter::default();
        let query = vector(15, dim);
        let request = |k| Request { vector: &query, k, ef: 64, filter: &all };
        let found = fan_out.search(&request(1), Some(&archive), 100).unwrap();
        assert!(found[0].0.0 == 15 && found[0].1 < 1e-5, "{found:?}");
        assert_eq!((sealed[0].hits(), sealed[0].last_used()), (1, 100));
        let without = fan_out.search(&request(30), None, 100).unwrap();
        assert!(without.len() == 20 && without.iter().all(|(id, _)| !(10..20).contains(&id.0)), "skipped without it");
        // Each point once: the archive's copies of points in memory and of points no shard holds are left out.
        let found = fan_out.search(&request(40), Some(&archive), 100).unwrap();
        let mut ids: Vec<u64> = found.iter().map(|(id, _)| id.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..30).collect::<Vec<_>>());
        // The archive is not scanned when no shard in the archive tier may admit the filter.
        let scans = archive.1.load(Ordering::Relaxed);
        let later = Filter { from_micros: Some(200 * 5_000_000), ..Default::default() };
        assert!(fan_out.search(&Request { filter: &later, ..request(5) }, Some(&archive), 100).unwrap().is_empty());
        assert_eq!(archive.1.load(Ordering::Relaxed), scans);
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
        // The disk tier holds no vectors, only the graph: it answers exactly as f32 does, each row read from disk.
        let answers = |index: &SpaceIndex| -> Vec<_> {
            (0..20).map(|q| search(index, &vector(70_000 + q, dim), 10, 128, &Filter::default())).collect()
        };
        index.sealed[0].set_tier(Tier::F32).unwrap();
        let (in_memory, f32_bytes) = (answers(&index), index.sealed[0].bytes());
        index.sealed[0].set_tier(Tier::Disk).unwrap();
        assert_eq!(answers(&index), in_memory);
        assert_eq!(f32_bytes - index.sealed[0].bytes(), 2000 * dim * 4, "the vectors are out of memory");
        assert_eq!(index.sealed[0].bytes_in(Tier::F32), f32_bytes);
        assert_eq!(index.sealed[0].bytes_in(Tier::Disk), index.sealed[0].bytes());
        index.sealed[0].set_tier(Tier::Int8).unwrap();
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
}
