//! Similarity queries: the nearest archived segments to a clip of audio or to an archived segment.
//!
//! The indices are opened from their snapshots and caught up from the archive, so a query sees every archived
//! segment whether or not a job is running.

use std::collections::HashMap;
use std::path::PathBuf;

use chorus_connectors::parquet::{self, ArchivedSegment};
use chorus_connectors::wav::{self, DecodeLimits};
use chorus_operators::embed::{self, Embedder};
use chorus_operators::index::{Filter, Request, SpaceIndex, now_seconds};
use chorus_operators::record::{SegmentId, rfc3339};
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
    /// Cosine distance, 0 for identical direction.
    pub distance: f32,
}

/// The neighbours of one query vector.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answer {
    /// What was searched for: `clip.wav@2.5s` or `segment <id>`.
    pub query: String,
    /// Nearest first.
    pub hits: Vec<Hit>,
}

/// Runs a query against the archive and indices of `config`.
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
    let queries = match &options.target {
        Target::Audio(path) => embed_clip(config, path)?,
        Target::Segment(id) => vec![(format!("segment {id}"), archived_embedding(config, &spaces, *id)?)],
    };
    let excluded = match &options.target {
        Target::Segment(id) => Some(*id),
        Target::Audio(_) => None,
    };

    let mut indices: Vec<(&str, SpaceIndex)> = Vec::new();
    let mut rows: HashMap<SegmentId, ArchivedSegment> = HashMap::new();
    for space in &spaces {
        indices.push((space, store::open_space(config, space)?.0));
        parquet::read_space(&config.archive.dir, space, false, |row| {
            rows.insert(row.id, row);
        })?;
    }
    let ef = options.ef.unwrap_or(config.index.ef_search);
    let mut answers = Vec::new();
    for (label, vector) in queries {
        let mut found = Vec::new();
        let filter = Filter::default();
        let request = Request { vector: &vector, k: options.k + 1, ef, filter: &filter };
        for (space, index) in &indices {
            let cold = store::ArchiveScan { dir: &config.archive.dir, space };
            found.extend(index.search(&request, Some(&cold), now_seconds())?);
        }
        found.retain(|(id, _)| Some(*id) != excluded);
        found.sort_by(|a, b| a.1.total_cmp(&b.1));
        found.truncate(options.k);
        let hits = found
            .into_iter()
            .enumerate()
            .filter_map(|(i, (id, distance))| {
                let row = rows.get(&id)?;
                Some(Hit {
                    rank: i + 1,
                    segment_id: id.to_string(),
                    space: row.space.clone(),
                    sensor: row.sensor.clone(),
                    start_time: rfc3339(row.start_micros * 1_000),
                    end_time: rfc3339(row.end_micros * 1_000),
                    distance,
                })
            })
            .collect();
        answers.push(Answer { query: label, hits });
    }
    Ok(answers)
}

/// Embeds every window of a WAV file, labelled `file@offset`.
fn embed_clip(config: &Config, path: &std::path::Path) -> Result<Vec<(String, Vec<f32>)>, Error> {
    let input = |message: String| Error::Input { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| input(format!("cannot read: {e}")))?;
    let audio = wav::decode(&bytes, &DecodeLimits::default()).map_err(|r| input(r.reason))?;
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
    let environment = embed::runtime(&config.embed.library)?;
    let mut embedder = Embedder::open(environment, &config.model, &config.embed.per_worker(1))?;
    let windows = clip_windows(&config.windows, &samples);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
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
