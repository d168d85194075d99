//! `chorus query`: the nearest archived segments to a WAV file or to an archived segment, found by the search engine
//! ([`crate::search`]) over the indices on disk, printed as a table (or JSON by the caller).

use std::path::PathBuf;

use chorus_operators::index::Filter;
use chorus_operators::record::SegmentId;

use crate::Error;
use crate::config::Config;
use crate::search::{self, Answer, Hit};
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
            let mut embedder = search::open_embedder(config)?;
            search::embed_clip(config, &mut embedder, &bytes, &name).map_err(|e| match e {
                Error::Usage(message) => input(message),
                other => other,
            })?
        }
        Target::Segment(id) => vec![(format!("segment {id}"), search::segment_vector(&registry, &spaces, *id)?)],
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
            let hits = search::search(config, &registry, &spaces, &vector, options.k, ef, &filter, excluded)?;
            Ok(Answer { query: label, hits })
        })
        .collect()
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
        let (space_w, sensor_w) =
            (width(&|h| h.segment.space.len(), "space"), width(&|h| h.segment.sensor.len(), "sensor"));
        writeln!(
            out,
            "{:>4}  {:<16}  {:<space_w$}  {:<sensor_w$}  {:<24}  {:>8}",
            "rank", "segment_id", "space", "sensor", "start_time", "distance"
        )?;
        for hit in &answer.hits {
            let s = &hit.segment;
            writeln!(
                out,
                "{:>4}  {:<16}  {:<space_w$}  {:<sensor_w$}  {:<24}  {:>8.4}",
                hit.rank, s.segment_id, s.space, s.sensor, s.start_time, hit.distance
            )?;
        }
    }
    Ok(())
}
