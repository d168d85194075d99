//! Similarity queries: the nearest archived segments to a clip of audio or to an archived segment.
//!
//! The indices are opened from their snapshots and caught up from the archive, so a query sees every archived
//! segment whether or not a job is running.

use std::path::PathBuf;

use chorus_connectors::parquet;
use chorus_connectors::wav::{self, DecodeLimits};
use chorus_operators::embed::{self, Embedder};
use chorus_operators::index::{self, Filter, Registry, Request, now_seconds};
use chorus_operators::record::{SegmentId, rfc3339};
use chorus_operators::refine::SharedRefinements;
use chorus_operators::resample::StreamResampler;
use chorus_operators::segment::clip_windows;
use serde::Serialize;

use crate::Error;
use crate::config::Config;
use crate::store;

/// What to search for.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Every window of a WAV file.
    Audio(PathBuf),
    /// An archived segment (it is left out of its own results).
    Segment(SegmentId),
}

/// A query.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryOptions {
    /// What to search for.
    pub target: Target,
    /// Neighbours per query vector.
    pub k: usize,
    /// Beam width; `None` takes the config's `index.ef_search`.
    pub ef: Option<usize>,
    /// Only this space; `None` searches every space.
    pub space: Option<String>,
}

/// One neighbour.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// 1 for the nearest.
    pub rank: usize,
    /// Segment id.
    pub segment_id: String,
    /// Tenant.
    pub space: String,
    /// Sensor id.
    pub sensor: String,
    /// RFC 3339 UTC.
    pub start_time: String,
    /// RFC 3339 UTC.
    pub end_time: String,
    /// Cosine distance, 0 for identical direction (between refined embeddings in a refined search).
    pub distance: f32,
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

/// The neighbours of one query vector.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answer {
    /// What was searched for: `clip.wav@2.5s` or `segment <id>`.
    pub query: String,
    /// Nearest first.
    pub hits: Vec<Hit>,
}

/// Runs a query against the indices of `config`, opened from disk and caught up from the archive.
pub fn query(config: &Config, options: &QueryOptions) -> Result<Vec<Answer>, Error> {
    let known = store::known_spaces(config)?;
    let spaces = match &options.space {
        Some(space) if known.contains(space) => vec![space.clone()],
        Some(space) => {
            return Err(Error::NotFound(format!(
                "space '{space}' has no segments in {} (spaces there: {})",
                config.archive.dir.display(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )));
        }
        None => known,
    };
    if spaces.is_empty() {
        return Err(Error::NotFound(format!(
            "the archive {} holds no segments yet: produce audio and run the job first",
            config.archive.dir.display()
        )));
    }
    let registry = store::open_registry(config, &spaces, None)?;
    let queries = match &options.target {
        Target::Audio(path) => {
            let input = |message: String| Error::Input { path: path.to_path_buf(), message };
            let bytes = std::fs::read(path).map_err(|e| input(format!("cannot read: {e}")))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut embedder = open_embedder(config)?;
            embed_clip(config, &mut embedder, &bytes, &name).map_err(|e| match e {
                Error::Usage(message) => input(message),
                other => other,
            })?
        }
        Target::Segment(id) => vec![(format!("segment {id}"), segment_vector(config, &registry, &spaces, *id)?)],
    };
    let excluded = match &options.target {
        Target::Segment(id) => Some(*id),
        Target::Audio(_) => None,
    };
    let ef = options.ef.unwrap_or(config.index.ef_search);
    let filter = Filter::default();
    queries
        .into_iter()
        .map(|(label, vector)| {
            let hits = search(config, &registry, &spaces, &vector, options.k, ef, &filter, excluded)?;
            Ok(Answer { query: label, hits })
        })
        .collect()
}

/// The `k` nearest segments to `vector` over `spaces` (merged by distance), leaving out `excluded`; shards in the
/// archive tier are answered by scanning the archive.
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
        let cold = store::ArchiveScan { dir: &config.archive.dir, space };
        for (id, distance) in index.search(&request, Some(&cold), now)? {
            if Some(id) != excluded
                && let Some(point) = index.point(id)
            {
                found.push((id, distance, space.clone(), point));
            }
        }
    }
    found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    found.truncate(k);
    let window_micros = i64::from(config.model.window) * 1_000_000 / i64::from(config.model.sample_rate);
    Ok(found
        .into_iter()
        .enumerate()
        .map(|(i, (id, distance, space, point))| Hit {
            rank: i + 1,
            segment_id: id.to_string(),
            space,
            sensor: point.sensor,
            start_time: rfc3339(point.start_micros * 1_000),
            end_time: rfc3339((point.start_micros + window_micros) * 1_000),
            distance,
            label: None,
            label_score: None,
            cluster: None,
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
    let refined = |hit: &Hit| -> Option<Vec<f32>> {
        let id: SegmentId = hit.segment_id.parse().ok()?;
        refinements.get(id.0)?.refined()
    };
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
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.segment_id.cmp(&b.1.segment_id)));
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
    if refinements.is_empty() {
        return;
    }
    for hit in hits {
        let Some(id) = hit.segment_id.parse::<SegmentId>().ok() else { continue };
        let Some(state) = refinements.get(id.0) else { continue };
        if let Some((label, score)) = refinements.label(id.0) {
            hit.label = Some(label);
            hit.label_score = Some(score);
        }
        hit.cluster = state.cluster.map(|c| SegmentId(c).to_string());
    }
}

/// The vector of segment `id`: from the index holding it, else from the archive.
pub fn segment_vector(
    config: &Config,
    registry: &Registry,
    spaces: &[String],
    id: SegmentId,
) -> Result<Vec<f32>, Error> {
    for space in spaces {
        if let Some(vector) = registry.get(space).and_then(|shared| index::read(&shared).vector(id)) {
            return Ok(vector);
        }
    }
    archived_embedding(config, spaces, id)
}

/// The model, ready to embed query clips.
pub fn open_embedder(config: &Config) -> Result<Embedder, Error> {
    let environment = embed::runtime(&config.embed.library)?;
    Ok(Embedder::open(environment, &config.model, &config.embed.per_worker(1))?)
}

/// Embeds every window of a WAV file's bytes, labelled `name@offset`; a clip that cannot be used is an
/// [`Error::Usage`] saying why.
pub fn embed_clip(
    config: &Config,
    embedder: &mut Embedder,
    bytes: &[u8],
    name: &str,
) -> Result<Vec<(String, Vec<f32>)>, Error> {
    let audio = wav::decode(bytes, &DecodeLimits::default()).map_err(|r| Error::Usage(r.reason))?;
    let rate = config.model.sample_rate;
    let samples = if audio.sample_rate == rate {
        audio.samples
    } else {
        let mut resampler = StreamResampler::new(audio.sample_rate, rate)?;
        let mut out = Vec::new();
        resampler.push(&audio.samples, &mut out)?;
        resampler.finish(&mut out)?;
        out
    };
    let windows = clip_windows(&config.windows, &samples);
    let mut out = Vec::with_capacity(windows.len());
    for batch in windows.chunks(embedder.max_batch()) {
        let views: Vec<&[f32]> = batch.iter().map(|(_, w)| w.as_slice()).collect();
        let vectors = embedder.embed(&views)?;
        for ((offset, _), vector) in batch.iter().zip(vectors) {
            out.push((format!("{name}@{}s", *offset as f64 / f64::from(rate)), vector));
        }
    }
    Ok(out)
}

/// The archived embedding of segment `id`.
fn archived_embedding(config: &Config, spaces: &[String], id: SegmentId) -> Result<Vec<f32>, Error> {
    let mut found = None;
    for space in spaces {
        parquet::read_space(&config.archive.dir, space, true, |row| {
            if row.id == id && found.is_none() {
                found = row.embedding;
            }
        })?;
        if found.is_some() {
            break;
        }
    }
    found.ok_or_else(|| Error::NotFound(format!("segment {id} is not in the archive {}", config.archive.dir.display())))
}

/// Prints answers as aligned columns.
pub fn print_table(answers: &[Answer], out: &mut impl std::io::Write) -> std::io::Result<()> {
    for answer in answers {
        if answers.len() > 1 {
            writeln!(out, "{}:", answer.query)?;
        }
        if answer.hits.is_empty() {
            writeln!(out, "  (no neighbours)")?;
            continue;
        }
        let width =
            |f: &dyn Fn(&Hit) -> usize, title: &str| answer.hits.iter().map(f).max().unwrap_or(0).max(title.len());
        let (space_w, sensor_w) = (width(&|h| h.space.len(), "space"), width(&|h| h.sensor.len(), "sensor"));
        writeln!(
            out,
            "{:>4}  {:<16}  {:<space_w$}  {:<sensor_w$}  {:<24}  {:>8}",
            "rank", "segment_id", "space", "sensor", "start_time", "distance"
        )?;
        for hit in &answer.hits {
            writeln!(
                out,
                "{:>4}  {:<16}  {:<space_w$}  {:<sensor_w$}  {:<24}  {:>8.4}",
                hit.rank, hit.segment_id, hit.space, hit.sensor, hit.start_time, hit.distance
            )?;
        }
    }
    Ok(())
}
