//! Throughput of the audio path on one worker: decode → resample → window, with and without the embedding model.
//!
//! The input is the sample recording resampled to 48 kHz, made stereo 16-bit, repeated to `--seconds` of audio and
//! cut into 1 s WAV chunk messages, so every stage does its real work (WAV decode and downmix, 48 → 32 kHz
//! resampling, reassembly across chunk boundaries, 5 s windows, batched ONNX inference).
//!
//!     cargo bench --bench pipeline -- [--seconds 600] [--threads N] [--batch 16]
//!
//! Needs the tools of `scripts/tools.sh` (ONNX Runtime, the stand-in model, the sample audio).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chorus_connectors::kafka::{ChunkLimits, RawMessage, decode_message};
use chorus_connectors::wav::{self, DecodeLimits, Samples, WavFile};
use chorus_operators::embed::{self, EmbedSettings, Embedder, ModelConfig};
use chorus_operators::record::{Origin, Window, rfc3339};
use chorus_operators::resample::StreamResampler;
use chorus_operators::segment::{Pushed, Segmenter, WindowsConfig};

#[path = "args.rs"]
mod args;

use args::arg;

const T0_NANOS: i64 = 1_777_611_600_000_000_000;

fn tools() -> PathBuf {
    let dir = std::env::var_os("CHORUS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    assert!(dir.join("sample/birds_10s.wav").exists(), "{} lacks the tools: run scripts/tools.sh", dir.display());
    dir
}

/// One-second chunks of 48 kHz stereo 16-bit audio, as Kafka messages of the audio topic.
fn messages(seconds: usize) -> Vec<RawMessage> {
    let bytes = std::fs::read(tools().join("sample/birds_10s.wav")).unwrap();
    let mono = wav::decode(&bytes, &DecodeLimits::default()).unwrap().samples;
    let mut up = StreamResampler::new(32_000, 48_000).unwrap();
    let mut at_48k = Vec::new();
    up.push(&mono, &mut at_48k).unwrap();
    up.finish(&mut at_48k).unwrap();
    let frames = seconds * 48_000;
    let interleaved: Vec<i32> = (0..frames)
        .flat_map(|i| {
            let x = at_48k[i % at_48k.len()];
            [(x * 30_000.0) as i32, (x * 27_000.0) as i32]
        })
        .collect();
    let file = WavFile {
        spec: hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
        samples: Samples::Int(interleaved),
    };
    (0..seconds)
        .map(|s| RawMessage {
            origin: Origin { topic: "bench".into(), partition: 0, offset: s as i64 },
            key: Some(b"bench-sensor".to_vec()),
            payload: Some(file.encode_frames(s * 48_000, (s + 1) * 48_000).unwrap()),
            headers: vec![("captured_at".into(), rfc3339(T0_NANOS + s as i64 * 1_000_000_000).into_bytes())],
            timestamp_ms: None,
            log_append_time: false,
        })
        .collect()
}

struct Figures {
    windows: usize,
    seconds: f64,
}

fn run(messages: Vec<RawMessage>, mut embedder: Option<&mut Embedder>, batch: usize) -> Figures {
    // Chunks arrive in order: none waits for audio before it.
    let spec = WindowsConfig { lateness_ms: 0, ..WindowsConfig::default() }.build(32_000, 160_000).unwrap();
    let mut segmenter = Segmenter::new(spec);
    let limits =
        ChunkLimits { max_bytes: 1 << 20, max_clock_skew: Duration::from_secs(600), wav: DecodeLimits::default() };
    let mut pending: Vec<Window> = Vec::new();
    let mut windows = 0;
    let started = Instant::now();
    for message in messages {
        let chunk =
            decode_message(message, &limits, chorus_connectors::kafka::now_nanos()).expect("bench chunks decode");
        let mut pushed = Pushed::default();
        segmenter.push(chunk, 0, 0, &mut pushed);
        windows += pushed.windows.len();
        pending.extend(pushed.windows);
        if let Some(embedder) = embedder.as_deref_mut()
            && pending.len() >= batch
        {
            embed(embedder, &mut pending);
        }
    }
    if let Some(embedder) = embedder {
        embed(embedder, &mut pending);
    }
    Figures { windows, seconds: started.elapsed().as_secs_f64() }
}

fn embed(embedder: &mut Embedder, pending: &mut Vec<Window>) {
    for batch in pending.chunks(embedder.max_batch()) {
        let views: Vec<&[f32]> = batch.iter().map(|w| w.samples.as_slice()).collect();
        std::hint::black_box(embedder.embed(&views).expect("the model runs"));
    }
    pending.clear();
}

fn main() {
    let seconds = arg("--seconds", 600.0) as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = arg("--threads", cores as f64) as usize;
    let batch = arg("--batch", 16.0) as usize;
    let tools = tools();
    let model =
        ModelConfig { path: tools.join("models/chorus-standin-v1.onnx"), ..Default::default() }.build(&tools).unwrap();
    let settings = EmbedSettings {
        library: tools.join("onnxruntime-1.32.0/libonnxruntime.so.1.32.0"),
        max_batch: batch,
        threads,
        keep_audio: true,
    };
    let environment = embed::runtime(&settings.library).unwrap();
    let mut embedder = Embedder::open(environment, &model, &settings).unwrap();

    println!(
        "chorus pipeline bench: {seconds} s of 48 kHz stereo 16-bit audio in 1 s WAV chunks → 32 kHz, 5 s windows \
         (hop 5 s); model {} ({}-D), batch {batch}, 1 worker, {threads} ONNX Runtime thread(s) on {cores} core(s)",
        model.name, model.dim
    );
    // Warm-up: the first inference allocates ONNX Runtime's arenas.
    run(messages(10), Some(&mut embedder), batch);
    println!("{:<40} {:>8} {:>9} {:>10} {:>17}", "stages", "windows", "seconds", "windows/s", "real-time factor");
    for (label, with_model) in [("decode + resample + window", false), ("decode + resample + window + embed", true)] {
        let input = messages(seconds);
        let figures = run(input, with_model.then_some(&mut embedder), batch);
        println!(
            "{label:<40} {:>8} {:>9.3} {:>10.1} {:>16.0}x",
            figures.windows,
            figures.seconds,
            figures.windows as f64 / figures.seconds,
            seconds as f64 / figures.seconds
        );
    }
    println!("reproduce: cargo bench --bench pipeline -- --seconds {seconds} --threads {threads} --batch {batch}");
}
