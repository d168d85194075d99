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

use super::graph::{Extracted, Graph};
use super::shard::Rows;
use super::space::PointInfo;
use super::{Filter, IndexParams, unit};
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
        // Vector, links (about m on upper layers and 2m on layer 0, with their distances) and bookkeeping per point.
        let links = self.hnsw.get_max_nb_connection() as usize * 2 * 16;
        self.len() * (dim * 4 + links + 96)
    }

    /// Inserts `points` — `(id, where and when, vector from [`prepare`])`, ids not in the shard yet — in parallel
    /// when there are several. The first point inserted marks when the shard opened.
    pub(super) fn insert(&mut self, points: &[(u64, &PointInfo, Vec<f32>)], now: u64) {
        for (id, info, _) in points {
            self.describe(*id, info);
        }
        if points.len() == 1 {
            self.hnsw.insert_slice((&points[0].2, points[0].0 as usize));
        } else {
            let batch: Vec<(&[f32], usize)> = points.iter().map(|(id, _, v)| (v.as_slice(), *id as usize)).collect();
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
        let found = if filter.is_empty() {
            self.hnsw.search(&shrunk, k, ef.max(k))
        } else {
            let accept = |id: &usize| self.admits(filter, *id as u64);
            self.hnsw.search_filter(&shrunk, k, ef.max(k), Some(&accept))
        };
        // Undo the shrink so that a vector's distance to itself reads as 0.
        found.into_iter().map(|n| (n.d_id as u64, (1.0 - (1.0 - n.distance) / (SHRINK * SHRINK)).max(0.0))).collect()
    }

    /// Freezes the shard for sealing: its graph with the vectors normalised again (the shrink undone), and its rows.
    pub(super) fn freeze(&self) -> (Extracted, Rows) {
        let mut extracted = Graph::from_hnsw(&self.hnsw);
        for x in &mut extracted.vectors {
            *x /= SHRINK;
        }
        let (sensor, start) = extracted.ids.iter().map(|id| self.info[id]).unzip();
        let rows = Rows { ids: extracted.ids.clone(), sensor, start, sensors: self.sensors.clone() };
        (extracted, rows)
    }
}

/// Every point of an hnsw_rs graph, each once. hnsw_rs's own iterator over all points unwraps the graph's entry
/// point, so it panics on an empty graph (an open shard just sealed, a space whose first segment is still on its way
/// to the archive); its per-layer iterators do not, and every point lives in exactly one layer's list.
pub(super) fn hnsw_points<'a, 'b: 'a>(
    hnsw: &'a Hnsw<'b, f32, DistDot>,
) -> impl Iterator<Item = Arc<Point<'b, f32>>> + 'a {
    let indexation = hnsw.get_point_indexation();
    (0..=usize::from(hnsw.get_max_level_observed())).flat_map(move |layer| indexation.get_layer_iterator(layer))
}
