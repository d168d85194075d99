//! Vectors as each memory tier holds them, and the distances over them.
//!
//! Vectors are L2-normalised before they get here, so a distance is `1 − dot`. Dot products run in SimSIMD's kernels,
//! which pick AVX2/F16C/AVX-512/NEON at run time. The int8 tier is scalar quantization calibrated per dimension on
//! the shard's own data: dimension `j` is stored as `round(x_j / s_j)` with `s_j = max |x_j| / 127`. A query is
//! folded into the same codes (`q_j · s_j`, then scaled to ±127), so a distance is one int8 dot product.

use serde::{Deserialize, Serialize};
use simsimd::{SpatialSimilarity, f16};

/// Where a sealed shard's vectors live, from the fastest and largest to the smallest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Full precision in memory.
    F32,
    /// Half precision in memory.
    F16,
    /// One byte per dimension in memory.
    Int8,
    /// The graph in memory, the vectors on disk: each distance reads its row from the shard's full-precision file.
    Disk,
    /// Nothing per row in memory: each search reads the graph and rows from disk, then each distance its row.
    Archive,
}

impl Tier {
    /// Every tier, warmest first.
    pub const ALL: [Tier; 5] = [Tier::F32, Tier::F16, Tier::Int8, Tier::Disk, Tier::Archive];

    /// Bytes that `rows` vectors of `dim` take in memory in this tier.
    pub fn vector_bytes(self, rows: usize, dim: usize) -> usize {
        match self {
            Tier::F32 => rows * (dim * 4 + dim + 4),
            Tier::F16 => rows * dim * 2,
            Tier::Int8 => rows * dim + dim * 4,
            Tier::Disk | Tier::Archive => 0,
        }
    }

    /// The next tier down, if any.
    pub fn colder(self) -> Option<Tier> {
        match self {
            Tier::F32 => Some(Tier::F16),
            Tier::F16 => Some(Tier::Int8),
            Tier::Int8 => Some(Tier::Disk),
            Tier::Disk => Some(Tier::Archive),
            Tier::Archive => None,
        }
    }

    /// The next tier up, if any.
    pub fn warmer(self) -> Option<Tier> {
        match self {
            Tier::F32 => None,
            Tier::F16 => Some(Tier::F32),
            Tier::Int8 => Some(Tier::F16),
            Tier::Disk => Some(Tier::Int8),
            Tier::Archive => Some(Tier::Disk),
        }
    }

    /// Its name in configs, metrics and reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::F32 => "f32",
            Tier::F16 => "f16",
            Tier::Int8 => "int8",
            Tier::Disk => "disk",
            Tier::Archive => "archive",
        }
    }
}

/// A shard's vectors, row after row, in one tier's representation.
pub enum Vectors {
    /// Full precision, with each row's int8 codes ([`quantize_row`]): a graph walk compares the codes, and what it
    /// finds is measured again at full precision ([`Vectors::exact`]).
    F32 {
        /// The rows.
        values: Vec<f32>,
        /// Each row's codes, row after row.
        codes: Vec<i8>,
        /// Per row, the value of one step of its codes.
        steps: Vec<f32>,
    },
    /// Half precision.
    F16(Vec<f16>),
    /// Per-dimension scalar quantization.
    Int8 {
        /// `round(x_j / scales[j])`, row after row.
        codes: Vec<i8>,
        /// One scale per dimension.
        scales: Vec<f32>,
    },
    /// None held: read from disk when compared (the shard keeps its graph).
    Disk,
    /// None held, nor the graph.
    Archive,
}

/// A query prepared for one representation.
pub enum Query {
    /// As given, and as codes.
    F32 {
        /// The query.
        values: Vec<f32>,
        /// Its codes.
        codes: Vec<i8>,
        /// The value of one step of its codes.
        step: f32,
    },
    /// Rounded to half precision.
    F16(Vec<f16>),
    /// Folded into the shard's int8 codes: `dot ≈ factor · Σ codes·stored`.
    Int8 {
        /// The query's codes.
        codes: Vec<i8>,
        /// Scale of the integer dot product.
        factor: f32,
    },
    /// Nothing to compare with.
    Archive,
}

impl Vectors {
    /// `data` (rows of `dim`) in `tier`'s representation.
    #[cfg(test)]
    pub fn from_f32(data: Vec<f32>, dim: usize, tier: Tier) -> Vectors {
        Vectors::from_blocks(data.len(), dim, tier, |block| {
            block(&data);
            Ok(())
        })
        .expect("vectors in memory cannot fail to be read")
    }

    /// `values` values (rows of `dim`) in `tier`'s representation, built as they stream by: `pass` hands every value
    /// to its sink, in blocks of whole rows, each time it is called (once, or twice for int8, whose scales come from
    /// every row). Only the representation is held, never the full-precision rows.
    pub fn from_blocks(
        values: usize,
        dim: usize,
        tier: Tier,
        mut pass: impl FnMut(&mut dyn FnMut(&[f32])) -> std::io::Result<()>,
    ) -> std::io::Result<Vectors> {
        Ok(match tier {
            Tier::F32 => {
                let (mut data, mut codes) = (Vec::with_capacity(values), Vec::with_capacity(values));
                let mut steps = Vec::with_capacity(values / dim.max(1));
                pass(&mut |block| {
                    data.extend_from_slice(block);
                    for row in block.chunks_exact(dim) {
                        let (row_codes, step) = quantize_row(row);
                        codes.extend(row_codes);
                        steps.push(step);
                    }
                })?;
                Vectors::F32 { values: data, codes, steps }
            }
            Tier::F16 => {
                let mut data = Vec::with_capacity(values);
                pass(&mut |block| data.extend(block.iter().map(|x| f16::from_f32(*x))))?;
                Vectors::F16(data)
            }
            Tier::Int8 => {
                let mut scales = vec![0.0f32; dim];
                pass(&mut |block| {
                    for row in block.chunks_exact(dim) {
                        for (scale, x) in scales.iter_mut().zip(row) {
                            *scale = scale.max(x.abs());
                        }
                    }
                })?;
                for scale in &mut scales {
                    *scale = if *scale > 0.0 { *scale / 127.0 } else { 1.0 };
                }
                let mut codes = Vec::with_capacity(values);
                pass(&mut |block| {
                    let rows = block.chunks_exact(dim);
                    codes.extend(rows.flat_map(|row| row.iter().zip(&scales).map(|(x, s)| quantize(x / s))));
                })?;
                Vectors::Int8 { codes, scales }
            }
            Tier::Disk => Vectors::Disk,
            Tier::Archive => Vectors::Archive,
        })
    }

    /// The tier this representation belongs to.
    pub fn tier(&self) -> Tier {
        match self {
            Vectors::F32 { .. } => Tier::F32,
            Vectors::F16(_) => Tier::F16,
            Vectors::Int8 { .. } => Tier::Int8,
            Vectors::Disk => Tier::Disk,
            Vectors::Archive => Tier::Archive,
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        match self {
            Vectors::F32 { values, codes, steps } => values.len() * 4 + codes.len() + steps.len() * 4,
            Vectors::F16(v) => v.len() * 2,
            Vectors::Int8 { codes, scales } => codes.len() + scales.len() * 4,
            Vectors::Disk | Vectors::Archive => 0,
        }
    }

    /// `query` (normalised, `dim` long) ready for [`Vectors::distance`].
    pub fn prepare(&self, query: &[f32]) -> Query {
        match self {
            Vectors::F32 { .. } => {
                let (codes, step) = quantize_row(query);
                Query::F32 { values: query.to_vec(), codes, step }
            }
            Vectors::F16(_) => Query::F16(query.iter().map(|x| f16::from_f32(*x)).collect()),
            Vectors::Int8 { scales, .. } => {
                let folded: Vec<f32> = query.iter().zip(scales).map(|(q, s)| q * s).collect();
                let peak = folded.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let factor = if peak > 0.0 { peak / 127.0 } else { 1.0 };
                Query::Int8 { codes: folded.iter().map(|x| quantize(x / factor)).collect(), factor }
            }
            Vectors::Disk | Vectors::Archive => Query::Archive,
        }
    }

    /// Cosine distance between a prepared query and row `row` as a walk compares them (the f32 tier's codes);
    /// `f32::MAX` when the tier holds no vectors.
    pub fn distance(&self, query: &Query, row: usize, dim: usize) -> f32 {
        let span = row * dim..(row + 1) * dim;
        let dot = match (self, query) {
            (Vectors::F32 { codes, steps, .. }, Query::F32 { codes: q, step, .. }) => {
                i8::dot(q, &codes[span]).map(|d| d * f64::from(*step) * f64::from(steps[row]))
            }
            (Vectors::F16(v), Query::F16(q)) => f16::dot(q, &v[span]),
            (Vectors::Int8 { codes, .. }, Query::Int8 { codes: q, factor }) => {
                i8::dot(q, &codes[span]).map(|d| d * f64::from(*factor))
            }
            _ => None,
        };
        dot.map_or(f32::MAX, |d| 1.0 - d as f32)
    }
}

impl Vectors {
    /// The full-precision distance between a prepared query and row `row`, in the f32 tier (`None` in others).
    pub fn exact(&self, query: &Query, row: usize, dim: usize) -> Option<f32> {
        match (self, query) {
            (Vectors::F32 { values, .. }, Query::F32 { values: q, .. }) => {
                Some(distance(q, &values[row * dim..(row + 1) * dim]))
            }
            _ => None,
        }
    }

    /// Starts loading what [`Vectors::distance`] will read of row `row`.
    pub fn prefetch(&self, row: usize, dim: usize) {
        match self {
            Vectors::F32 { codes, .. } => prefetch(&codes[row * dim..(row + 1) * dim]),
            Vectors::F16(v) => prefetch(&v[row * dim..(row + 1) * dim]),
            Vectors::Int8 { codes, .. } => prefetch(&codes[row * dim..(row + 1) * dim]),
            Vectors::Disk | Vectors::Archive => {}
        }
    }
}

/// `row`'s int8 codes, scaled by its largest component, and the value of one step: what the f32 tier and chorus's
/// builder compare while walking a graph.
pub fn quantize_row(row: &[f32]) -> (Vec<i8>, f32) {
    let peak = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let step = if peak > 0.0 { peak / 127.0 } else { 1.0 };
    (row.iter().map(|x| quantize(x / step)).collect(), step)
}

/// Cache lines [`prefetch`] asks for.
const PREFETCH_LINES: usize = 8;

/// Asks the CPU to start loading the first cache lines of `values`, which a distance will read next: a graph walk
/// jumps between rows, and a row's first lines would otherwise each be a wait.
#[allow(unsafe_code)]
pub fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(values);
        let start = values.as_ptr().cast::<i8>();
        for line in 0..bytes.div_ceil(64).min(PREFETCH_LINES) {
            // SAFETY: a prefetch is a hint: it reads nothing the program sees and cannot fault, and the address
            // stays inside `values`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.add(line * 64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Cosine distance between two normalised full-precision vectors.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    f32::dot(a, b).map_or(f32::MAX, |d| 1.0 - d as f32)
}

fn quantize(x: f32) -> i8 {
    x.round().clamp(-127.0, 127.0) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        super::super::unit(&super::super::tests::vector(seed, dim), dim).unwrap()
    }

    #[test]
    fn every_tier_approximates_the_full_precision_distance() {
        let dim = 256;
        let data: Vec<f32> = (0..50).flat_map(|i| unit(i, dim)).collect();
        let query = unit(999, dim);
        let exact: Vec<f32> = data.chunks_exact(dim).map(|row| distance(&query, row)).collect();
        for (tier, tolerance) in [(Tier::F32, 2e-2), (Tier::F16, 2e-3), (Tier::Int8, 2e-2)] {
            let vectors = Vectors::from_f32(data.clone(), dim, tier);
            assert_eq!(vectors.tier(), tier);
            let prepared = vectors.prepare(&query);
            for (row, want) in exact.iter().enumerate() {
                let got = vectors.distance(&prepared, row, dim);
                assert!((got - want).abs() < tolerance, "{tier:?} row {row}: {got} vs {want}");
                // The f32 tier walks its codes, and measures what it finds exactly.
                let exact = vectors.exact(&prepared, row, dim);
                assert_eq!(exact.is_some(), tier == Tier::F32);
                assert!(exact.is_none_or(|d| (d - want).abs() < 1e-6), "{tier:?} row {row}: {exact:?} vs {want}");
            }
        }
        let bytes = |tier| Vectors::from_f32(data.clone(), dim, tier).bytes();
        assert_eq!((bytes(Tier::F32), bytes(Tier::F16)), (50 * (dim * 5 + 4), 50 * dim * 2));
        assert_eq!(bytes(Tier::Int8), 50 * dim + dim * 4);
        for tier in Tier::ALL {
            assert_eq!(tier.vector_bytes(50, dim), bytes(tier), "{tier:?}");
        }
        assert_eq!(Vectors::from_f32(data, dim, Tier::Archive).distance(&Query::Archive, 0, dim), f32::MAX);
    }

    #[test]
    fn a_dimension_that_never_varies_quantizes_to_zero_without_dividing_by_zero() {
        let dim = 4;
        let data = vec![0.0, 0.6, 0.8, 0.0, 0.0, 0.8, 0.6, 0.0];
        let vectors = Vectors::from_f32(data, dim, Tier::Int8);
        let prepared = vectors.prepare(&[0.0, 0.6, 0.8, 0.0]);
        assert!(vectors.distance(&prepared, 0, dim) < 0.02);
        assert!((vectors.distance(&prepared, 1, dim) - 0.04).abs() < 0.02);
    }
}
