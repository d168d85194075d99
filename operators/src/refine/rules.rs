//! The per-node rules of the refinement, in exact integer arithmetic where sums are taken, so that the dataflow —
//! which adds and retracts contributions in whatever order changes arrive — and the from-scratch [`super::oracle`]
//! reach the same bits.

use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Embedding components are unit-vector components scaled by 2^14 and rounded, held as `i16`: a resolution of 6e-5
/// (a 1536-D unit vector's components are about 0.026, so about 1 in 400), half the bytes of `i32` in every record and
/// arrangement that holds an embedding, and room in the `i32` sums for 131 071 neighbours.
pub const EMBEDDING_SCALE: f64 = (1 << 14) as f64;

/// A unit vector in fixed point (see [`EMBEDDING_SCALE`]), shared: the dataflow's records and arrangements, the
/// refiner and the refinements read by queries hold the same components, so a record or a merge of arrangements
/// copies a pointer, not 3 KB (at 1 536-D). Equal, ordered and serialised by its components.
#[derive(Clone, Debug, Default, Eq)]
pub struct Fixed(Arc<[i16]>);

impl PartialEq for Fixed {
    fn eq(&self, other: &Fixed) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Ord for Fixed {
    /// By components; the same shared components at once (an arrangement compares a value with itself wherever it
    /// was added and retracted).
    fn cmp(&self, other: &Fixed) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) { std::cmp::Ordering::Equal } else { self.0.cmp(&other.0) }
    }
}

impl PartialOrd for Fixed {
    fn partial_cmp(&self, other: &Fixed) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Deref for Fixed {
    type Target = [i16];
    fn deref(&self) -> &[i16] {
        &self.0
    }
}

impl FromIterator<i16> for Fixed {
    fn from_iter<I: IntoIterator<Item = i16>>(components: I) -> Fixed {
        Fixed(components.into_iter().collect())
    }
}

impl From<&[i16]> for Fixed {
    fn from(components: &[i16]) -> Fixed {
        Fixed(components.into())
    }
}

impl Serialize for Fixed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Fixed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fixed, D::Error> {
        Vec::<i16>::deserialize(deserializer).map(|components| Fixed(components.into()))
    }
}

/// A unit vector in fixed point.
pub fn to_fixed(unit: &[f32]) -> Fixed {
    unit.iter().map(|x| fixed_component(f64::from(*x))).collect()
}

/// One component of a unit vector in fixed point; components are within ±1, so within `i16` after scaling.
fn fixed_component(x: f64) -> i16 {
    saturate(x * EMBEDDING_SCALE)
}

/// `x` rounded half away from zero (as [`f64::round`]) and saturated to `i16`, by a truncating conversion, which
/// vectorises where `round` is a call.
fn saturate(x: f64) -> i16 {
    ((x + 0.5f64.copysign(x)) as i32).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

/// A fixed-point vector back in floating point (a unit vector, up to rounding).
pub fn from_fixed(fixed: &[i16]) -> Vec<f32> {
    fixed.iter().map(|x| (f64::from(*x) / EMBEDDING_SCALE) as f32).collect()
}

/// One hop of embedding propagation for a node: `normalize(alpha·own + (1−alpha)·sum/n)`, or `own` when it has no
/// neighbours (`n = 0`) or the mix has no direction.
pub fn combine(own: &[i16], n: i64, sum: &[i32], alpha: f64) -> Fixed {
    if n == 0 {
        return own.into();
    }
    let (weight_own, weight_mean) = (alpha, (1.0 - alpha) / n as f64);
    let sum = |i: usize| sum.get(i).map_or(0.0, |x| f64::from(*x));
    let mixed: Vec<f64> =
        own.iter().enumerate().map(|(i, x)| weight_own * f64::from(*x) + weight_mean * sum(i)).collect();
    // The squares summed in eight lanes, which vectorises (one running sum cannot be reordered).
    let mut lanes = [0.0f64; 8];
    for chunk in mixed.chunks(8) {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += x * x;
        }
    }
    let norm = lanes.iter().sum::<f64>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return own.into();
    }
    let scale = EMBEDDING_SCALE / norm;
    mixed.iter().map(|x| saturate(x * scale)).collect()
}

/// Label scores are fractions of 2^30.
pub const SCORE_ONE: i64 = 1 << 30;

/// Weights (`alpha`) are fractions of 2^16.
const WEIGHT_ONE: i64 = 1 << 16;

/// `alpha` as a fraction of 2^16.
pub fn weight(alpha: f64) -> i64 {
    (alpha.clamp(0.0, 1.0) * WEIGHT_ONE as f64).round() as i64
}

/// Label scores keep this many significant bits (a relative resolution of 1/8): a change smaller than that rounds
/// away, so a perturbation stops spreading within a few hops instead of reaching every node, however small the
/// scores far from the given labels are.
pub const SCORE_BITS: u32 = 3;

/// `score` rounded down to [`SCORE_BITS`] significant bits.
pub fn round_score(score: i64) -> i64 {
    if score <= 0 {
        return 0;
    }
    let shift = (64 - score.leading_zeros()).saturating_sub(SCORE_BITS);
    (score >> shift) << shift
}

/// A label as the dataflow carries it: the 64-bit FNV-1a hash of its text, so that label propagation sorts, compares
/// and moves integers rather than strings. The labelling worker refuses a label whose id another label already has
/// (see [`super::flow::Refiner::label`]).
pub type LabelId = u64;

/// The id of `label`: the same in every worker and process of a job.
pub fn label_id(label: &str) -> LabelId {
    label.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// How label propagation treats a node's scores at each hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpreadRule {
    /// Weight of the node's own given label, as a fraction of 2^16 (see [`weight`]).
    pub restart: i64,
    /// Scores below this (a fraction of [`SCORE_ONE`]) are dropped.
    pub min_score: i64,
    /// Labels kept per node: the highest scores.
    pub top: usize,
}

/// One hop of label propagation for a node with `n` out-edges: each label's score is
/// `restart·seed + (1−restart)·(sum of its neighbours' scores)/n` (`seed` is [`SCORE_ONE`] for the node's own label),
/// rounded down to [`SCORE_BITS`] significant bits; scores below `min_score` are dropped and only the `top` highest
/// kept (ties to the smaller id); a node without out-edges keeps its seed. `sums` holds the neighbours' summed
/// scores per label, sorted by label id, each label once. The result is sorted by label id.
pub fn spread(seed: Option<LabelId>, n: i64, sums: &[(LabelId, i64)], rule: &SpreadRule) -> Vec<(LabelId, i64)> {
    let mut out = Vec::new();
    if n == 0 {
        out.extend(seed.map(|label| (label, SCORE_ONE)));
        return out;
    }
    let score = |label: LabelId, sum: i64| {
        let own = if seed == Some(label) { SCORE_ONE } else { 0 };
        round_score((rule.restart * own + (WEIGHT_ONE - rule.restart) * (sum / n)) / WEIGHT_ONE)
    };
    out.extend(sums.iter().map(|&(label, sum)| (label, score(label, sum))));
    if let Some(label) = seed
        && sums.binary_search_by_key(&label, |(l, _)| *l).is_err()
    {
        out.push((label, score(label, 0)));
    }
    out.retain(|(_, score)| *score >= rule.min_score.max(1));
    if out.len() > rule.top.max(1) {
        out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(rule.top.max(1));
    }
    out.sort_unstable();
    out
}

/// A node's label and its share of the label mass that reached it, from its scores: the highest score wins (ties
/// go to the label that sorts first).
pub fn verdict(scores: &[(String, i64)]) -> Option<(String, f32)> {
    let total: i64 = scores.iter().map(|(_, s)| s).sum();
    let (label, top) = scores.iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
    (total > 0).then(|| (label.clone(), (*top as f64 / total as f64) as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_mixes_own_and_neighbour_directions_and_stays_a_unit_vector() {
        let own = to_fixed(&[1.0, 0.0]);
        let sum: Vec<i32> = to_fixed(&[0.0, 1.0]).iter().map(|x| i32::from(*x) * 2).collect();
        let mixed = from_fixed(&combine(&own, 2, &sum, 0.5));
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((mixed[0] - s).abs() < 1e-4 && (mixed[1] - s).abs() < 1e-4, "{mixed:?}");
        assert_eq!(*to_fixed(&[1.0, -1.0, 0.5]), [16_384, -16_384, 8_192]);
        assert_eq!(combine(&own, 0, &[], 0.5), own);
    }

    #[test]
    fn labels_spread_with_restart_and_small_scores_are_dropped() {
        let (owl, wren) = (label_id("owl"), label_id("wren"));
        let mut sums = vec![(owl, SCORE_ONE), (wren, SCORE_ONE / 1000)];
        sums.sort();
        let rule = SpreadRule { restart: weight(0.2), min_score: SCORE_ONE / 100, top: 3 };
        let got = spread(Some(wren), 2, &sums, &rule);
        // owl: 0.8 × 1/2 = 0.4; wren: 0.2 + 0.8 × 0.0005 = 0.2004; both to 3 significant bits.
        assert_eq!(got.len(), 2);
        let score = |label| got.iter().find(|(l, _)| *l == label).unwrap().1 as f64 / SCORE_ONE as f64;
        assert!((score(owl) - 0.4).abs() < 0.4 / 4.0, "{got:?}");
        assert!((score(wren) - 0.2004).abs() < 0.2004 / 4.0, "{got:?}");
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "sorted by id: {got:?}");
        assert_eq!(round_score(0b1011_0111), 0b1010_0000);
        assert_eq!(round_score(0b101), 0b101);
        assert_eq!(spread(None, 4, &[(owl, 8)], &rule), []);
        // A seed no neighbour carries still scores its restart share.
        assert_eq!(spread(Some(owl), 4, &[], &rule), [(owl, round_score(SCORE_ONE / 5))]);
        // Only the highest scores are kept.
        let top = SpreadRule { top: 1, ..rule };
        assert_eq!(spread(Some(wren), 2, &sums, &top), [(owl, round_score(SCORE_ONE * 2 / 5))]);
        let named: Vec<(String, i64)> =
            got.iter().map(|(l, s)| (if *l == owl { "owl" } else { "wren" }.to_owned(), *s)).collect();
        let (label, share) = verdict(&named).unwrap();
        assert_eq!(label, "owl");
        assert!((share - 0.4 / 0.6004).abs() < 0.1, "{share}");
        assert_eq!(verdict(&[]), None);
        assert_ne!(label_id("owl"), label_id("owl "));
        assert_eq!(label_id(""), 0xcbf2_9ce4_8422_2325);
    }
}
