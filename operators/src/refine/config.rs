//! `[refine]`: the kNN graph's size, the propagation's rounds and weights, label spreading and clustering, as
//! configured ([`RefineConfig`]) and validated ([`RefineParams`]).

use serde::Deserialize;

use super::rules;
use crate::FieldError;

/// `[refine]`: the kNN graph and what is computed over it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefineConfig {
    /// Whether the job refines at all.
    pub enabled: bool,
    /// Directory of the refinements dataset (Parquet, one row per published change of a segment's label, cluster
    /// or refined embedding); a relative path is resolved against the directory of the config file.
    pub dir: std::path::PathBuf,
    /// Neighbours per segment in the graph (its out-edges).
    pub k: usize,
    /// Embedding propagation: the weight of a segment's own embedding at each hop (the rest is the mean of its
    /// neighbours' embeddings at the previous hop).
    pub alpha: f64,
    /// Embedding propagation: hops (0 turns it off: refined equals raw).
    pub hops: usize,
    /// Label propagation: the weight of a node's own given label at each hop (personalised PageRank's restart).
    pub label_restart: f64,
    /// Label propagation: hops, i.e. how far a label can travel.
    pub label_hops: usize,
    /// Label propagation: scores below this fraction are dropped, so labels fade out instead of covering the graph.
    pub min_label_score: f64,
    /// Label propagation: labels kept per segment at each hop (the highest scores).
    pub label_top: usize,
    /// Clusters: two segments are joined when each is among the other's `k` nearest and their cosine distance is
    /// at most this.
    pub cluster_max_distance: f32,
    /// Milliseconds per refinement round: new segments and labels are gathered for this long, then refined
    /// together.
    pub round_ms: u64,
    /// Segments of each space the refinement holds: the most recent ones by start time. An older segment is retired
    /// (it leaves the graph; its last row stays in the refinements dataset), so the refinement's memory is bounded
    /// by this count, not by the job's uptime.
    pub horizon_segments: usize,
}

impl Default for RefineConfig {
    fn default() -> Self {
        RefineConfig {
            enabled: true,
            dir: std::path::PathBuf::from("var/refined"),
            k: 10,
            alpha: 0.5,
            hops: 1,
            label_restart: 0.01,
            label_hops: 10,
            min_label_score: 0.000_1,
            label_top: 3,
            cluster_max_distance: 0.1,
            round_ms: 250,
            horizon_segments: 5_000,
        }
    }
}

/// Validated refinement parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct RefineParams {
    /// Whether the job refines.
    pub enabled: bool,
    /// Refinements dataset.
    pub dir: std::path::PathBuf,
    /// Out-edges per node.
    pub k: usize,
    /// Own-embedding weight per hop.
    pub alpha: f64,
    /// Embedding hops.
    pub hops: usize,
    /// Own-label weight per hop.
    pub label_restart: f64,
    /// Label hops.
    pub label_hops: usize,
    /// Smallest label score kept, as a fraction of [`rules::SCORE_ONE`].
    pub min_label_score: i64,
    /// Labels kept per node.
    pub label_top: usize,
    /// Cluster distance threshold.
    pub cluster_max_distance: f32,
    /// Round length.
    pub round: std::time::Duration,
    /// Segments held per space.
    pub horizon_segments: usize,
}

impl RefineConfig {
    /// Validates; `base` is the directory relative paths are resolved against.
    pub fn build(&self, base: &std::path::Path) -> Result<RefineParams, FieldError> {
        if self.dir.as_os_str().is_empty() {
            return Err(FieldError::new("dir", "is empty"));
        }
        if !(1..=256).contains(&self.k) {
            return Err(FieldError::new("k", format!("{} is outside 1..=256", self.k)));
        }
        let fraction = |field: &'static str, x: f64| {
            if (0.0..=1.0).contains(&x) { Ok(x) } else { Err(FieldError::new(field, format!("{x} is outside 0..=1"))) }
        };
        let alpha = fraction("alpha", self.alpha)?;
        let label_restart = fraction("label_restart", self.label_restart)?;
        let min_label_score = fraction("min_label_score", self.min_label_score)?;
        if self.hops > 8 {
            return Err(FieldError::new("hops", format!("{} is above 8", self.hops)));
        }
        if !(1..=64).contains(&self.label_top) {
            return Err(FieldError::new("label_top", format!("{} is outside 1..=64", self.label_top)));
        }
        if !(1..=32).contains(&self.label_hops) {
            return Err(FieldError::new("label_hops", format!("{} is outside 1..=32", self.label_hops)));
        }
        if !(0.0..=2.0).contains(&self.cluster_max_distance) {
            return Err(FieldError::new(
                "cluster_max_distance",
                format!("{} is outside 0..=2 (cosine distance)", self.cluster_max_distance),
            ));
        }
        if !(10..=60_000).contains(&self.round_ms) {
            return Err(FieldError::new("round_ms", format!("{} is outside 10..=60000", self.round_ms)));
        }
        if !(1..=100_000_000).contains(&self.horizon_segments) {
            return Err(FieldError::new(
                "horizon_segments",
                format!("{} is outside 1..=100000000", self.horizon_segments),
            ));
        }
        Ok(RefineParams {
            enabled: self.enabled,
            dir: base.join(&self.dir),
            k: self.k,
            alpha,
            hops: self.hops,
            label_restart,
            label_hops: self.label_hops,
            min_label_score: (min_label_score * rules::SCORE_ONE as f64).round() as i64,
            label_top: self.label_top,
            cluster_max_distance: self.cluster_max_distance,
            round: std::time::Duration::from_millis(self.round_ms),
            horizon_segments: self.horizon_segments,
        })
    }
}

impl RefineParams {
    /// What label propagation does at each hop.
    pub fn spread_rule(&self) -> rules::SpreadRule {
        rules::SpreadRule {
            restart: rules::weight(self.label_restart),
            min_score: self.min_label_score,
            top: self.label_top,
        }
    }

    /// Retired segments per space whose last label and cluster [`super::Refinements`] keeps for queries: eight
    /// horizons' worth, at about 60 bytes each against the kilobytes of a segment held (older ones are in the
    /// refinements dataset).
    pub fn retired_kept(&self) -> usize {
        self.horizon_segments.saturating_mul(8)
    }
}

impl Default for RefineParams {
    fn default() -> Self {
        RefineConfig::default().build(std::path::Path::new(".")).expect("the defaults are valid")
    }
}
