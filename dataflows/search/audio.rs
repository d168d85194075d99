//! Archived audio: the WAV file the archive keeps with a segment, found by id (and, when known, by where it lies).

use chorus_connectors::parquet;
use chorus_operators::index::Filter;
use chorus_operators::record::SegmentId;

use crate::Error;
use crate::config::Config;

/// Where to look for a segment: its space if known, and its sensor and start time if known (then the lookup reads
/// one row group).
#[derive(Clone, Debug, Default)]
pub struct Whereabouts {
    /// The space (none: every space).
    pub space: Option<String>,
    /// The sensor.
    pub sensor: Option<String>,
    /// The start time, µs since the epoch.
    pub start_micros: Option<i64>,
}

/// The audio the archive keeps with segment `id`, decoded: its space and the samples at the model's rate.
pub fn segment_audio(
    config: &Config,
    id: SegmentId,
    whereabouts: &Whereabouts,
) -> Result<(String, chorus_connectors::wav::Audio), Error> {
    let (space, wav) = segment_wav(config, id, whereabouts)?;
    let audio = chorus_connectors::wav::decode(&wav, &Default::default()).map_err(|r| {
        Error::Job(format!("{}: the audio of segment {id} is damaged: {}", config.archive.dir.display(), r.reason))
    })?;
    Ok((space, audio))
}

/// The audio the archive keeps with segment `id`, as the WAV file stored: its space and the file.
pub fn segment_wav(config: &Config, id: SegmentId, whereabouts: &Whereabouts) -> Result<(String, Vec<u8>), Error> {
    let root = &config.archive.dir;
    let spaces = match &whereabouts.space {
        Some(space) => vec![space.clone()],
        None => parquet::spaces(root)?,
    };
    let filter = Filter {
        sensors: whereabouts.sensor.iter().cloned().collect(),
        from_micros: whereabouts.start_micros,
        to_micros: whereabouts.start_micros.map(|t| t + 1),
    };
    for space in spaces {
        match parquet::segment_audio(root, &space, id, &filter)? {
            None => continue,
            Some(parquet::SegmentAudio::NotKept) => {
                return Err(Error::NotFound(format!(
                    "segment {id} was archived without its audio (written with archive.audio off, or before the archive kept audio)"
                )));
            }
            Some(parquet::SegmentAudio::Pruned) => {
                return Err(Error::NotFound(format!(
                    "the audio of segment {id} was pruned (chorus prune --audio-older-than-days); its row, embedding \
                     and labels are kept"
                )));
            }
            Some(parquet::SegmentAudio::Wav(wav)) => return Ok((space, wav)),
        }
    }
    Err(Error::NotFound(format!("segment {id} is not in the archive {}", root.display())))
}
