//! The `chorus` command line: run the ingest job, produce audio to Kafka, query the archive.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chorus::config::Config;
use chorus::job::{self, Cluster, RunOptions};
use chorus::produce::{self, EmbeddingsOptions, ProduceOptions};
use chorus::query::{self, QueryOptions, Target};
use chorus_connectors::stop::Stop;
use chorus_operators::record::{Priority, SegmentId};
use clap::{ArgAction, Args, Parser, Subcommand};

/// mimalloc returns what a long run frees: with the system allocator, audio buffers that grow and are freed by the
/// thousand left a third more resident memory than the heap held (README, "A season, time-compressed"). Built
/// without the `mimalloc` feature, the job uses the system's allocator (for heaptrack, say).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long (ms) memory freed stays resident before mimalloc gives it back to the system, unless `MIMALLOC_PURGE_DELAY`
/// says otherwise. mimalloc 3's own delay is 1 000 ms: the job frees tens of MiB a second (windows cut, model batches,
/// Parquet pages), so its resident memory rose by 60–90 MiB and fell back every second, above what it held, and the
/// budget's peaks were those of freed memory. 10 ms cost 8 % of the soak's windows/s in page faults; 100 ms nothing
/// the soak can tell (README, "The allocator's second").
#[cfg(feature = "mimalloc")]
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (include/mimalloc.h); libmimalloc-sys names no constant.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the allocator's purge delay to [`PURGE_DELAY_MS`], unless the environment set it.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && std::env::var_os("MIMALLOC_RESET_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, a plain store into its option table; any value is valid for it.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
}

#[cfg(not(feature = "mimalloc"))]
fn tune_allocator() {}

/// Keeps the process's memory in 4 KiB pages, unless `MIMALLOC_ALLOW_THP` is set. mimalloc asks for transparent huge
/// pages on its arenas (`madvise`), and the kernel's khugepaged gathers any 2 MiB range with a page still in use into
/// a whole huge page: what the allocator had given back came back resident, and resident memory crept up with the
/// uptime with nothing more on the heap (README, "Huge pages"). Where the kernel refuses, the job runs as it is.
fn keep_small_pages() -> std::io::Result<()> {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return Ok(());
    }
    rustix::thread::disable_transparent_huge_pages(true).map_err(std::io::Error::from)
}

/// chorus: a streaming pipeline for bioacoustics — Kafka audio chunks in, a searchable archive of calls out.
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Start here:\n  scripts/demo.sh          # installs what it needs, runs the job on the sample audio\n  chorus run --help        # the ingest job\n\nLogs go to stderr; RUST_LOG (e.g. RUST_LOG=chorus=debug) overrides -v/-q."
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    /// Less output: warnings and errors only, no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// Job configuration (TOML); relative paths inside it are relative to the file.
    #[arg(short, long, env = "CHORUS_CONFIG", default_value = "config/balanced.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingest job: Kafka audio chunks → windows → embeddings → index, archive, segments topic; behind the
    /// index, the graph refinement (refined embeddings, labels spread from the labels topic, clusters).
    #[command(
        after_help = "Examples:\n  chorus run --config config/balanced.toml\n  chorus run -w 2 --until-idle 5    # two workers; stop once the topic is drained and quiet for 5 s\n  chorus run --until-idle 5 --flush-tails   # a backfill of finished recordings: their last windows too\n  chorus run --processes 2 --process 0 --hostfile hosts.txt   # and --process 1 on the second machine\n\nSIGTERM or Ctrl-C stops reading, drains what is in flight, flushes the sinks and commits (a second one\nexits at once). Offsets are committed only after the archive, the segments topic and the dead-letter topic\nhold what was derived from them; a restart resumes there, and segment ids are deterministic, so nothing is\nlost or doubled.\n\nWhile it runs, label segments and watch the labels spread:\n  curl -s localhost:9464/v1/labels -H 'content-type: application/json' \\\n       -d '{\"labels\": [{\"segment_id\": \"3f9a0c1d2b4e5f60\", \"label\": \"Turdus merula\"}]}'\n  curl -s localhost:9464/v1/segments/<another id>      # label, label_score, cluster\n([refine] in the config; refinements also go to refine.dir as Parquet and to the segments topic.)"
    )]
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Worker threads (default: `workers` in the config).
        #[arg(short, long)]
        workers: Option<usize>,
        /// Stop once every partition is drained and no message arrived for this many seconds.
        #[arg(long, value_name = "SECS")]
        until_idle: Option<f64>,
        /// Processes in the timely cluster running this job (each with the same config and --workers).
        #[arg(long, default_value_t = 1, value_name = "N")]
        processes: usize,
        /// This process's index in the cluster, from 0.
        #[arg(long, default_value_t = 0, value_name = "I")]
        process: usize,
        /// File of `host:port` lines, one per process in process order (default: 127.0.0.1:2101, :2102, ...).
        #[arg(long, value_name = "FILE")]
        hostfile: Option<PathBuf>,
        /// The audio is finished recordings (a backfill): when the job stops, cut every sensor's last window,
        /// padded with silence, instead of keeping it for audio that will not come. On a live network,
        /// `windows.flush_tail_seconds` does this for each sensor that has been quiet that long.
        #[arg(long)]
        flush_tails: bool,
    },
    /// Produce WAV files to the audio topic as chunks with `captured_at`, `space` and `priority` headers, or, with
    /// --embeddings, files of embeddings made elsewhere as embeddings messages.
    #[command(
        after_help = "Examples:\n  chorus produce --sensor pole-7 --start 2026-05-01T05:00:00Z dawn.wav\n  chorus produce --space wetlands --chunk-seconds 5 recordings/*.WAV   # start times from names like 20260501_050000\n  chorus produce --embeddings --sensor pole-7 --start 2026-05-01T05:00:00Z dawn.npy\n\nWithout --start, each file's start comes from a YYYYMMDD_HHMMSS stamp in its name (UTC), else from its\nmodification time. With --start, the files are taken as one continuous recording.\n\nWith --embeddings, the files are .npy arrays of shape [n, dim] (float32 or float64) or Parquet tables with an\n`embedding` column (a list of float32 or float64) and optional `sensor` and `start_time` columns. Vector i starts\ni hops after the file's start (a row's own start_time wins); dim must be the model's (model.dim), and each\nmessage says the model's name, which the job checks."
    )]
    Produce {
        #[command(flatten)]
        config: ConfigArg,
        /// Sensor id, the message key (default: each file's name without extension).
        #[arg(long)]
        sensor: Option<String>,
        /// Space (tenant) header (default: none, which the job reads as `default`).
        #[arg(long)]
        space: Option<String>,
        /// Seconds of audio per message (default: 10, or the most that fits kafka.max_message_bytes).
        #[arg(long, value_name = "SECS", conflicts_with = "embeddings")]
        chunk_seconds: Option<f64>,
        /// The files are embeddings (.npy or .parquet), not audio: sent as embeddings messages of the model.
        #[arg(long)]
        embeddings: bool,
        /// With --embeddings: seconds between consecutive vectors' starts (default: windows.hop_seconds).
        #[arg(long, value_name = "SECS", requires = "embeddings")]
        hop_seconds: Option<f64>,
        /// With --embeddings: vectors per message at most (default: 64, or the most that fits
        /// kafka.max_message_bytes).
        #[arg(long, value_name = "N", requires = "embeddings")]
        vectors_per_message: Option<usize>,
        /// RFC 3339 capture time of the first sample, e.g. 2026-05-01T05:00:00Z.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        start: Option<i64>,
        /// Priority header: critical, high, normal or low.
        #[arg(long, default_value = "normal", value_parser = parse_priority)]
        priority: Priority,
        /// WAV files (PCM 8/16/24/32-bit or float32, any rate, any channel count); with --embeddings, .npy or
        /// .parquet files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Find the archived segments that sound most like a clip or like an archived segment.
    #[command(
        after_help = "Examples:\n  chorus query --audio call.wav -k 5\n  chorus query --segment 3f9a0c1d2b4e5f60 --json\n\nDistances are cosine distances (0 = same direction). A clip longer than one model window is searched\nwindow by window. A segment is left out of its own results."
    )]
    Query {
        #[command(flatten)]
        config: ConfigArg,
        /// A WAV clip to search with.
        #[arg(long, value_name = "FILE", conflicts_with = "segment", required_unless_present = "segment")]
        audio: Option<PathBuf>,
        /// An archived segment id (16 hex digits) to search with.
        #[arg(long, value_name = "ID", value_parser = parse_segment)]
        segment: Option<SegmentId>,
        /// Neighbours to show.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Search beam width (default: index.ef_search from the config).
        #[arg(long)]
        ef: Option<usize>,
        /// Search this space only (default: every space).
        #[arg(long)]
        space: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write each neighbour's spectrogram to DIR as <rank>-<segment id>.png.
        #[arg(long, value_name = "DIR")]
        spectrograms: Option<PathBuf>,
    },
    /// List archived segments by space, sensor, time and label, reading only the partitions and row groups the
    /// filter needs.
    #[command(
        after_help = "Examples:\n  chorus archive --sensor pole-7 --from 2026-05-01T05:00:00Z --to 2026-05-01T06:00:00Z\n  chorus archive --space wetlands --label 'Turdus merula' --format csv > blackbirds.csv\n  chorus archive --from 2026-05-01 --format json | jq length\n\n--from and --to take an RFC 3339 time or a date (midnight UTC); a segment matches when its start lies in\n[from, to). Labels and clusters are the refinement's latest (refine.dir). Day partitions outside the time\nrange are never opened, and row groups whose sensor or start_time statistics rule the filter out are never\ndecoded; the summary on stderr says how many were skipped. The same query in DuckDB is in the README."
    )]
    Archive {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this space (default: every space).
        #[arg(long)]
        space: Option<String>,
        /// Only this sensor (repeat for several).
        #[arg(long = "sensor", value_name = "SENSOR")]
        sensors: Vec<String>,
        /// Only segments starting at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "TIME", value_parser = parse_bound)]
        from: Option<i64>,
        /// Only segments starting before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "TIME", value_parser = parse_bound)]
        to: Option<i64>,
        /// Only segments the refinement labels so.
        #[arg(long)]
        label: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: chorus::archive::Format,
    },
    /// Delete the archive's day partitions older than N days, or only their audio (a dry run unless --apply is given).
    #[command(
        after_help = "Examples:\n  chorus prune --older-than-days 365            # lists what would go, deletes nothing\n  chorus prune --older-than-days 365 --apply    # deletes it\n  chorus prune --audio-older-than-days 30 --keep-labelled          # lists the audio that would go\n  chorus prune --audio-older-than-days 30 --keep-labelled --apply  # removes it, keeps every row\n\nA day partition goes when its whole day (UTC) lies more than N days before today, in the archive and in\nthe refinements dataset. The index snapshots of the spaces that lose segments and the refinement's saved kNN\ngraph are removed too, so that the next job start rebuilds them from what the archive still holds (about\n3 s per 100 000 segments on 2 cores). --apply refuses to run while a job runs on the archive; restart a\nrunning chorus serve afterwards (it keeps the index it opened).\n\n--audio-older-than-days removes only the audio of those days' segments (nearly all of the archive's bytes): each\nday partition is rewritten as one file, swapped in whole as compaction does, keeping every row, embedding,\nlineage and label. --keep-labelled keeps the audio of segments that carry a label given on the labels topic\n(read to its end first, so the broker must answer). The search page and chorus spectrogram then say that a\nsegment's audio was pruned."
    )]
    Prune {
        #[command(flatten)]
        config: ConfigArg,
        /// Delete partitions whose day ended more than this many days ago.
        #[arg(long, value_name = "DAYS", required_unless_present = "audio_older_than_days")]
        older_than_days: Option<u32>,
        /// Remove the audio of the segments of days that ended more than this many days ago; keep their rows.
        #[arg(long, value_name = "DAYS", conflicts_with = "older_than_days")]
        audio_older_than_days: Option<u32>,
        /// With --audio-older-than-days: keep the audio of segments that carry a given label.
        #[arg(long, requires = "audio_older_than_days")]
        keep_labelled: bool,
        /// Delete; without it, only list what would be deleted.
        #[arg(long)]
        apply: bool,
    },
    /// Merge the small files of the archive's and the refinements dataset's day partitions (for an archive no job
    /// runs on; a running job does it in the background, see [archive.compaction]).
    #[command(
        after_help = "Examples:\n  chorus compact                       # every day before today becomes one file, sorted by sensor and time\n  chorus compact --config config/memory-constrained.toml\n\nEach merge is published by swapping the day partition's directory for its compacted copy in one step\n(renameat2 RENAME_EXCHANGE): DuckDB, pyarrow, polars and chorus itself see every row exactly once at every\nmoment, and a crash at any point leaves either the old files or the new ones. A query that listed a partition\njust before a swap and opens its files after may fail with \"file not found\" in DuckDB or pyarrow; run it again\n(chorus's own readers keep reading the directory they listed). Files of earlier builds are rewritten in\ntoday's layout. Refuses to run while a job runs on the archive."
    )]
    Compact {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Draw the log-mel spectrogram of an archived segment or of a WAV clip as a PNG with time and frequency axes.
    #[command(
        after_help = "Examples:\n  chorus spectrogram --segment 3f9a0c1d2b4e5f60 -o seg.png\n  chorus spectrogram --audio call.wav -o call.png\n  chorus query --segment 3f9a0c1d2b4e5f60 -k 5 --spectrograms hits/   # one picture per neighbour\n\nFrames every 10 ms (one pixel column each), 128 mel bands from 60 Hz to half the sample rate (two pixel\nrows each, low frequencies at the bottom), 80 dB of range below the loudest cell. A segment's audio is the\nwindow the model heard, kept in the archive's audio column (archive.audio). Clips up to 60 s."
    )]
    Spectrogram {
        #[command(flatten)]
        config: ConfigArg,
        /// An archived segment id (16 hex digits).
        #[arg(long, value_name = "ID", value_parser = parse_segment, conflicts_with = "audio", required_unless_present = "audio")]
        segment: Option<SegmentId>,
        /// A WAV clip (any rate and channel count).
        #[arg(long, value_name = "FILE")]
        audio: Option<PathBuf>,
        /// The segment's space (default: look in every space).
        #[arg(long)]
        space: Option<String>,
        /// Where to write the PNG.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Load the query API with concurrent searches and report latency percentiles, errors and the SLA line.
    #[command(
        after_help = "Examples:\n  chorus bench-query --clients 4 --seconds 20                 # against the running job's API\n  chorus bench-query --pattern hotspot --url 127.0.0.1:9464\n  chorus bench-query --pattern burst --seconds 30\n\nQueries are searches by the ids of archived segments (read from the config's archive). Exits 1 when p99\nexceeds api.sla_p99_ms or a request failed."
    )]
    BenchQuery {
        #[command(flatten)]
        config: ConfigArg,
        /// The API's address (default: http.listen from the config).
        #[arg(long, value_name = "ADDR")]
        url: Option<String>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Length of the run.
        #[arg(long, default_value_t = 20.0, value_name = "SECS")]
        seconds: f64,
        /// How queries are picked and paced.
        #[arg(long, value_enum, default_value = "uniform")]
        pattern: chorus::loadgen::Pattern,
        /// Neighbours per query.
        #[arg(short, default_value_t = 10)]
        k: usize,
    },
    /// Serve the query API over the indices and archive a job left on disk (no broker needed).
    #[command(
        after_help = "Examples:\n  chorus serve --config config/balanced.toml\n  chorus serve --listen 0.0.0.0:8080     # beyond this machine: set api.token first\n\n  curl -s localhost:9464/v1/search -H 'content-type: application/json' \\\n       -d '{\"segment_id\": \"3f9a0c1d2b4e5f60\", \"k\": 5}'\n  curl -s 'localhost:9464/v1/search?k=5&sensors=pole-7' -H 'content-type: audio/wav' --data-binary @call.wav\n  curl -s localhost:9464/v1/segments/3f9a0c1d2b4e5f60\n\nThe job serves the same API while it runs (http.enabled), with refined searches (\"refined\": true) and\nlabels; chorus serve has no refinement state, and its POST /v1/labels writes to the labels topic for a job\nto read. SIGTERM or Ctrl-C stops the server."
    )]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Address to listen on (default: http.listen from the config).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
}

fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| format!("'{s}' is not an RFC 3339 time such as 2026-05-01T05:00:00Z"))
}

/// An RFC 3339 time or a date (midnight UTC), as µs since the epoch.
fn parse_bound(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
        .ok_or_else(|| {
            format!("'{s}' is neither an RFC 3339 time such as 2026-05-01T05:00:00Z nor a date such as 2026-05-01")
        })
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    s.parse()
}

fn parse_segment(s: &str) -> Result<SegmentId, String> {
    s.parse()
}

fn main() -> ExitCode {
    tune_allocator();
    let small_pages = keep_small_pages();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    if let Err(error) = small_pages {
        tracing::debug!(%error, "Transparent huge pages stay on for this process.");
    }
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},hnsw_rs=warn,ort=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn cluster(processes: usize, process: usize, hostfile: Option<PathBuf>) -> anyhow::Result<Option<Cluster>> {
    if processes == 0 || process >= processes {
        anyhow::bail!("--process {process} must be below --processes {processes}");
    }
    if processes == 1 && hostfile.is_none() {
        return Ok(None);
    }
    let addresses: Vec<String> = match hostfile {
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading --hostfile {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        None => (0..processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect(),
    };
    if addresses.len() != processes {
        anyhow::bail!("the hostfile lists {} addresses for --processes {processes}", addresses.len());
    }
    Ok(Some(Cluster { process, addresses }))
}

fn load(config: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&config.config)?)
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, workers, until_idle, processes, process, hostfile, flush_tails } => {
            let config = load(&config)?;
            let idle = match until_idle {
                Some(secs) if secs >= 0.0 && secs.is_finite() => Some(Duration::from_secs_f64(secs)),
                Some(secs) => anyhow::bail!("--until-idle {secs} must be a number of seconds, 0 or more"),
                None => None,
            };
            let stop = Stop { idle, ..Stop::default() };
            // SIGTERM or Ctrl-C: stop reading, drain, flush, commit. A second one exits at once.
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register_conditional_shutdown(signal, 1, stop.requested.clone())?;
                signal_hook::flag::register(signal, stop.requested.clone())?;
            }
            let cluster = cluster(processes, process, hostfile)?;
            let summary = job::run(&config, &RunOptions { workers, stop, cluster, flush_tails })?;
            eprintln!(
                "chorus run: {} chunks, {} windows, {} new segments ({} already indexed), {} dead letters; {} \
                 precomputed vectors; committed {}",
                summary.chunks,
                summary.windows,
                summary.segments,
                summary.duplicates,
                summary.dead_letters,
                summary.vectors,
                summary.committed.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(" ")
            );
        }
        Command::Produce {
            config,
            sensor,
            space,
            chunk_seconds,
            embeddings,
            hop_seconds,
            vectors_per_message,
            start,
            priority,
            files,
        } => {
            let config = load(&config)?;
            let progress = !cli.quiet && std::io::stderr().is_terminal();
            if embeddings {
                let per_message = vectors_per_message;
                let options =
                    EmbeddingsOptions { sensor, space, start, hop_seconds, per_message, priority, files, progress };
                let summary = produce::produce_embeddings(&config, &options).context("producing embeddings")?;
                if !cli.quiet {
                    eprintln!(
                        "chorus produce: {} messages ({} vectors of model {}, {} bytes) from {} file(s) to {}",
                        summary.chunks,
                        summary.vectors,
                        config.model.name,
                        summary.bytes,
                        summary.files,
                        config.kafka.audio_topic
                    );
                }
                return Ok(());
            }
            let options = ProduceOptions { sensor, space, chunk_seconds, start, priority, files, progress };
            let summary = produce::produce(&config, &options).context("producing audio")?;
            if !cli.quiet {
                eprintln!(
                    "chorus produce: {} chunks ({:.1} s of audio, {} bytes) from {} file(s) to {}",
                    summary.chunks, summary.seconds, summary.bytes, summary.files, config.kafka.audio_topic
                );
            }
        }
        Command::BenchQuery { config, url, clients, seconds, pattern, k } => {
            let config = load(&config)?;
            let address = match url {
                Some(url) => {
                    let bare = url.trim_start_matches("http://").trim_end_matches('/');
                    std::net::ToSocketAddrs::to_socket_addrs(bare)
                        .ok()
                        .and_then(|mut a| a.next())
                        .with_context(|| format!("--url {url} is not host:port"))?
                }
                None => config.http.context("http.enabled is false: give --url")?,
            };
            if clients == 0 || !(seconds > 0.0 && seconds.is_finite()) {
                anyhow::bail!("--clients must be at least 1 and --seconds positive");
            }
            let options = chorus::loadgen::LoadOptions {
                address,
                clients,
                duration: Duration::from_secs_f64(seconds),
                pattern,
                k,
                token: config.api.token.clone(),
                max_ids: 100_000,
            };
            if !cli.quiet {
                eprintln!("chorus bench-query: {clients} clients, {pattern:?}, {seconds} s against {address}");
            }
            let report = chorus::loadgen::run(&config, &options)?;
            println!("{report}");
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Command::Serve { config, listen } => {
            let config = load(&config)?;
            let stop = Stop::default();
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.requested.clone())?;
            }
            let listen = listen.or(config.http).context("http.enabled is false and no --listen was given")?;
            chorus::serve::serve(&config, listen, &stop)?;
        }
        Command::Archive { config, space, sensors, from, to, label, format } => {
            let config = load(&config)?;
            if let (Some(from), Some(to)) = (from, to)
                && from >= to
            {
                anyhow::bail!("--from must be before --to");
            }
            let query = chorus::search::listing::ArchiveQuery {
                space,
                filter: chorus_operators::index::Filter { sensors, from_micros: from, to_micros: to },
                label,
            };
            let progress = !cli.quiet && std::io::stderr().is_terminal();
            let (rows, stats) = chorus::archive::query(&config, &query, progress)?;
            chorus::archive::write(&rows, format, &mut std::io::stdout().lock())?;
            if !cli.quiet {
                eprintln!(
                    "chorus archive: {} segment(s); read {} of {} day partition(s), {} of {} row group(s) ({} skipped \
                     by statistics), {} rows decoded",
                    rows.len(),
                    stats.partitions - stats.partitions_skipped,
                    stats.partitions,
                    stats.row_groups - stats.row_groups_skipped,
                    stats.row_groups,
                    stats.row_groups_skipped,
                    stats.rows_read
                );
            }
        }
        Command::Compact { config } => {
            let config = load(&config)?;
            let (mut partitions, mut before, mut after) = (0, 0, 0);
            let merged = chorus::compact::compact_offline(&config, &mut |dataset, m| {
                println!(
                    "{dataset} space={} date={}: {} file(s), {} bytes -> {} file(s), {} bytes; {} rows; the partition \
                     now holds {} file(s)",
                    m.space, m.date, m.files_in, m.bytes_in, m.files_out, m.bytes_out, m.rows, m.files_after
                );
            })?;
            for m in &merged {
                partitions += 1;
                before += m.files_in;
                after += m.files_out;
            }
            if merged.is_empty() {
                println!("Nothing to compact.");
            } else {
                println!("Compacted {partitions} partition(s): {before} file(s) merged into {after}.");
            }
        }
        Command::Prune { config, older_than_days: Some(older_than_days), apply, .. } => {
            let config = load(&config)?;
            let today = chrono::Utc::now().date_naive();
            let plan = chorus::retention::plan_prune(&config, older_than_days, today)?;
            let mut stdout = std::io::stdout().lock();
            chorus::archive::print_plan(&plan, older_than_days, &mut stdout)?;
            if plan.partitions.is_empty() {
                return Ok(());
            }
            if apply {
                chorus::retention::apply_prune(&config, &plan)?;
                let (files, bytes) = plan.size();
                println!("Deleted {} partition(s): {files} file(s), {bytes} bytes.", plan.partitions.len());
            } else {
                println!("Dry run: nothing was deleted. Run again with --apply to delete.");
            }
        }
        Command::Prune { config, audio_older_than_days: Some(days), keep_labelled, apply, .. } => {
            let config = load(&config)?;
            let today = chrono::Utc::now().date_naive();
            let plan = chorus::retention::plan_audio_prune(&config, days, today, keep_labelled)?;
            let mut stdout = std::io::stdout().lock();
            chorus::archive::print_audio_plan(&plan, days, &mut stdout)?;
            drop(stdout);
            if plan.partitions.is_empty() {
                return Ok(());
            }
            if !apply {
                println!("Dry run: nothing was changed. Run again with --apply to remove the audio.");
                return Ok(());
            }
            let labelled: std::collections::HashSet<String> = if keep_labelled {
                let settings = config.kafka.clone();
                let labels = chorus_connectors::kafka::given_labels(&settings, Duration::from_secs(60))?;
                println!("{} segment(s) carry a given label: their audio stays.", labels.len());
                labels.keys().map(ToString::to_string).collect()
            } else {
                Default::default()
            };
            let (mut before, mut after) = (0, 0);
            chorus::retention::apply_audio_prune(&config, &plan, &labelled, &mut |partition, merged| {
                before += merged.bytes_in;
                after += merged.bytes_out;
                println!(
                    "space={} date={}: {} file(s), {} bytes -> {} file(s), {} bytes; {} rows kept",
                    partition.space,
                    partition.date,
                    merged.files_in,
                    merged.bytes_in,
                    merged.files_out,
                    merged.bytes_out,
                    merged.rows
                );
            })?;
            println!("Removed the audio of {} partition(s): {before} bytes -> {after} bytes.", plan.partitions.len());
        }
        Command::Prune { .. } => unreachable!("clap requires --older-than-days or --audio-older-than-days"),
        Command::Spectrogram { config, segment, audio, space, output } => {
            let config = load(&config)?;
            let (samples, rate) = match (segment, audio) {
                (Some(id), None) => {
                    let whereabouts = chorus::search::Whereabouts { space, ..Default::default() };
                    let (_, audio) = chorus::search::segment_audio(&config, id, &whereabouts)?;
                    (audio.samples, audio.sample_rate)
                }
                (None, Some(path)) => {
                    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    let audio = chorus_connectors::wav::decode(&bytes, &Default::default())
                        .map_err(|r| anyhow::anyhow!("{}: {}", path.display(), r.reason))?;
                    let seconds = audio.samples.len() as f64 / f64::from(audio.sample_rate);
                    if seconds > chorus::spectrogram::MAX_SECONDS {
                        anyhow::bail!(
                            "{}: {seconds:.1} s is longer than the {} s a picture shows; cut the clip first",
                            path.display(),
                            chorus::spectrogram::MAX_SECONDS
                        );
                    }
                    (audio.samples, audio.sample_rate)
                }
                _ => anyhow::bail!("give either --segment ID or --audio FILE"),
            };
            let picture = chorus::spectrogram::render(&chorus::spectrogram::Spectrogram::compute(&samples, rate));
            std::fs::write(&output, &picture.png).with_context(|| format!("writing {}", output.display()))?;
            if !cli.quiet {
                eprintln!("chorus spectrogram: {} ({}×{} px)", output.display(), picture.width, picture.height);
            }
        }
        Command::Query { config, audio, segment, k, ef, space, json, spectrograms } => {
            let config = load(&config)?;
            let target = match (audio, segment) {
                (Some(path), None) => Target::Audio(path),
                (None, Some(id)) => Target::Segment(id),
                _ => anyhow::bail!("give either --audio FILE or --segment ID"),
            };
            if k == 0 {
                anyhow::bail!("-k must be at least 1");
            }
            let answers = query::query(&config, &QueryOptions { target, k, ef, space })?;
            let mut stdout = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut stdout, &answers)?;
                println!();
            } else {
                query::print_table(&answers, &mut stdout)?;
            }
            if let Some(dir) = spectrograms {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let mut written = 0;
                for hit in answers.iter().flat_map(|a| &a.hits) {
                    let audio = match chorus::search::segment_audio(&config, hit.segment.id, &hit.segment.whereabouts())
                    {
                        Ok((_, audio)) => audio,
                        Err(chorus::Error::NotFound(reason)) => {
                            tracing::warn!("No spectrogram for neighbour {}: {reason}", hit.rank);
                            continue;
                        }
                        Err(error) => return Err(error.into()),
                    };
                    let spectrogram = chorus::spectrogram::Spectrogram::compute(&audio.samples, audio.sample_rate);
                    let path = dir.join(format!("{}-{}.png", hit.rank, hit.segment.segment_id));
                    std::fs::write(&path, chorus::spectrogram::render(&spectrogram).png)
                        .with_context(|| format!("writing {}", path.display()))?;
                    written += 1;
                }
                if !cli.quiet {
                    eprintln!("chorus query: {written} spectrogram(s) in {}", dir.display());
                }
            }
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn r15_the_allocator_gives_freed_memory_back_within_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() || std::env::var_os("MIMALLOC_RESET_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY or MIMALLOC_RESET_DELAY is set in the environment");
            return;
        }
        // SAFETY: reads one of mimalloc's options.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // The option is mimalloc 3's purge delay, whose default is a second.
        assert_eq!(get(), 1000);
        tune_allocator();
        assert_eq!(get(), PURGE_DELAY_MS);
    }

    #[test]
    fn r15_the_process_keeps_small_pages_unless_the_environment_allows_huge_ones() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            eprintln!("skipped: MIMALLOC_ALLOW_THP is set in the environment");
            return;
        }
        keep_small_pages().unwrap();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
