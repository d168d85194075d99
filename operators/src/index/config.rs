//! `[index]`: HNSW parameters, shards, tiers and snapshots, as configured ([`IndexConfig`]) and validated
//! ([`IndexParams`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::FieldError;

const DAY: u64 = 86_400;

/// `[index]`: HNSW parameters, shards, tiers and snapshots.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Directory of the snapshots (one subdirectory per space); a relative path is resolved against the directory of
    /// the config file.
    pub dir: PathBuf,
    /// Links per node (M); layer 0 keeps twice as many.
    pub m: usize,
    /// Beam width while inserting (efConstruction).
    pub ef_construction: usize,
    /// Beam width while searching (efSearch), unless a query sets its own.
    pub ef_search: usize,
    /// Seconds between snapshots of a changed index (one is also written when the job stops).
    pub snapshot_interval_seconds: u64,
    /// The open shard is sealed once it holds this many points...
    pub shard_max_points: usize,
    /// ... or once its first point is this old (seconds).
    pub shard_max_age_seconds: u64,
    /// A sealed shard unused for this long (seconds since it was sealed or last answered a query) moves to f16;
    /// 0: never by age.
    pub f16_after_seconds: u64,
    /// ... to int8; 0: never by age.
    pub int8_after_seconds: u64,
    /// ... out of memory: a search reads its graph and rows from disk; 0: never by age.
    pub archive_after_seconds: u64,
    /// Memory (MiB) the index of one worker may hold; beyond it, the least recently used shards move down a tier
    /// (f16, int8, disk — the graph alone in memory — then archive), and a shard moves up only where it fits.
    /// 0: no budget.
    pub memory_budget_mb: u64,
    /// Quantized tiers fetch `k × rescore_oversample` candidates and rescore them with the full-precision vectors
    /// kept on disk; 0 turns rescoring off.
    pub rescore_oversample: usize,
    /// A shard below f32 that answers this many queries moves one tier up.
    pub promote_after_hits: u32,
    /// What builds the open shard's graph: `chorus` (its own parallel builder, with a write buffer) or `hnsw_rs`.
    pub builder: Builder,
    /// With the `chorus` builder: what inserts compare. `int8` keeps a one-byte code per dimension beside each
    /// vector of the open shard (a quarter more memory) and builds about three times faster; `f32` compares the
    /// vectors themselves. Searches compare the vectors either way.
    pub construction: Construction,
    /// With the `chorus` builder: new vectors wait in the open shard's write buffer (searched by an exact scan) until
    /// a background thread links them into the graph; past this many, the thread inserting links the rest itself,
    /// so ingestion slows to the builder's pace instead of the buffer growing.
    pub buffer_max_points: usize,
}

/// What the inserts of chorus's builder compare.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Construction {
    /// Int8 codes, each row scaled by its largest component.
    #[default]
    Int8,
    /// The vectors at full precision.
    F32,
}

/// What builds the open shard's graph.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Builder {
    /// chorus's own parallel builder (`builder.rs`): inserts return once the vector is in the write buffer, a
    /// background thread links it into the graph.
    #[default]
    Chorus,
    /// hnsw_rs: each insert links its vector into the graph before it returns.
    HnswRs,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            dir: PathBuf::from("var/index"),
            m: 32,
            ef_construction: 200,
            ef_search: 128,
            snapshot_interval_seconds: 60,
            shard_max_points: 100_000,
            shard_max_age_seconds: DAY,
            f16_after_seconds: 7 * DAY,
            int8_after_seconds: 30 * DAY,
            archive_after_seconds: 0,
            memory_budget_mb: 0,
            rescore_oversample: 4,
            promote_after_hits: 3,
            builder: Builder::Chorus,
            construction: Construction::Int8,
            buffer_max_points: 10_000,
        }
    }
}

impl IndexConfig {
    /// Validates; `base` is the directory relative paths are resolved against.
    pub fn build(&self, base: &Path) -> Result<IndexParams, FieldError> {
        if self.dir.as_os_str().is_empty() {
            return Err(FieldError::new("dir", "is empty"));
        }
        if !(2..=255).contains(&self.m) {
            return Err(FieldError::new("m", format!("{} is outside 2..=255", self.m)));
        }
        if self.ef_construction < self.m {
            return Err(FieldError::new(
                "ef_construction",
                format!("{} is below m = {}", self.ef_construction, self.m),
            ));
        }
        if self.ef_search == 0 {
            return Err(FieldError::new("ef_search", "must be at least 1"));
        }
        if self.shard_max_points < 2 {
            return Err(FieldError::new("shard_max_points", format!("{} is below 2", self.shard_max_points)));
        }
        let ages = [
            ("f16_after_seconds", self.f16_after_seconds),
            ("int8_after_seconds", self.int8_after_seconds),
            ("archive_after_seconds", self.archive_after_seconds),
        ];
        for pair in ages.windows(2) {
            let ((warm, a), (cold, b)) = (pair[0], pair[1]);
            if a > 0 && b > 0 && b < a {
                return Err(FieldError::new(cold, format!("{b} is below {warm} = {a}: tiers age in order")));
            }
        }
        if self.rescore_oversample > 64 {
            return Err(FieldError::new("rescore_oversample", format!("{} is above 64", self.rescore_oversample)));
        }
        if self.buffer_max_points == 0 {
            return Err(FieldError::new("buffer_max_points", "must be at least 1"));
        }
        Ok(IndexParams {
            dir: base.join(&self.dir),
            m: self.m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
            snapshot_interval: Duration::from_secs(self.snapshot_interval_seconds.max(1)),
            shard_max_points: self.shard_max_points,
            shard_max_age: Duration::from_secs(self.shard_max_age_seconds.max(1)),
            tier_ages: [self.f16_after_seconds, self.int8_after_seconds, self.archive_after_seconds],
            memory_budget: (self.memory_budget_mb > 0).then(|| self.memory_budget_mb as usize * (1 << 20)),
            rescore_oversample: self.rescore_oversample,
            promote_after_hits: self.promote_after_hits.max(1),
            builder: self.builder,
            construction: self.construction,
            buffer_max_points: self.buffer_max_points,
        })
    }
}

/// Memory one point of hnsw_rs's open shard takes at `dim` dimensions with `m` links per node: its vector, its links
/// (about `m` on upper layers and `2m` on layer 0, with their distances) and bookkeeping.
pub(super) fn hnsw_point_bytes(dim: usize, m: usize) -> usize {
    dim * 4 + m * 2 * 16 + 96
}

/// Memory one point of the open shard takes at `dim` dimensions with `m` links per node, built by `builder`
/// comparing `construction`: the graph's share, and its id, sensor and time (a map entry).
pub(super) fn open_point_bytes(builder: Builder, construction: Construction, dim: usize, m: usize) -> usize {
    match builder {
        Builder::HnswRs => hnsw_point_bytes(dim, m),
        Builder::Chorus => super::builder::Growing::bytes_at(1, dim, m, construction == Construction::Int8) + 8 + 32,
    }
}

/// Validated index parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexParams {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// Links per node.
    pub m: usize,
    /// Insert beam width.
    pub ef_construction: usize,
    /// Default search beam width.
    pub ef_search: usize,
    /// Time between snapshots.
    pub snapshot_interval: Duration,
    /// Points that seal the open shard.
    pub shard_max_points: usize,
    /// Age that seals the open shard.
    pub shard_max_age: Duration,
    /// Seconds unused before f16, int8 and archive (0: never).
    pub tier_ages: [u64; 3],
    /// Bytes the index of one worker may hold.
    pub memory_budget: Option<usize>,
    /// Candidates per wanted neighbour rescored at full precision.
    pub rescore_oversample: usize,
    /// Answers that promote a shard one tier.
    pub promote_after_hits: u32,
    /// What builds the open shard's graph.
    pub builder: Builder,
    /// What chorus's builder compares while inserting.
    pub construction: Construction,
    /// Vectors the write buffer holds before inserts link them themselves.
    pub buffer_max_points: usize,
}

impl IndexParams {
    /// Memory a full open shard takes at `dim` dimensions: the least an index budget must hold.
    pub fn open_shard_bytes(&self, dim: usize) -> usize {
        self.shard_max_points * open_point_bytes(self.builder, self.construction, dim, self.m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Tier;

    #[test]
    fn tier_ages_must_grow_colder_in_order() {
        let config = IndexConfig { f16_after_seconds: 100, int8_after_seconds: 50, ..Default::default() };
        assert_eq!(config.build(Path::new("/")).unwrap_err().field, "int8_after_seconds");
        let params = IndexConfig { archive_after_seconds: 0, ..Default::default() }.build(Path::new("/")).unwrap();
        assert_eq!(params.tier_for_age(0), Tier::F32);
        assert_eq!(params.tier_for_age(8 * DAY), Tier::F16);
        assert_eq!(params.tier_for_age(365 * DAY), Tier::Int8);
    }
}
