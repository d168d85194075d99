//! Similarity queries: the nearest archived segments to a clip of audio or to an archived segment.
//!
//! The indices are opened from their snapshots and caught up from the archive, so a query sees every archived
//! segment whether or not a job is running.

use std::borrow::Cow;
use std::path::PathBuf;

use chorus_connectors::wav::{self, Audio, DecodeLimits};
use chorus_operators::embed::{self, Embedder};
use chorus_operators::index::{self, Filter, Registry, Request, now_seconds};
use chorus_operators::record::{SegmentId, rfc3339};
use chorus_operators::refine::SharedRefinements;
use chorus_operators::resample::StreamResampler;
use chorus_operators::segment::WindowSpec;
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
        Target::Segment(id) => vec![(format!("segment {id}"), segment_vector(&registry, &spaces, *id)?)],
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
    let samples = clip_samples(config, audio)?;
    embed_samples(config, embedder, &samples, name)
}

/// A decoded clip's samples at the model's sample rate.
pub fn clip_samples(config: &Config, audio: Audio) -> Result<Vec<f32>, Error> {
    let rate = config.model.sample_rate;
    if audio.sample_rate == rate {
        return Ok(audio.samples);
    }
    let mut resampler = StreamResampler::new(audio.sample_rate, rate)?;
    // The output's length is known (the resampler gives exactly ceil(n · out / in) samples, plus a block's tail
    // before it trims): reserved at once, it is never copied to grow; fed a second at a time, the resampler never
    // buffers a copy of the whole clip. Its output does not depend on how its input is cut.
    let expected = (audio.samples.len() as u64 * u64::from(rate)).div_ceil(u64::from(audio.sample_rate)) as usize;
    let mut out = Vec::with_capacity(expected + (expected / 16).max(1 << 16));
    for second in audio.samples.chunks(audio.sample_rate as usize) {
        resampler.push(second, &mut out)?;
    }
    resampler.finish(&mut out)?;
    Ok(out)
}

/// Embeds every window of a clip's `samples` (at the model's rate, cut as
/// [`chorus_operators::segment::clip_windows`] cuts them), labelled `name@offset`. The windows are cut one batch at a
/// time: a long clip costs its samples and one batch, not a copy of every window.
pub fn embed_samples(
    config: &Config,
    embedder: &mut Embedder,
    samples: &[f32],
    name: &str,
) -> Result<Vec<(String, Vec<f32>)>, Error> {
    let rate = f64::from(config.model.sample_rate);
    let mut out = Vec::new();
    for_each_window_batch(&config.windows, samples, embedder.max_batch(), |starts, windows| {
        for (start, vector) in starts.iter().zip(embedder.embed(windows)?) {
            out.push((format!("{name}@{}s", *start as f64 / rate), vector));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Where the windows of a clip of `len` samples start: every hop from its first sample, the last one kept when it
/// holds at least `min_coverage` samples; a clip shorter than a window has one.
fn window_starts(spec: &WindowSpec, len: usize) -> Vec<usize> {
    let (window, hop) = (spec.window as usize, spec.hop as usize);
    let mut starts = Vec::new();
    let mut start = 0;
    while start < len {
        let available = len - start;
        if !starts.is_empty() && available < spec.min_coverage as usize {
            break;
        }
        starts.push(start);
        if available <= window {
            break;
        }
        start += hop;
    }
    starts
}

/// Calls `each(starts, windows)` for the windows of `samples` in batches of at most `batch`: whole windows are
/// slices of `samples`, and only a window running past the end is copied (zero-padded).
fn for_each_window_batch(
    spec: &WindowSpec,
    samples: &[f32],
    batch: usize,
    mut each: impl FnMut(&[usize], &[&[f32]]) -> Result<(), Error>,
) -> Result<(), Error> {
    let window = spec.window as usize;
    for starts in window_starts(spec, samples.len()).chunks(batch.max(1)) {
        let cut: Vec<Cow<[f32]>> = starts
            .iter()
            .map(|&start| match samples.get(start..start + window) {
                Some(whole) => Cow::Borrowed(whole),
                None => {
                    let mut padded = samples[start..].to_vec();
                    padded.resize(window, 0.0);
                    Cow::Owned(padded)
                }
            })
            .collect();
        let views: Vec<&[f32]> = cut.iter().map(|w| w.as_ref()).collect();
        each(starts, &views)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_operators::segment::{WindowsConfig, clip_windows};

    #[test]
    fn clips_are_cut_in_batches_into_the_windows_clip_windows_cuts() {
        let mut spec = WindowsConfig::default().build(32_000, 160_000).unwrap();
        (spec.window, spec.hop, spec.min_coverage) = (50, 20, 15);
        for len in [0, 1, 14, 15, 49, 50, 51, 69, 70, 84, 85, 86, 200, 233, 1_000] {
            let samples: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
            let want = clip_windows(&spec, &samples);
            for batch in [1, 3, 64] {
                let mut got = Vec::new();
                for_each_window_batch(&spec, &samples, batch, |starts, windows| {
                    assert!(starts.len() <= batch && starts.len() == windows.len());
                    got.extend(starts.iter().copied().zip(windows.iter().map(|w| w.to_vec())));
                    Ok(())
                })
                .unwrap();
                assert_eq!(got, want, "{len} samples in batches of {batch}");
            }
        }
    }
}
