//! The job's memory budget: what the model and runtime leave of `memory_budget_mb`, split among the workers' read-ahead
//! and archive writers.

use crate::Error;

/// Memory allowed per payload byte in flight: the message as librdkafka and the dataflow hold it, decoded to f32,
/// buffered by the segmenter and copied into windows cost about 5.7 bytes (measured under a burst); 8 leaves a margin.
const MEMORY_PER_PAYLOAD_BYTE: usize = 8;

/// Memory per byte of audio the archive writer holds: the samples, the WAV files built from them, the Arrow array
/// and Parquet's pages while a file is written.
const MEMORY_PER_ARCHIVED_AUDIO_BYTE: usize = 4;

/// What each worker may hold, from the memory budget.
pub struct Budget {
    /// Payload bytes read ahead of the embedding stage.
    pub read_ahead: usize,
    /// Audio bytes in the archive writer's buffer.
    pub archive_audio: usize,
}

/// Splits what the model and the runtime leave of the memory budget (measured now that they are loaded) among
/// `workers` workers: when the archive keeps audio, a quarter goes to the archive writers' buffers, the rest to the
/// audio read ahead of the embedding stage.
pub fn split_budget(budget: usize, workers: usize, archive_audio: bool) -> Result<Budget, Error> {
    let resident = resident_bytes().unwrap_or(0);
    let spare = budget.saturating_sub(resident);
    let for_archive = if archive_audio { spare / 4 } else { 0 };
    let per_worker = (spare - for_archive) / MEMORY_PER_PAYLOAD_BYTE / workers;
    if per_worker < 1 << 20 {
        return Err(Error::Job(format!(
            "memory_budget_mb = {} leaves too little for audio in flight: the model and runtime already use {} MiB; \
             raise memory_budget_mb",
            budget >> 20,
            resident >> 20
        )));
    }
    tracing::info!(
        budget_mib = budget >> 20,
        resident_mib = resident >> 20,
        read_ahead_mib_per_worker = per_worker >> 20,
        "Memory budget."
    );
    Ok(Budget { read_ahead: per_worker, archive_audio: for_archive / MEMORY_PER_ARCHIVED_AUDIO_BYTE / workers })
}

/// This process's resident memory, from /proc.
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<usize>().ok().map(|kb| kb << 10)
}
