//! Search across a space's shards, open and sealed in every tier, merged by distance.
//!
//! Each shard searches itself (`build.rs` the open shard, its graph and write buffer, `shard.rs` a sealed one over its frozen graph,
//! read from its file in the archive tier). This file fans a query out over them, in parallel when there are enough
//! points to repay it, and merges the answers.

use std::collections::HashSet;

use rayon::prelude::*;

use super::build::OpenShard;
use super::point::{Filter, unit};
use super::shard::Shard;
use crate::Error;
use crate::record::SegmentId;

/// Below this many points to search, one thread searches every shard.
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
    /// The `k` nearest segments, nearest first, with cosine distances, over every shard the filter may admit.
    /// Shards that answer are marked used at `now`. An error when a shard in the archive tier cannot be read: an
    /// answer never leaves a shard out silently.
    pub(super) fn search(&self, request: &Request<'_>, now: u64) -> Result<Vec<(SegmentId, f32)>, Error> {
        let query = unit(request.vector, self.dim)?;
        let found = merge(self.candidates(&query, request)?, request.k);
        let answered: HashSet<usize> = found.iter().map(|(_, _, shard)| *shard).collect();
        for shard in answered.into_iter().filter_map(|i| self.sealed.get(i)) {
            shard.touch(now);
        }
        Ok(found.into_iter().map(|(id, d, _)| (SegmentId(id), d)).collect())
    }

    /// The candidates of the open shard, then of each sealed shard that the filter may admit.
    fn candidates(&self, query: &[f32], request: &Request<'_>) -> Result<Vec<Candidate>, Error> {
        let (k, ef, filter) = (request.k, request.ef, request.filter);
        let admitted: Vec<(usize, &Shard)> =
            self.sealed.iter().enumerate().filter(|(_, s)| s.may_admit(filter)).collect();
        let points = self.open.len() + admitted.iter().map(|(_, s)| s.len()).sum::<usize>();
        let search_sealed = |(i, shard): &(usize, &Shard)| -> Result<Vec<Candidate>, Error> {
            let found = shard.search(query, k, ef, self.oversample, filter)?;
            Ok(found.into_iter().map(|(id, d)| (id, d, *i)).collect())
        };
        let search_open = || -> Vec<Candidate> {
            self.open.search(query, k, ef, filter).into_iter().map(|(id, d)| (id, d, FROM_OPEN)).collect()
        };
        // In parallel only when there are two searches or more to share out, and enough points to repay the handoff.
        let searches = admitted.len() + usize::from(self.open.len() > 0);
        let (mut found, sealed): (Vec<_>, Result<Vec<_>, _>) = if points >= PARALLEL_POINTS && searches >= 2 {
            rayon::join(search_open, || admitted.par_iter().map(search_sealed).collect())
        } else {
            (search_open(), admitted.iter().map(search_sealed).collect())
        };
        found.extend(sealed?.into_iter().flatten());
        Ok(found)
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
    use super::*;
    use crate::index::kernels::{self, Tier, distance};
    use crate::index::tests::{exact, info, insert_range, open_shard, params, sealed_shard, search, vector};
    use crate::index::{Builder, IndexParams, SpaceIndex};

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
        let found = fan_out.search(&Request { vector: &query, k: 90, ef: 90, filter: &all }, 500).unwrap();
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
            fan_out.search(&request, now).unwrap()[0].0.0
        };
        assert_eq!(nearest(5, 600), 5);
        assert_eq!(usage(), [(1, 500), (1, 500)]);
        assert_eq!(nearest(65, 700), 65);
        assert_eq!(usage(), [(1, 500), (2, 700)]);
        // A filter no shard may admit leaves the sealed shards out.
        let nobody = Filter { sensors: vec!["nobody".into()], ..Default::default() };
        assert!(fan_out.search(&Request { vector: &query, k: 5, ef: 32, filter: &nobody }, 800).unwrap().is_empty());
        assert!(fan_out.search(&Request { vector: &[0.0; 8], k: 5, ef: 32, filter: &all }, 800).is_err());
    }

    #[test]
    fn a_point_two_shards_hold_is_answered_once() {
        let (dim, dir) = (8, tempfile::tempdir().unwrap());
        let open = open_shard(0..10, dim);
        let sealed = [sealed_shard(dir.path(), "shard-000001", 5..15, dim, 0)];
        let fan_out = FanOut { open: &open, sealed: &sealed, dim, oversample: 4 };
        let filter = Filter::default();
        let found = fan_out.search(&Request { vector: &vector(7, dim), k: 4, ef: 32, filter: &filter }, 0).unwrap();
        let mut ids: Vec<u64> = found.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids[0], 7);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4, "{found:?}");
    }

    #[test]
    fn fan_out_over_shards_equals_exact_neighbours_on_small_data() {
        // Property: for random shard sizes, point counts, filters and queries, the merged answer over shards (with
        // ef covering every point) equals brute force over all points — with either builder, and write buffers of
        // random bounds, partly linked.
        let dim = 8;
        let mut seed = 1u64;
        for case in 0..12 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let points = 20 + (seed >> 33) as usize % 200;
            let shard = 5 + (seed >> 40) as usize % 60;
            let dir = tempfile::tempdir().unwrap();
            let builder = if case % 3 == 2 { Builder::HnswRs } else { Builder::Chorus };
            let buffer_max_points = 1 + (seed >> 45) as usize % 30;
            let mut index =
                SpaceIndex::new(dir.path(), &IndexParams { builder, buffer_max_points, ..params(shard) }, dim);
            for i in 0..points as u64 {
                index.insert(SegmentId(i), &info(i), &vector(i + 1000 * case, dim), 0).unwrap();
                if i % 7 == 0 {
                    index.link(3);
                }
            }
            assert!(index.buffered() <= buffer_max_points);
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
        insert_range(&mut index, 0..2000, dim);
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
        // The f32 tier holds each row and its codes (a byte a dimension and a step).
        assert_eq!(f32_bytes - index.sealed[0].bytes(), 2000 * (dim * 5 + 4), "the vectors are out of memory");
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
    fn r15_an_archive_tier_shard_holds_nothing_per_row_and_answers_from_its_files_as_the_disk_tier_does() {
        let dim = 16;
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(300), dim);
        // Two sealed shards of 300 and 100 points, and 100 in the open shard.
        insert_range(&mut index, 0..400, dim);
        index.seal(0).unwrap();
        insert_range(&mut index, 400..500, dim);
        let filters = [
            Filter::default(),
            Filter { sensors: vec!["s1".into()], ..Default::default() },
            Filter { from_micros: Some(100 * 5_000_000), to_micros: Some(350 * 5_000_000), ..Default::default() },
            Filter { sensors: vec!["nobody".into()], ..Default::default() },
        ];
        let answers = |index: &SpaceIndex| -> Vec<_> {
            let queries = (0..10).map(|q| vector(90_000 + q, dim)).chain([vector(5, dim), vector(350, dim)]);
            queries
                .flat_map(|q| filters.iter().map(move |f| search(index, &q, 10, 64, f)).collect::<Vec<_>>())
                .collect()
        };
        for shard in 0..2 {
            index.set_shard_tier(shard, Tier::Disk).unwrap();
        }
        let on_disk = answers(&index);
        let graph_bytes = index.shards()[0].bytes();
        for shard in 0..2 {
            index.set_shard_tier(shard, Tier::Archive).unwrap();
        }
        assert_eq!(answers(&index), on_disk, "the same answers, each shard's graph and rows read from its files");
        // What an archived shard holds grows by its ids' filter alone: 2 bytes a row. Its rows are read from disk.
        let held: Vec<usize> = index.shards().iter().map(Shard::bytes).collect();
        assert_eq!(held[0] - held[1], 200 * 2, "{held:?}");
        assert!(held[0] < 1_500 && graph_bytes > 300 * 20, "{held:?} against {graph_bytes} in the disk tier");
        assert!(index.shards().iter().all(|s| matches!(s.rows().unwrap(), std::borrow::Cow::Owned(_))));
        // Where and when each point was recorded, its vector and the latest points come from its files too.
        for i in [0, 299, 300, 399, 450] {
            assert_eq!(index.point(SegmentId(i)), Some(info(i)));
            let (got, want) = (index.vector(SegmentId(i)).unwrap(), unit(&vector(i, dim), dim).unwrap());
            assert!(distance(&got, &want).abs() < 1e-5, "{i}: {got:?}");
        }
        let latest: Vec<u64> = index.latest(150).into_iter().map(|(id, _)| id.0).collect();
        assert_eq!(latest, (350..500).rev().collect::<Vec<_>>());
        // Reopened, it is still in the archive tier and answers the same.
        index.save().unwrap();
        let reopened = SpaceIndex::open(dir.path(), &params(300), dim).unwrap();
        assert_eq!(reopened.shards().iter().map(Shard::tier).collect::<Vec<_>>(), [Tier::Archive, Tier::Archive]);
        assert_eq!(answers(&reopened), on_disk);
        // Up again, it holds its graph and rows once more.
        index.set_shard_tier(0, Tier::Disk).unwrap();
        assert_eq!(index.shards()[0].bytes(), graph_bytes);
        assert_eq!(answers(&index), on_disk);
    }

    #[test]
    fn r15_an_archive_tier_shard_that_cannot_be_read_fails_the_search_never_leaves_it_out() {
        let dim = 8;
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(30), dim);
        insert_range(&mut index, 0..60, dim);
        index.set_shard_tier(0, Tier::Archive).unwrap();
        std::fs::write(dir.path().join(&index.shards()[0].name).join("graph.bin"), b"cut short").unwrap();
        let request = Request { vector: &vector(3, dim), k: 1, ef: 32, filter: &Filter::default() };
        let error = index.search(&request, 0).unwrap_err().to_string();
        assert!(error.contains("graph.bin"), "{error}");
        // A filter that leaves the shard out by its time range does not read it.
        let later = Filter { from_micros: Some(40 * 5_000_000), ..Default::default() };
        let found = index.search(&Request { k: 5, filter: &later, ..request }, 0).unwrap();
        assert!(found.len() == 5 && found.iter().all(|(id, _)| id.0 >= 40), "{found:?}");
        // Nor can it come back up: it stays in the archive tier.
        assert!(index.set_shard_tier(0, Tier::Disk).is_err());
        assert_eq!(index.shards()[0].tier(), Tier::Archive);
    }
}
