//! The open shard: the graph that takes a space's inserts until it is sealed, built by chorus's own builder (with
//! its write buffer) or by hnsw_rs, as `index.builder` says.
//!
//! A space has one open shard and any number of sealed ones (`shard.rs`). Sealing freezes the open shard
//! ([`OpenShard::freeze_into`]) into the graph, vectors and rows a sealed [`Shard`](super::Shard) is written from; the
//! open shard then starts again empty. When to seal is the tier policy's (`policy.rs`); the open shard's snapshot is
//! written and read with the manifest (`manifest.rs`).
//!
//! With chorus's builder ([`Growing`]), an insert appends the vector to the write buffer and returns: a search scans
//! the buffer exactly, so it sees every vector inserted before it, and [`OpenShard::link`] (the index's background
//! thread, `mod.rs`) moves the buffer into the graph. An insert that finds more than `index.buffer_max_points`
//! waiting links the excess itself: ingestion slows to the builder's pace, and the buffer's memory stays bounded.

use hnsw_rs::prelude::{DistDot, Hnsw};
use std::collections::{HashMap, HashSet};

use super::builder::Growing;
use super::config::{Builder, Construction, IndexParams, hnsw_point_bytes, open_point_bytes};
use super::graph::{Graph, hnsw_points};
use super::point::{Filter, PointInfo, unit};
use super::shard::Rows;
use crate::Error;

/// hnsw_rs only dumps graphs built with its maximum layer count.
const LAYERS: usize = 16;
/// Shrinks normalised vectors a hair so rounding can never push a dot product above 1 (hnsw_rs asserts on it).
const SHRINK: f32 = 1.0 - 4e-6;
/// Bytes an entry of the map of ids' sensors and times takes, with its control byte.
const INFO_BYTES: usize = std::mem::size_of::<(u64, (u32, i64))>() + 1;

/// The graph of an open shard and its rows.
pub(super) enum Store {
    /// hnsw_rs's graph, which knows each point's id.
    Hnsw(Hnsw<'static, f32, DistDot>),
    /// chorus's own graph, rows in insertion order, and the id of each row.
    Own { graph: Growing, ids: Vec<u64> },
}

/// The shard taking inserts.
pub(super) struct OpenShard {
    store: Store,
    /// Links per node.
    m: usize,
    /// What chorus's builder compares while inserting.
    construction: Construction,
    /// Rows the write buffer holds before an insert links them itself.
    buffer_max: usize,
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
    /// An empty open shard of `dim`-long vectors, built by the builder `params` names.
    pub(super) fn new(params: &IndexParams, dim: usize) -> OpenShard {
        let store = match params.builder {
            Builder::HnswRs => Store::Hnsw(Hnsw::new(
                params.m,
                params.shard_max_points.max(1000),
                LAYERS,
                params.ef_construction,
                DistDot,
            )),
            Builder::Chorus => {
                let quantized = params.construction == Construction::Int8;
                Store::Own { graph: Growing::new(dim, params.m, params.ef_construction, quantized), ids: Vec::new() }
            }
        };
        OpenShard::around(store, params)
    }

    fn around(store: Store, params: &IndexParams) -> OpenShard {
        OpenShard {
            store,
            m: params.m,
            construction: params.construction,
            buffer_max: params.buffer_max_points,
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
    /// fills them in. A shard holding points counts as opened at `now`. The snapshot's builder goes on building it,
    /// whatever `params` says: the next open shard is built by the configured one.
    pub(super) fn reloaded(
        store: Store,
        params: &IndexParams,
        sensors: Vec<String>,
        rows: impl IntoIterator<Item = (u64, u32, i64)>,
        now: u64,
    ) -> OpenShard {
        let mut open = OpenShard::around(store, params);
        open.sensor_numbers = sensors.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        open.sensors = sensors;
        for (id, sensor, start) in rows {
            if (sensor as usize) < open.sensors.len() {
                open.info.insert(id, (sensor, start));
            }
        }
        let unknown = PointInfo { sensor: String::new(), start_micros: 0 };
        let ids: Vec<u64> = open.ids().collect();
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
        match &self.store {
            Store::Hnsw(hnsw) => hnsw.get_nb_point(),
            Store::Own { graph, .. } => graph.len(),
        }
    }

    /// Points in the write buffer, not linked into the graph yet (0 with hnsw_rs, which has none).
    pub(super) fn buffered(&self) -> usize {
        match &self.store {
            Store::Hnsw(_) => 0,
            Store::Own { graph, .. } => graph.len() - graph.linked(),
        }
    }

    /// Links up to `most` of the write buffer's points into the graph, beside searches; returns how many (0 when
    /// another thread is linking, or with hnsw_rs).
    pub(super) fn link(&self, most: usize) -> usize {
        match &self.store {
            Store::Hnsw(_) => 0,
            Store::Own { graph, .. } => graph.link(most),
        }
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

    /// Every point's id, each once.
    pub(super) fn ids(&self) -> Box<dyn Iterator<Item = u64> + '_> {
        match &self.store {
            Store::Hnsw(hnsw) => Box::new(hnsw_points(hnsw).map(|p| p.get_origin_id() as u64)),
            Store::Own { ids, .. } => Box::new(ids.iter().copied()),
        }
    }

    /// Point `id`'s normalised vector.
    pub(super) fn vector(&self, id: u64) -> Option<Vec<f32>> {
        match &self.store {
            Store::Hnsw(hnsw) => {
                let point = hnsw_points(hnsw).find(|p| p.get_origin_id() as u64 == id)?;
                unit(point.get_v(), point.get_v().len()).ok()
            }
            Store::Own { graph, ids } => Some(graph.vector(ids.iter().position(|i| *i == id)? as u32).to_vec()),
        }
    }

    /// Calls `visit(id, normalised vector)` for every point.
    pub(super) fn for_each_vector(&self, visit: &mut dyn FnMut(u64, Vec<f32>)) {
        match &self.store {
            Store::Hnsw(hnsw) => {
                for point in hnsw_points(hnsw) {
                    if let Ok(v) = unit(point.get_v(), point.get_v().len()) {
                        visit(point.get_origin_id() as u64, v);
                    }
                }
            }
            Store::Own { graph, ids } => {
                for (row, id) in ids.iter().enumerate() {
                    visit(*id, graph.vector(row as u32).to_vec());
                }
            }
        }
    }

    /// The store, for its snapshot.
    pub(super) fn store(&self) -> &Store {
        &self.store
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
        match &self.store {
            Store::Hnsw(hnsw) => self.len() * hnsw_point_bytes(dim, hnsw.get_max_nb_connection() as usize),
            Store::Own { graph, ids } => graph.bytes() + ids.capacity() * 8 + self.info.capacity() * INFO_BYTES,
        }
    }

    /// Bytes it will hold once it has `points` points, estimated.
    pub(super) fn bytes_at(&self, dim: usize, points: usize) -> usize {
        let builder = match self.store {
            Store::Hnsw(_) => Builder::HnswRs,
            Store::Own { .. } => Builder::Chorus,
        };
        (points.max(self.len()) * open_point_bytes(builder, self.construction, dim, self.m)).max(self.bytes(dim))
    }

    /// Inserts `points` — `(id, where and when, vector from [`prepare`])`, ids not in the shard yet. hnsw_rs links
    /// them in parallel when there are several; chorus's builder appends them to the write buffer and links what
    /// exceeds its bound. The first point inserted marks when the shard opened.
    pub(super) fn insert(&mut self, points: &[(u64, &PointInfo, Vec<f32>)], now: u64) {
        for (id, info, _) in points {
            self.describe(*id, info);
        }
        match &mut self.store {
            Store::Hnsw(hnsw) => {
                // Into an empty graph, the first point goes alone: inserted in parallel, two first points can each
                // find no entry point, and one is left with no edge to it, which no search walks to. A lone point
                // needs no threads.
                let alone = if hnsw.get_nb_point() == 0 || points.len() == 1 { points.len().min(1) } else { 0 };
                let (alone, rest) = points.split_at(alone);
                for (id, _, vector) in alone {
                    hnsw.insert_slice((vector, *id as usize));
                }
                if !rest.is_empty() {
                    let batch: Vec<(&[f32], usize)> =
                        rest.iter().map(|(id, _, v)| (v.as_slice(), *id as usize)).collect();
                    hnsw.parallel_insert_slice(&batch);
                }
            }
            Store::Own { graph, ids } => {
                for (id, _, vector) in points {
                    let unshrunk: Vec<f32> = vector.iter().map(|x| x / SHRINK).collect();
                    graph.push(&unshrunk);
                    ids.push(*id);
                }
                let waiting = graph.len() - graph.linked();
                if waiting > self.buffer_max {
                    graph.link(waiting - self.buffer_max);
                }
            }
        }
        if !points.is_empty() {
            self.opened_at.get_or_insert(now);
        }
    }

    /// Links every point of the write buffer into the graph (before a seal).
    pub(super) fn link_all(&mut self) {
        if let Store::Own { graph, .. } = &mut self.store {
            graph.link_all();
        }
    }

    /// The `k` nearest points to `query` (normalised) that pass `filter`: `(id, cosine distance)`, nearest first.
    pub(super) fn search(&self, query: &[f32], k: usize, ef: usize, filter: &Filter) -> Vec<(u64, f32)> {
        if self.len() == 0 {
            return Vec::new();
        }
        match &self.store {
            Store::Hnsw(hnsw) => self.search_hnsw(hnsw, query, k, ef, filter),
            Store::Own { graph, ids } => {
                let found = if self.len() <= ef.max(k) {
                    // No more points than the search would visit: compared exactly, every one.
                    let mut found: Vec<(u32, f32)> = (0..self.len() as u32)
                        .filter(|row| filter.is_empty() || self.admits(filter, ids[*row as usize]))
                        .map(|row| (row, super::kernels::distance(query, graph.vector(row))))
                        .collect();
                    found.sort_by(|a, b| a.1.total_cmp(&b.1).then(ids[a.0 as usize].cmp(&ids[b.0 as usize])));
                    found.truncate(k);
                    found
                } else if filter.is_empty() {
                    graph.search(query, k, ef, None)
                } else {
                    let accept = |row: u32| self.admits(filter, ids[row as usize]);
                    graph.search(query, k, ef, Some(&accept))
                };
                found.into_iter().map(|(row, d)| (ids[row as usize], d.max(0.0))).collect()
            }
        }
    }

    fn search_hnsw(
        &self,
        hnsw: &Hnsw<'static, f32, DistDot>,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &Filter,
    ) -> Vec<(u64, f32)> {
        let shrunk: Vec<f32> = query.iter().map(|x| x * SHRINK).collect();
        // Undo the shrink so that a vector's distance to itself reads as 0.
        let unshrunk = |distance: f32| (1.0 - (1.0 - distance) / (SHRINK * SHRINK)).max(0.0);
        if self.len() <= ef.max(k) {
            // No more points than the search would visit: compared exactly, every one, so that a search as wide as
            // the shard returns all of it whatever edges hnsw_rs's graph kept.
            let mut found: Vec<(u64, f32)> = hnsw_points(hnsw)
                .map(|p| (p.get_origin_id() as u64, p))
                .filter(|(id, _)| filter.is_empty() || self.admits(filter, *id))
                .map(|(id, p)| (id, unshrunk(super::kernels::distance(&shrunk, p.get_v()))))
                .collect();
            found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            found.truncate(k);
            return found;
        }
        let found = if filter.is_empty() {
            hnsw.search(&shrunk, k, ef.max(k))
        } else {
            let accept = |id: &usize| self.admits(filter, *id as u64);
            hnsw.search_filter(&shrunk, k, ef.max(k), Some(&accept))
        };
        found.into_iter().map(|n| (n.d_id as u64, unshrunk(n.distance))).collect()
    }

    /// Freezes the shard for sealing without copying its vectors: each goes to `out` as it is reached, normalised, as
    /// little-endian f32; returns the graph and the rows. With chorus's builder, only the linked points
    /// ([`OpenShard::link_all`] first).
    pub(super) fn freeze_into(&self, out: &mut dyn std::io::Write) -> std::io::Result<(Graph, Rows)> {
        let mut bytes = Vec::new();
        let (graph, ids) = match &self.store {
            Store::Hnsw(hnsw) => Graph::from_hnsw_with(hnsw, &mut |v| {
                bytes.clear();
                bytes.extend(v.iter().flat_map(|x| (x / SHRINK).to_le_bytes()));
                out.write_all(&bytes)
            })?,
            Store::Own { graph, ids } => {
                let frozen = graph.freeze();
                if frozen.len() < ids.len() {
                    // Rows not linked would leave the shard unfound but counted as held: the seal fails instead.
                    return Err(std::io::Error::other(format!(
                        "{} of {} points are not linked into the graph",
                        ids.len() - frozen.len(),
                        ids.len()
                    )));
                }
                for row in 0..frozen.len() as u32 {
                    bytes.clear();
                    bytes.extend(graph.vector(row).iter().flat_map(|x| x.to_le_bytes()));
                    out.write_all(&bytes)?;
                }
                let ids = ids[..frozen.len()].to_vec();
                (frozen, ids)
            }
        };
        let (sensor, start) = ids.iter().map(|id| self.info[id]).unzip();
        Ok((graph, Rows { ids, sensor, start, sensors: self.sensors.clone() }))
    }

    /// Freezes the shard with its vectors in memory, normalised, and its rows.
    #[cfg(test)]
    pub(super) fn freeze(&self) -> (super::graph::Extracted, Rows) {
        let mut bytes = Vec::new();
        let (graph, rows) = self.freeze_into(&mut bytes).unwrap();
        let vectors = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (super::graph::Extracted { graph, ids: rows.ids.clone(), vectors }, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SpaceIndex;
    use crate::index::tests::{exact, info, open_shard, open_shard_by, params, search, vector};
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
            let builder = if case % 2 == 0 { Builder::Chorus } else { Builder::HnswRs };
            let open = open_shard_by(builder, ids.clone(), dim);
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
        for builder in [Builder::Chorus, Builder::HnswRs] {
            inserted_points_are_found_by(builder);
        }
    }

    fn inserted_points_are_found_by(builder: Builder) {
        let dim = 16;
        let mut open = OpenShard::new(&IndexParams { builder, ..params(100) }, dim);
        assert_eq!((open.len(), open.opened_at(), open.ids().count()), (0, None, 0), "an empty graph is walked");
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
        assert_eq!((open.len(), open.ids().count()), (1_500, 1_500));
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
        let mut open = OpenShard::reloaded(source.store, &params(10), vec!["a".into(), "b".into()], rows, 55);
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
        let empty = OpenShard::reloaded(OpenShard::new(&params(10), 8).store, &params(10), Vec::new(), [], 55);
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
