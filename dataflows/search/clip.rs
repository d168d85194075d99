//! Query clips as the ingest path sees audio: a WAV clip decoded by the connector's decoder, brought to the model's
//! rate by the segmenter's streaming resampler, cut into windows where the segmenter cuts a standalone clip, and
//! embedded by the ingest path's [`Embedder`].

use std::borrow::Cow;

use chorus_connectors::wav::{self, Audio, DecodeLimits};
use chorus_operators::embed::{self, Embedder};
use chorus_operators::resample::StreamResampler;
use chorus_operators::segment::{WindowSpec, clip_window_starts};

use crate::Error;
use crate::config::Config;

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

/// Embeds every window of a clip's `samples` (at the model's rate, cut where
/// [`chorus_operators::segment::clip_window_starts`] says), labelled `name@offset`. The windows are cut one batch at a
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

/// Calls `each(starts, windows)` for the windows of `samples` in batches of at most `batch`: whole windows are
/// slices of `samples`, and only a window running past the end is copied (zero-padded).
fn for_each_window_batch(
    spec: &WindowSpec,
    samples: &[f32],
    batch: usize,
    mut each: impl FnMut(&[usize], &[&[f32]]) -> Result<(), Error>,
) -> Result<(), Error> {
    let window = spec.window as usize;
    for starts in clip_window_starts(spec, samples.len()).chunks(batch.max(1)) {
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
