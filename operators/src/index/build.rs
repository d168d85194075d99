//! The open shard: the hnsw_rs graph that takes a space's inserts until it is sealed.
//!
//! A space has one open shard and any number of sealed ones (`shard.rs`). Sealing freezes the open shard
//! ([`OpenShard::freeze`]) into the graph, vectors and rows a sealed [`Shard`](super::Shard) is written from; the open
//! shard then starts again empty. When to seal is the tier policy's (`policy.rs`); the open shard's snapshot is
//! written and read with the manifest (`manifest.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hnsw_rs::hnsw::Point;
use hnsw_rs::prelude::{DistDot, Hnsw};

use super::config::{IndexParams, open_point_bytes};
use super::graph::{Graph, hnsw_points};
use super::point::{Filter, PointInfo, unit};
use super::shard::Rows;
use crate::Error;

/// hnsw_rs only dumps graphs built with its maximum layer count.
const LAYERS: usize = 16;
/// Shrinks normalised vectors a hair so rounding can never push a dot product above 1 (hnsw_rs asserts on it).
const SHRINK: f32 = 1.0 - 4e-6;

/// The shard taking inserts.
pub(super) struct OpenShard {
    hnsw: Hnsw<'static, f32, DistDot>,
    /// Sensor number and start time per id.
    info: HashMap<u64, (u32, i64)>,
    sensors: Vec<String>,
    sensor_numbers: HashMap<String, u32>,
    /// Points whose sensor and time a snapshot from before shards did not record.
    undescribed: HashSet<u64>,
    /// When its first point arrived (seconds since the epoch).
    opened_at: Option<u64>,
}

/// The vector the open shard stores for `embedding`: normalised, then shrunk by [`SHRINK`]. Fails as [`unit`] does.
pub(super) fn prepare(embedding: &[f32], dim: usize) -> Result<Vec<f32>, Error> {
    Ok(unit(embedding, dim)?.into_iter().map(|x| x * SHRINK).collect())
}

impl OpenShard {
    /// An empty open shard.
    pub(super) fn new(params: &IndexParams) -> OpenShard {
        OpenShard::around(Hnsw::new(
            params.m,
            params.shard_max_points.max(1000),
            LAYERS,
            params.ef_construction,
            DistDot,
        ))
    }

    fn around(hnsw: Hnsw<'static, f32, DistDot>) -> OpenShard {
        OpenShard {
            hnsw,
            info: HashMap::new(),
            sensors: Vec::new(),
            sensor_numbers: HashMap::new(),
            undescribed: HashSet::new(),
            opened_at: None,
        }
    }

    /// The open shard a snapshot held: its graph, and — when the snapshot recorded them — its `sensors` and each
    /// point's `(id, sensor number, start)`. A row naming a sensor the snapshot does not list is ignored. Points no
    /// row describes (a snapshot from before shards) get an empty sensor and time 0 until [`OpenShard::redescribe`]
    /// fills them in. A shard holding points counts as opened at `now`.
    pub(super) fn reloaded(
        hnsw: Hnsw<'static, f32, DistDot>,
        sensors: Vec<String>,
        rows: impl IntoIterator<Item = (u64, u32, i64)>,
        now: u64,
    ) -> OpenShard {
        let mut open = OpenShard::around(hnsw);
        open.sensor_numbers = sensors.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        open.sensors = sensors;
        for (id, sensor, start) in rows {
            if (sensor as usize) < open.sensors.len() {
                open.info.insert(id, (sensor, start));
            }
        }
        let unknown = PointInfo { sensor: String::new(), start_micros: 0 };
        let ids: Vec<u64> = open.points().map(|p| p.get_origin_id() as u64).collect();
        for id in ids {
            if !open.info.contains_key(&id) {
                open.describe(id, &unknown);
                open.undescribed.insert(id);
            }
        }
        if open.len() > 0 {
            open.opened_at = Some(now);
        }
        open
    }

    fn describe(&mut self, id: u64, info: &PointInfo) {
        let next = self.sensors.len() as u32;
        let number = *self.sensor_numbers.entry(info.sensor.clone()).or_insert(next);
        if number == next {
            self.sensors.push(info.sensor.clone());
        }
        self.info.insert(id, (number, info.start_micros));
    }

    /// Records where and when point `id` was recorded, if its snapshot did not say.
    pub(super) fn redescribe(&mut self, id: u64, info: &PointInfo) {
        if self.undescribed.remove(&id) {
            self.describe(id, info);
        }
    }

    /// Points.
    pub(super) fn len(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// When its first point arrived (seconds since the epoch); `None` while it is empty.
    pub(super) fn opened_at(&self) -> Option<u64> {
        self.opened_at
    }

    /// Where and when point `id` was recorded.
    pub(super) fn info(&self, id: u64) -> Option<PointInfo> {
        let (sensor, start) = self.info.get(&id)?;
        Some(PointInfo { sensor: self.sensors[*sensor as usize].clone(), start_micros: *start })
    }

    /// Every point's id and start time.
    pub(super) fn starts(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.info.iter().map(|(id, (_, start))| (*id, *start))
    }

    /// Every point, each once (its id is `get_origin_id`, its vector `get_v`: normalised and shrunk).
    pub(super) fn points(&self) -> impl Iterator<Item = Arc<Point<'static, f32>>> + '_ {
        hnsw_points(&self.hnsw)
    }

    /// The hnsw_rs graph, for its snapshot.
    pub(super) fn graph(&self) -> &Hnsw<'static, f32, DistDot> {
        &self.hnsw
    }

    /// What its snapshot records besides the graph: the sensors, and each point's sensor number and start time.
    pub(super) fn described(&self) -> (&[String], &HashMap<u64, (u32, i64)>) {
        (&self.sensors, &self.info)
    }

    fn admits(&self, filter: &Filter, id: u64) -> bool {
        match self.info.get(&id) {
            Some((sensor, start)) => filter.admits(&self.sensors[*sensor as usize], *start),
            None => filter.is_empty(),
        }
    }

    /// Bytes held in memory, estimated.
    pub(super) fn bytes(&self, dim: usize) -> usize {
        self.len() * open_point_bytes(dim, self.hnsw.get_max_nb_connection() as usize)
    }

    /// Bytes it will hold once it has `points` points, estimated.
    pub(super) fn bytes_at(&self, dim: usize, points: usize) -> usize {
        points.max(self.len()) * open_point_bytes(dim, self.hnsw.get_max_nb_connection() as usize)
    }

    /// Inserts `points` — `(id, where and when, vector from [`prepare`])`, ids not in the shard yet — in parallel
    /// when there are several. The first point inserted marks when the shard opened.
    pub(super) fn insert(&mut self, points: &[(u64, &PointInfo, Vec<f32>)], now: u64) {
        for (id, info, _) in points {
            self.describe(*id, info);
        }
        // Into an empty graph, the first point goes alone: inserted in parallel, two first points can each find no
        // entry point, and one is left with no edge to it, which no search walks to. A lone point needs no threads.
        let alone = if self.len() == 0 || points.len() == 1 { points.len().min(1) } else { 0 };
        let (alone, rest) = points.split_at(alone);
        for (id, _, vector) in alone {
            self.hnsw.insert_slice((vector, *id as usize));
        }
        if !rest.is_empty() {
            let batch: Vec<(&[f32], usize)> = rest.iter().map(|(id, _, v)| (v.as_slice(), *id as usize)).collect();
            self.hnsw.parallel_insert_slice(&batch);
        }
        self.opened_at.get_or_insert(now);
    }

    /// The `k` nearest points to `query` (normalised) that pass `filter`: `(id, cosine distance)`, nearest first.
    pub(super) fn search(&self, query: &[f32], k: usize, ef: usize, filter: &Filter) -> Vec<(u64, f32)> {
        if self.len() == 0 {
            return Vec::new();
        }
        let shrunk: Vec<f32> = query.iter().map(|x| x * SHRINK).collect();
        // Undo the shrink so that a vector's distance to itself reads as 0.
        let unshrunk = |distance: f32| (1.0 - (1.0 - distance) / (SHRINK * SHRINK)).max(0.0);
        if self.len() <= ef.max(k) {
            // No more points than the search would visit: compared exactly, every one, so that a search as wide as
            // the shard returns all of it whatever edges hnsw_rs's graph kept.
            let mut found: Vec<(u64, f32)> = hnsw_points(&self.hnsw)
                .map(|p| (p.get_origin_id() as u64, p))
                .filter(|(id, _)| filter.is_empty() || self.admits(filter, *id))
                .map(|(id, p)| (id, unshrunk(super::kernels::distance(&shrunk, p.get_v()))))
                .collect();
            found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            found.truncate(k);
            return found;
        }
        let found = if filter.is_empty() {
            self.hnsw.search(&shrunk, k, ef.max(k))
        } else {
            let accept = |id: &usize| self.admits(filter, *id as u64);
            self.hnsw.search_filter(&shrunk, k, ef.max(k), Some(&accept))
        };
        found.into_iter().map(|n| (n.d_id as u64, unshrunk(n.distance))).collect()
    }

    /// Freezes the shard for sealing without copying its vectors: each goes to `out` as it is reached, normalised
    /// again (the shrink undone), as little-endian f32; returns the graph and the rows.
    pub(super) fn freeze_into(&self, out: &mut dyn std::io::Write) -> std::io::Result<(Graph, Rows)> {
        let mut bytes = Vec::new();
        let (graph, ids) = Graph::from_hnsw_with(&self.hnsw, &mut |v| {
            bytes.clear();
            bytes.extend(v.iter().flat_map(|x| (x / SHRINK).to_le_bytes()));
            out.write_all(&bytes)
        })?;
        let (sensor, start) = ids.iter().map(|id| self.info[id]).unzip();
        Ok((graph, Rows { ids, sensor, start, sensors: self.sensors.clone() }))
    }

    /// Freezes the shard with its vectors in memory, normalised again (the shrink undone), and its rows.
    #[cfg(test)]
    pub(super) fn freeze(&self) -> (super::graph::Extracted, Rows) {
        let mut extracted = Graph::from_hnsw(&self.hnsw);
        for x in &mut extracted.vectors {
            *x /= SHRINK;
        }
        let (sensor, start) = extracted.ids.iter().map(|id| self.info[id]).unzip();
        let rows = Rows { ids: extracted.ids.clone(), sensor, start, sensors: self.sensors.clone() };
        (extracted, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SpaceIndex;
    use crate::index::tests::{exact, info, open_shard, params, search, vector};
    use crate::record::SegmentId;

    fn query(seed: u64, dim: usize) -> Vec<f32> {
        unit(&vector(seed, dim), dim).unwrap()
    }

    #[test]
    fn r15_a_search_as_wide_as_the_open_shard_finds_every_point_nearest_first() {
        // A first batch inserted wholly in parallel left a point unreachable now and then (one 30-point shard in four
        // missed one, in the search test of open and sealed shards): the graph must reach every point, and a search
        // whose ef covers the shard compares every point.
        let dim = 16;
        for case in 0..100u64 {
            let ids = case * 100..case * 100 + 30;
            let open = open_shard(ids.clone(), dim);
            let asked = query(7_919 + case, dim);
            for (k, ef) in [(30, 30), (90, 90)] {
                let found: Vec<u64> =
                    open.search(&asked, k, ef, &Filter::default()).iter().map(|(id, _)| *id).collect();
                assert_eq!(found, exact(&asked, ids.clone(), dim, 30, &Filter::default()), "case {case}, k {k}");
            }
            // Through the graph (ef below the shard's size): each point is reached, and finds itself.
            for i in ids.clone() {
                assert_eq!(open.search(&query(i, dim), 1, 8, &Filter::default())[0].0, i);
            }
            // Filtered too, and k below the shard's size.
            let filter = Filter { sensors: vec!["s1".into()], ..Filter::default() };
            let found: Vec<u64> = open.search(&asked, 5, 30, &filter).iter().map(|(id, _)| *id).collect();
            assert_eq!(found, exact(&asked, ids, dim, 5, &filter), "case {case}, filtered");
        }
    }

    #[test]
    fn inserted_points_are_found_by_their_own_vectors_with_where_and_when_they_were_recorded() {
        let dim = 16;
        let mut open = OpenShard::new(&params(100));
        assert_eq!((open.len(), open.opened_at(), open.points().count()), (0, None, 0), "an empty graph is walked");
        assert!(open.search(&query(0, dim), 1, 16, &Filter::default()).is_empty());
        let infos: Vec<PointInfo> = (0..50).map(info).collect();
        let points: Vec<(u64, &PointInfo, Vec<f32>)> =
            (0..50).map(|i| (i, &infos[i as usize], prepare(&vector(i, dim), dim).unwrap())).collect();
        // One point alone, then the rest in parallel.
        open.insert(&points[..1], 10);
        open.insert(&points[1..], 20);
        assert_eq!((open.len(), open.opened_at()), (50, Some(10)), "the first point marks the opening");
        for i in 0..50 {
            let found = open.search(&query(i, dim), 1, 64, &Filter::default());
            assert_eq!(found[0].0, i, "point {i}");
            assert!(found[0].1 < 1e-4, "the shrink is undone: self-distance {}", found[0].1);
            assert_eq!(open.info(i), Some(info(i)));
        }
        assert_eq!(open.info(50), None);
        let mut starts: Vec<(u64, i64)> = open.starts().collect();
        starts.sort_unstable();
        assert_eq!(starts, (0..50).map(|i| (i, info(i).start_micros)).collect::<Vec<_>>());
        // Sensors are numbered as they first arrive.
        assert_eq!(open.described().0, ["s0", "s1", "s2"]);
        let only_s1 = Filter { sensors: vec!["s1".into()], ..Default::default() };
        let found = open.search(&query(4, dim), 5, 64, &only_s1);
        assert_eq!(found.len(), 5);
        assert!(found[0].0 == 4 && found.iter().all(|(id, _)| info(*id).sensor == "s1"), "{found:?}");
        assert!(open.bytes(dim) > 50 * dim * 4);
    }

    #[test]
    fn the_open_shard_grows_past_the_size_its_graph_was_made_for() {
        // While seals fail, a full open shard takes every insert: beyond the 1 000 points hnsw_rs was told to expect.
        let dim = 8;
        let open = open_shard(0..1_500, dim);
        assert_eq!((open.len(), open.points().count()), (1_500, 1_500));
        for i in (0..1_500).step_by(7) {
            assert_eq!(open.search(&query(i, dim), 1, 200, &Filter::default())[0].0, i, "point {i}");
        }
    }

    #[test]
    fn freezing_keeps_each_row_with_its_id_sensor_start_and_normalised_vector() {
        let dim = 8;
        let (extracted, rows) = open_shard(0..20, dim).freeze();
        assert_eq!((extracted.graph.len(), &rows.ids), (20, &extracted.ids));
        let mut ids = rows.ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..20).collect::<Vec<_>>());
        assert_eq!(rows.sensors, ["s0", "s1", "s2"]);
        for (row, id) in rows.ids.iter().enumerate() {
            assert_eq!(rows.sensors[rows.sensor[row] as usize], info(*id).sensor);
            assert_eq!(rows.start[row], info(*id).start_micros);
            let frozen = &extracted.vectors[row * dim..(row + 1) * dim];
            assert!(frozen.iter().zip(query(*id, dim)).all(|(a, b)| (a - b).abs() < 1e-6), "row {row}: {frozen:?}");
        }
    }

    #[test]
    fn a_reloaded_graph_keeps_what_its_snapshot_described_and_learns_the_rest_once() {
        let source = open_shard(0..4, 8);
        // Point 2's row names a sensor the snapshot does not list; point 3 has no row.
        let rows = [(0, 0, 100), (1, 1, 200), (2, 7, 300)];
        let mut open = OpenShard::reloaded(source.hnsw, vec!["a".into(), "b".into()], rows, 55);
        assert_eq!((open.len(), open.opened_at()), (4, Some(55)));
        let at = |sensor: &str, start_micros| Some(PointInfo { sensor: sensor.into(), start_micros });
        assert_eq!(
            [open.info(0), open.info(1), open.info(2), open.info(3)],
            [at("a", 100), at("b", 200), at("", 0), at("", 0)]
        );
        open.redescribe(2, &info(2));
        open.redescribe(2, &info(9));
        open.redescribe(0, &info(9));
        assert_eq!(
            [open.info(0), open.info(2)],
            [at("a", 100), Some(info(2))],
            "learnt once, by undescribed points only"
        );
        let empty = OpenShard::reloaded(OpenShard::new(&params(10)).hnsw, Vec::new(), [], 55);
        assert_eq!((empty.len(), empty.opened_at()), (0, None));
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
    fn vectors_without_direction_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SpaceIndex::new(dir.path(), &params(1000), 4);
        assert!(index.insert(SegmentId(1), &info(1), &[0.0; 4], 0).is_err());
        assert!(index.insert(SegmentId(1), &info(1), &[f32::NAN, 0.0, 0.0, 1.0], 0).is_err());
        assert!(index.insert(SegmentId(1), &info(1), &[1.0; 3], 0).is_err());
        assert!(index.is_empty());
    }
}
