//! Why a record became a dead letter: the closed set of causes. Each has a short name, carried by the dead letter's
//! `chorus.cause` header and by the `cause` label of `chorus_errors_total`, so the label's values are bounded by this
//! list. The README lists the same names (a test checks both ways).

use serde::{Deserialize, Serialize};

/// Why a record was rejected; [`Cause::as_str`] is its name on the wire and in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// Occurs when a chunk message has no key (the key is the sensor id).
    NoKey,
    /// Occurs when a chunk message's key is not UTF-8, is empty or longer than 256 bytes, or holds a control
    /// character.
    BadKey,
    /// Occurs when a chunk's `space` header is not UTF-8 or not a valid space name.
    BadSpace,
    /// Occurs when a chunk's `captured_at` header is not UTF-8 or not an RFC 3339 time within 1970..2200, or lies
    /// further after the job's clock or the message's Kafka timestamp than `kafka.max_clock_skew_seconds`.
    BadCapturedAt,
    /// Occurs when a chunk has no `captured_at` header and no usable Kafka timestamp.
    NoTime,
    /// Occurs when a chunk's `priority` header is not `critical`, `high`, `normal` or `low`.
    BadPriority,
    /// Occurs when a chunk message is larger than `kafka.max_message_bytes`.
    Oversized,
    /// Occurs when a payload is empty.
    Empty,
    /// Occurs when a payload is not a WAV file, or is a damaged one.
    NotWav,
    /// Occurs when a WAV file's samples are neither PCM of 8, 16, 24 or 32 bits nor float32.
    UnsupportedFormat,
    /// Occurs when a WAV file ends before the header or the samples it declares.
    Truncated,
    /// Occurs when a WAV file's sample rate lies outside the accepted range.
    SampleRate,
    /// Occurs when a WAV file has no channel, or more than accepted.
    Channels,
    /// Occurs when a WAV file holds no samples.
    NoAudio,
    /// Occurs when a WAV file holds more seconds of audio than accepted.
    TooLong,
    /// Occurs when a float WAV file holds a NaN or an infinite sample, or an embeddings message a NaN or an infinite
    /// value.
    NonFinite,
    /// Occurs when a chunk starts before the end of the audio already received for its sensor: the overlap is
    /// dropped, the rest of the chunk kept.
    Overlap,
    /// Occurs when a chunk lies before the audio already received for its sensor and outside every stretch received.
    OutOfOrder,
    /// Occurs when a chunk's audio cannot be resampled to the model's rate.
    Resample,
    /// Occurs when a low or normal window is dropped under overload (`scheduling.shed`).
    Shed,
    /// Occurs when the model fails on a window.
    Model,
    /// Occurs when the model returns a NaN or an infinity for a window.
    ModelOutput,
    /// Occurs when a segment's embedding cannot be inserted into its space's index.
    Index,
    /// Occurs when an embeddings message's `model`, `dim` or `window_seconds` header disagrees with the job's model
    /// (or it has no `dim` header).
    WrongModel,
    /// Occurs when an embeddings message's payload is not a whole number of `dim` little-endian f32 vectors, holds a
    /// vector of zeros or too many vectors, or one of its headers cannot be read.
    BadEmbedding,
    /// Occurs when a label message's key is missing or is not a segment id.
    LabelKey,
    /// Occurs when a label is not UTF-8, is blank or longer than allowed, holds a control character, or cannot be
    /// given (its 64-bit id is taken by another label).
    LabelValue,
}

impl Cause {
    /// Every cause, in the order the README lists them.
    pub const ALL: [Cause; 27] = [
        Cause::NoKey,
        Cause::BadKey,
        Cause::BadSpace,
        Cause::BadCapturedAt,
        Cause::NoTime,
        Cause::BadPriority,
        Cause::Oversized,
        Cause::Empty,
        Cause::NotWav,
        Cause::UnsupportedFormat,
        Cause::Truncated,
        Cause::SampleRate,
        Cause::Channels,
        Cause::NoAudio,
        Cause::TooLong,
        Cause::NonFinite,
        Cause::Overlap,
        Cause::OutOfOrder,
        Cause::Resample,
        Cause::Shed,
        Cause::Model,
        Cause::ModelOutput,
        Cause::Index,
        Cause::WrongModel,
        Cause::BadEmbedding,
        Cause::LabelKey,
        Cause::LabelValue,
    ];

    /// The cause's name: the value of the `chorus.cause` header and of the `cause` metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::NoKey => "no_key",
            Cause::BadKey => "bad_key",
            Cause::BadSpace => "bad_space",
            Cause::BadCapturedAt => "bad_captured_at",
            Cause::NoTime => "no_time",
            Cause::BadPriority => "bad_priority",
            Cause::Oversized => "oversized",
            Cause::Empty => "empty",
            Cause::NotWav => "not_wav",
            Cause::UnsupportedFormat => "unsupported_format",
            Cause::Truncated => "truncated",
            Cause::SampleRate => "sample_rate",
            Cause::Channels => "channels",
            Cause::NoAudio => "no_audio",
            Cause::TooLong => "too_long",
            Cause::NonFinite => "non_finite",
            Cause::Overlap => "overlap",
            Cause::OutOfOrder => "out_of_order",
            Cause::Resample => "resample",
            Cause::Shed => "shed",
            Cause::Model => "model",
            Cause::ModelOutput => "model_output",
            Cause::Index => "index",
            Cause::WrongModel => "wrong_model",
            Cause::BadEmbedding => "bad_embedding",
            Cause::LabelKey => "label_key",
            Cause::LabelValue => "label_value",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cause equals its name, as a consumer of the dead-letter topic sees it.
impl PartialEq<&str> for Cause {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_cause_has_one_name_and_serde_uses_it() {
        let names: BTreeSet<&str> = Cause::ALL.map(Cause::as_str).into_iter().collect();
        assert_eq!(names.len(), Cause::ALL.len(), "two causes share a name");
        for cause in Cause::ALL {
            let json = format!("\"{}\"", cause.as_str());
            assert_eq!(serde_json::to_string(&cause).unwrap(), json);
            assert_eq!(serde_json::from_str::<Cause>(&json).unwrap(), cause);
        }
    }

    /// The names the README's dead-letter section lists after "Causes:", up to the end of that sentence: each item of
    /// the comma-separated list starts with its name in backticks, which a description in parentheses may follow.
    fn readme_causes(readme: &str) -> Result<Vec<String>, String> {
        let section = readme.split_once("### Dead letters").ok_or("README has no \"### Dead letters\" section")?.1;
        let list = section.split_once("Causes:").ok_or("the dead-letter section has no \"Causes:\" sentence")?.1;
        let (mut items, mut item) = (Vec::new(), String::new());
        let (mut quoted, mut depth) = (false, 0usize);
        let mut chars = list.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '`' => quoted = !quoted,
                '(' if !quoted => depth += 1,
                ')' if !quoted => depth = depth.saturating_sub(1),
                ',' if !quoted && depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                '.' if !quoted && depth == 0 && chars.peek().is_none_or(|next| next.is_whitespace()) => break,
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        items
            .iter()
            .map(|item| {
                let item = item.trim();
                let item = item.strip_prefix("and ").unwrap_or(item);
                item.strip_prefix('`')
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(name, _)| name.to_owned())
                    .ok_or_else(|| format!("the list item {item:?} does not start with a cause in backticks"))
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_cause_and_no_other() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let listed = readme_causes(&readme).unwrap();
        let documented: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        assert_eq!(documented.len(), listed.len(), "the README lists a cause twice: {listed:?}");
        let known: BTreeSet<&str> = Cause::ALL.map(Cause::as_str).into_iter().collect();
        let undocumented: Vec<&str> = known.difference(&documented).copied().collect();
        let unknown: Vec<&str> = documented.difference(&known).copied().collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "causes missing from the README: {undocumented:?}; README causes that do not exist: {unknown:?}"
        );
    }

    #[test]
    fn the_readme_list_is_read_item_by_item() {
        let readme = "### Dead letters\nCauses: `a` (one, or `x.y`), `b_c`,\n`d` (1..2). `e`, `f`.";
        assert_eq!(readme_causes(readme).unwrap(), ["a", "b_c", "d"]);
        assert!(readme_causes("### Dead letters\nCauses: `a`, b.").unwrap_err().contains("\"b\""));
    }
}
