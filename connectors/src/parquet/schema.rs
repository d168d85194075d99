//! The archive's columns as an Arrow schema, and the int8 encoding of embeddings that the archive and the refinements
//! dataset share.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, DictionaryArray, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The archive's Arrow schema for embeddings of `dim` dimensions.
pub fn schema(dim: usize) -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("space", DataType::Utf8, false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("start_time", utc(), false),
        Field::new("end_time", utc(), false),
        Field::new("coverage", DataType::Float32, false),
        Field::new("sample_rate", DataType::Int32, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("embedding_scale", DataType::Float32, false),
        Field::new("embedding", DataType::FixedSizeBinary(dim as i32), false),
        Field::new("audio", DataType::Binary, true),
    ]))
}

/// A string column as any version of chorus wrote it: plain, or dictionary-encoded (the `space` column of files
/// written before it had the type of the `space=` partition key, which Hive-partitioned readers merge it with).
pub(super) enum Strings<'a> {
    Plain(&'a StringArray),
    Dictionary(&'a DictionaryArray<Int32Type>, &'a StringArray),
}

impl<'a> Strings<'a> {
    /// The column's strings, `None` when it holds no strings.
    pub(super) fn of(array: &'a dyn Array) -> Option<Strings<'a>> {
        match array.data_type() {
            DataType::Utf8 => Some(Strings::Plain(array.as_string::<i32>())),
            DataType::Dictionary(key, value) if **key == DataType::Int32 && **value == DataType::Utf8 => {
                let dictionary = array.as_dictionary::<Int32Type>();
                Some(Strings::Dictionary(dictionary, dictionary.values().as_string::<i32>()))
            }
            _ => None,
        }
    }

    /// The string of row `i`.
    pub(super) fn value(&self, i: usize) -> &'a str {
        match self {
            Strings::Plain(values) => values.value(i),
            Strings::Dictionary(dictionary, values) => values.value(dictionary.keys().value(i) as usize),
        }
    }
}

/// Symmetric int8 quantisation with one scale per vector: `x ≈ q × scale`.
pub fn quantize(v: &[f32]) -> (f32, Vec<u8>) {
    let peak = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if peak > 0.0 { peak / 127.0 } else { 1.0 };
    let q = v.iter().map(|x| ((x / scale).round().clamp(-127.0, 127.0) as i8) as u8).collect();
    (scale, q)
}

/// Inverse of [`quantize`].
pub fn dequantize(scale: f32, q: &[u8]) -> Vec<f32> {
    q.iter().map(|&b| f32::from(b as i8) * scale).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_round_trips_within_half_a_step() {
        let v = vec![0.3, -1.2, 0.0, 0.75];
        let (scale, q) = quantize(&v);
        for (a, b) in v.iter().zip(dequantize(scale, &q)) {
            assert!((a - b).abs() <= scale / 2.0 + 1e-7);
        }
        assert_eq!(dequantize(1.0, &quantize(&[0.0; 3]).1), vec![0.0; 3]);
    }
}
