//! The search engine: the nearest archived segments to a vector, a clip or a segment, and the one view of a segment
//! that every output of chorus shows (the query API, `chorus query`, `chorus archive`, the search page).
//!
//! The indices are opened from their snapshots and caught up from the archive, so a search sees every archived
//! segment whether or not a job is running. Nothing here knows of HTTP or the command line: the servers and the
//! commands above it parse, call it and print.

pub mod audio;
pub mod clip;
pub mod listing;

use chorus_operators::index::{self, Filter, PointInfo, Registry, Request, now_seconds};
use chorus_operators::record::{SegmentId, rfc3339};
use chorus_operators::refine::{Refinements, SharedRefinements};
use serde::Serialize;

pub use self::audio::{Whereabouts, segment_audio, segment_wav};
pub use self::clip::{clip_samples, embed_clip, embed_samples, open_embedder};
use crate::Error;
use crate::config::Config;

/// Where and when a segment was recorded: the one outside view of a segment, which every output flattens into
/// (a search [`Hit`], `GET /v1/segments` and `/v1/segments/{id}`, a `chorus archive` row).
///
/// The segments topic's record (`chorus_connectors::kafka::SegmentRecord`) carries the same five fields under the
/// same names, plus coverage, model and source; it stays in the connector as the topic's wire format, and its end
/// time is the window's last sample as the archive stores it, where a view built from the index places the end one
/// window length ([`WindowSpec::window_micros`](chorus_operators::segment::WindowSpec::window_micros)) after the
/// start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegmentView {
    /// Segment id, 16 hex digits.
    pub segment_id: String,
    /// Tenant.
    pub space: String,
    /// Sensor id.
    pub sensor: String,
    /// First sample, RFC 3339 (UTC).
    pub start_time: String,
    /// Just past the last sample, RFC 3339 (UTC).
    pub end_time: String,
    /// The id, as a number.
    #[serde(skip)]
    pub id: SegmentId,
    /// The first sample, µs since the epoch.
    #[serde(skip)]
    pub start_micros: i64,
}

impl SegmentView {
    /// The view of segment `id` of `space`, recorded by `sensor` from `start_micros` to `end_micros`.
    pub fn new(id: SegmentId, space: String, sensor: String, start_micros: i64, end_micros: i64) -> SegmentView {
        SegmentView {
            segment_id: id.to_string(),
            space,
            sensor,
            start_time: rfc3339(start_micros * 1_000),
            end_time: rfc3339(end_micros * 1_000),
            id,
            start_micros,
        }
    }

    /// The view of an indexed segment: the index knows its start, and it lasts one window of the model.
    pub fn indexed(config: &Config, id: SegmentId, space: String, point: PointInfo) -> SegmentView {
        let end_micros = point.start_micros + config.windows.window_micros();
        SegmentView::new(id, space, point.sensor, point.start_micros, end_micros)
    }

    /// Where the archive keeps it: a lookup by these reads one row group.
    pub fn whereabouts(&self) -> Whereabouts {
        Whereabouts {
            space: Some(self.space.clone()),
            sensor: Some(self.sensor.clone()),
            start_micros: Some(self.start_micros),
        }
    }
}

/// What the job's refinement says of a segment, when it says anything (fields it does not give are left out).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Annotation {
    /// The label that reached the segment, when a job refines and one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The label's share of the label mass at the segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_score: Option<f32>,
    /// The segment's cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl Annotation {
    /// What `refinements` say of segment `id`: its current state, or for a segment retired beyond the horizon, what
    /// it showed when it left (while its record is kept; the refinements dataset keeps every one).
    pub fn of(id: SegmentId, refinements: &Refinements) -> Annotation {
        let mut annotation = Annotation::default();
        let (label, cluster) = match refinements.get(id.0) {
            Some(state) => (refinements.label(id.0), state.cluster),
            None => refinements.retired(id.0).unwrap_or_default(),
        };
        if let Some((label, score)) = label {
            annotation.label = Some(label);
            annotation.label_score = Some(score);
        }
        annotation.cluster = cluster.map(|c| SegmentId(c).to_string());
        annotation
    }
}

/// One neighbour: the segment, its rank and distance, and what the refinement says of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// 1 for the nearest.
    pub rank: usize,
    /// The segment.
    #[serde(flatten)]
    pub segment: SegmentView,
    /// Cosine distance, 0 for identical direction (between refined embeddings in a refined search).
    pub distance: f32,
    /// Label, label score and cluster.
    #[serde(flatten)]
    pub annotation: Annotation,
}

/// The neighbours of one query vector.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answer {
    /// What was searched for: `clip.wav@2.5s` or `segment <id>`.
    pub query: String,
    /// Nearest first.
    pub hits: Vec<Hit>,
}

/// The `k` nearest segments to `vector` over `spaces` (merged by distance), leaving out `excluded`.
#[allow(clippy::too_many_arguments)]
pub fn search(
    config: &Config,
    registry: &Registry,
    spaces: &[String],
    vector: &[f32],
    k: usize,
    ef: usize,
    filter: &Filter,
    excluded: Option<SegmentId>,
) -> Result<Vec<Hit>, Error> {
    let wanted = k + usize::from(excluded.is_some());
    let request = Request { vector, k: wanted, ef, filter };
    let now = now_seconds();
    let mut found = Vec::new();
    for space in spaces {
        let Some(shared) = registry.get(space) else { continue };
        let index = index::read(&shared);
        let hits: Vec<(SegmentId, f32)> =
            index.search(&request, now)?.into_iter().filter(|(id, _)| Some(*id) != excluded).collect();
        let points = index.points_of(&hits.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        for ((id, distance), point) in hits.into_iter().zip(points) {
            if let Some(point) = point {
                found.push((id, distance, space.clone(), point));
            }
        }
    }
    found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    found.truncate(k);
    Ok(found
        .into_iter()
        .enumerate()
        .map(|(i, (id, distance, space, point))| Hit {
            rank: i + 1,
            segment: SegmentView::indexed(config, id, space, point),
            distance,
            annotation: Annotation::default(),
        })
        .collect())
}

/// Candidates per wanted neighbour that a refined search re-ranks.
const REFINED_POOL: usize = 10;

/// The `k` nearest segments by refined embedding. The raw index proposes `k × 10` candidates; the query is refined
/// as a new segment would be — mixed with the mean refined embedding of its `refine.k` nearest candidates, with
/// weight `refine.alpha` on its own — unless `own` gives its refined embedding already (a segment's); candidates
/// are ranked by distance between refined embeddings (those not refined yet are left out).
#[allow(clippy::too_many_arguments)]
pub fn refined_search(
    config: &Config,
    registry: &Registry,
    refinements: &SharedRefinements,
    spaces: &[String],
    vector: &[f32],
    own: Option<Vec<f32>>,
    k: usize,
    ef: usize,
    filter: &Filter,
    excluded: Option<SegmentId>,
) -> Result<Vec<Hit>, Error> {
    let pool = (k * REFINED_POOL).min(10_000);
    let candidates = search(config, registry, spaces, vector, pool, ef.max(pool), filter, excluded)?;
    let refinements = refinements.read().unwrap_or_else(|e| e.into_inner());
    let refined = |hit: &Hit| -> Option<Vec<f32>> { refinements.get(hit.segment.id.0)?.refined() };
    let query = match own {
        Some(own) => own,
        None => {
            let query = index::unit(vector, config.model.dim)?;
            let near: Vec<Vec<f32>> = candidates.iter().filter_map(&refined).take(config.refine.k).collect();
            let mut mixed: Vec<f64> = query.iter().map(|x| config.refine.alpha * f64::from(*x)).collect();
            for v in &near {
                for (m, x) in mixed.iter_mut().zip(v) {
                    *m += (1.0 - config.refine.alpha) * f64::from(*x) / near.len() as f64;
                }
            }
            let mixed: Vec<f32> = mixed.iter().map(|x| *x as f32).collect();
            index::unit(&mixed, config.model.dim).unwrap_or(query)
        }
    };
    let mut ranked: Vec<(f32, Hit)> = candidates
        .into_iter()
        .filter_map(|hit| {
            let v = refined(&hit)?;
            let dot: f32 = v.iter().zip(&query).map(|(a, b)| a * b).sum();
            Some((1.0 - dot, hit))
        })
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.segment.segment_id.cmp(&b.1.segment.segment_id)));
    Ok(ranked
        .into_iter()
        .take(k)
        .enumerate()
        .map(|(i, (distance, hit))| Hit { rank: i + 1, distance, ..hit })
        .collect())
}

/// Fills in each hit's label, label score and cluster from the refinements.
pub fn annotate(hits: &mut [Hit], refinements: &SharedRefinements) {
    let refinements = refinements.read().unwrap_or_else(|e| e.into_inner());
    if refinements.is_empty() && refinements.retired_len() == 0 {
        return;
    }
    for hit in hits {
        hit.annotation = Annotation::of(hit.segment.id, &refinements);
    }
}

/// The vector of segment `id`, from the index of `spaces` that holds it. The indices hold every archived segment
/// (they are caught up from the archive when opened, and the job indexes before it archives), so a segment none of
/// them holds is not archived: the archive is not read to look for it.
pub fn segment_vector(registry: &Registry, spaces: &[String], id: SegmentId) -> Result<Vec<f32>, Error> {
    for space in spaces {
        let Some(shared) = registry.get(space) else { continue };
        let index = index::read(&shared);
        if index.contains(id) {
            return index.vector(id).ok_or_else(|| {
                Error::Operator(chorus_operators::Error::Index {
                    path: format!("space {space}"),
                    message: format!("the vector of segment {id} cannot be read from its shard"),
                })
            });
        }
    }
    let elsewhere = registry
        .spaces()
        .into_iter()
        .find(|space| !spaces.contains(space) && registry.get(space).is_some_and(|s| index::read(&s).contains(id)));
    Err(Error::NotFound(match elsewhere {
        Some(space) => format!("segment {id} is in space '{space}', which this search leaves out"),
        None => format!("segment {id} is not in the archive (no index holds it)"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_serialises_with_the_keys_and_values_it_always_had() {
        let segment = SegmentView::new(SegmentId(0xab), "s".into(), "pole-1".into(), 1_000_000, 6_000_000);
        let mut hit = Hit { rank: 1, segment, distance: 0.25, annotation: Annotation::default() };
        assert_eq!(
            serde_json::to_string(&hit).unwrap(),
            r#"{"rank":1,"segment_id":"00000000000000ab","space":"s","sensor":"pole-1","start_time":"1970-01-01T00:00:01Z","end_time":"1970-01-01T00:00:06Z","distance":0.25}"#
        );
        hit.annotation =
            Annotation { label: Some("owl".into()), label_score: Some(0.9), cluster: Some("00000000000000aa".into()) };
        assert!(
            serde_json::to_string(&hit)
                .unwrap()
                .ends_with(r#""distance":0.25,"label":"owl","label_score":0.9,"cluster":"00000000000000aa"}"#)
        );
    }
}
