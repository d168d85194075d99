//! Embeddings made before they were sent (issue 17): the Kafka contract for precomputed embeddings, read by the same
//! job as audio, produced by `chorus produce --embeddings` and by the README's Python example.

use chorus_operators::record::SegmentId;
use serde_json::Value;

use crate::support::{RawChunk, Scenario, T0, T0_SECONDS, gaussian_noise, root, run_counts, sample_samples, tools};

/// The stand-in model's name (its file's stem) and dimension.
const MODEL: &str = "chorus-standin-v1";
const DIM: usize = 1536;

/// `rows` vectors as a float32 `.npy` file.
fn npy(path: &std::path::Path, rows: &[Vec<f32>]) {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", rows.len(), rows[0].len());
    let mut header = header.into_bytes();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header);
    bytes.extend(rows.iter().flatten().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

/// The README's Python example of producing embeddings.
fn readme_python() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    readme
        .split("```python\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.contains("np.load"))
        .expect("the README has a Python block producing embeddings")
        .to_owned()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Segment id of `sensor`'s window starting `seconds` after [`T0`] at 32 kHz.
fn id_at(space: &str, sensor: &str, seconds: i64) -> SegmentId {
    SegmentId::of(space, sensor, (T0_SECONDS + seconds) * 32_000)
}

#[test]
fn r17_precomputed_embeddings_are_archived_indexed_and_published_beside_audio_and_bad_ones_are_dead_letters() {
    let s = Scenario::new("r17-embeddings", &[]);
    // Six vectors from an edge box (seeds two apart: the noise takes `seed | 1`, so 2k and 2k + 1 give the same); the
    // fourth is the first one, a little changed: its nearest neighbour.
    let mut vectors: Vec<Vec<f32>> = (0..6).map(|i| gaussian_noise(DIM, 1_700 + 2 * i)).collect();
    vectors[3] = vectors[0].iter().zip(gaussian_noise(DIM, 99)).map(|(x, n)| x + 0.1 * n).collect();
    let file = s.dir.path().join("edge-1.npy");
    npy(&file, &vectors);
    let output =
        s.chorus(&["produce", "--embeddings", "--sensor", "edge-1", "--start", T0, &file.display().to_string()]);
    let said = String::from_utf8(output.stderr).unwrap();
    assert!(said.contains(&format!("1 messages (6 vectors of model {MODEL}, 36864 bytes) from 1 file(s)")), "{said}");

    // The README's Python example, for a second sensor in another space.
    let python = s.dir.path().join("edge-2.npy");
    let theirs: Vec<Vec<f32>> = (0..3).map(|i| gaussian_noise(DIM, 2_700 + 2 * i)).collect();
    npy(&python, &theirs);
    let script = readme_python()
        .replace("dawn.npy", &python.display().to_string())
        .replace("127.0.0.1:9092", &s.brokers)
        .replace("chorus.audio", &s.audio_topic);
    let status = std::process::Command::new(&tools().python).arg("-c").arg(&script).status().unwrap();
    assert!(status.success(), "the README's Python example failed:\n{script}");

    // Audio on the same topic: six seconds of a recording make one window.
    let wav = s.dir.path().join("mic-1.wav");
    crate::support::write_wav(&wav, 32_000, &sample_samples()[..6 * 32_000]);
    s.chorus(&["produce", "--sensor", "mic-1", "--start", T0, &wav.display().to_string()]);

    // Embeddings that do not fit the job's model, or are not embeddings.
    let one = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let good = gaussian_noise(DIM, 5);
    let bad = |headers: &[(&str, &str)], payload: Vec<u8>| {
        let mut chunk = RawChunk::new("edge-3", T0, payload);
        chunk.headers.extend(headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())));
        chunk
    };
    let dim = DIM.to_string();
    let mut nan = good.clone();
    nan[7] = f32::NAN;
    s.produce_raw(&[
        bad(&[("model", "birdnet-v2.4"), ("dim", &dim)], one(&good)),
        bad(&[("model", MODEL), ("dim", "1024")], one(&good[..1024])),
        bad(&[("model", MODEL), ("dim", &dim)], one(&nan)),
        bad(&[("model", MODEL), ("dim", &dim)], one(&vec![0.0; DIM])),
        bad(&[("model", MODEL), ("dim", &dim)], one(&good[..DIM - 1])),
    ]);

    let counts = run_counts(&s.run_until_idle());
    assert_eq!((counts.chunks, counts.windows, counts.vectors), (1, 1, 9), "{counts:?}");
    assert_eq!((counts.new_segments, counts.already_indexed, counts.dead_letters), (10, 0, 5), "{counts:?}");

    // Archived at the ids audio would give them, one hop (5 s) apart, with their vectors.
    let rows = s.archived("default", true);
    let edge: Vec<_> = rows.iter().filter(|r| r.sensor == "edge-1").collect();
    let ids: Vec<SegmentId> = edge.iter().map(|r| r.id).collect();
    let expected: Vec<SegmentId> = (0..6).map(|i| id_at("default", "edge-1", 5 * i)).collect();
    assert_eq!(ids, expected);
    for (row, vector) in edge.iter().zip(&vectors) {
        assert_eq!((row.coverage, row.model.as_str()), (1.0, MODEL));
        assert_eq!(row.end_micros - row.start_micros, 5_000_000);
        let similarity = cosine(row.embedding.as_ref().unwrap(), vector);
        assert!(similarity > 0.999, "the archived vector is not the one sent: cosine {similarity}");
    }
    assert_eq!(rows.iter().filter(|r| r.sensor == "mic-1").count(), 1);
    let forest = s.archived("forest", false);
    let ids: Vec<SegmentId> = forest.iter().map(|r| r.id).collect();
    assert_eq!(ids, (0..3).map(|i| id_at("forest", "edge-2", 5 * i)).collect::<Vec<_>>());

    // Indexed: the changed copy is the first vector's nearest neighbour.
    let output = s.chorus(&["query", "--segment", &expected[0].to_string(), "-k", "1", "--json"]);
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers[0]["hits"][0]["segment_id"], expected[3].to_string(), "{answers:#}");

    // Published on the segments topic like segments from audio.
    let published = s.consume(&s.segments_topic, 10);
    let mut keys: Vec<String> = published.iter().filter_map(|m| m.key.clone()).collect();
    keys.sort();
    let mut all: Vec<String> = rows.iter().chain(&forest).map(|r| r.id.to_string()).collect();
    all.sort();
    assert_eq!(keys, all);

    // Each bad message is a dead letter naming its fault.
    let letters = s.consume(&s.dead_letter_topic, 5);
    let mut causes: Vec<&str> = letters.iter().map(|m| m.header("chorus.cause").unwrap()).collect();
    causes.sort_unstable();
    assert_eq!(causes, ["bad_embedding", "bad_embedding", "non_finite", "wrong_model", "wrong_model"]);
    let reasons: Vec<&str> = letters.iter().map(|m| m.header("chorus.reason").unwrap()).collect();
    assert!(reasons.contains(&"dim 1024 is not the model's dimension 1536"), "{reasons:?}");
    assert!(reasons.contains(&"value 7 of vector 0 is NaN"), "{reasons:?}");

    // Sent again, the same vectors are the same segments: nothing new.
    s.chorus(&["produce", "--embeddings", "--sensor", "edge-1", "--start", T0, &file.display().to_string()]);
    let counts = run_counts(&s.run_until_idle());
    assert_eq!((counts.new_segments, counts.already_indexed, counts.dead_letters), (0, 6, 0), "{counts:?}");
    assert_eq!(counts.vectors, 6);
    assert_eq!(s.archived("default", false).len(), 7);
}

#[test]
fn r17_chorus_produce_refuses_embeddings_of_another_dimension_before_sending_anything() {
    let s = Scenario::new("r17-produce", &[]);
    let file = s.dir.path().join("small.npy");
    npy(&file, &[vec![1.0; 1024]]);
    let output = s.chorus_unchecked(&["produce", "--embeddings", &file.display().to_string()]);
    assert!(!output.status.success());
    let said = String::from_utf8(output.stderr).unwrap();
    assert!(
        said.contains(&format!("holds vectors of 1024 values; the model \"{MODEL}\" makes 1536 (model.dim)")),
        "{said}"
    );
    // A hop the job would refuse is refused before anything is sent.
    let right = s.dir.path().join("right.npy");
    npy(&right, &[vec![1.0; DIM]]);
    let output = s.chorus_unchecked(&["produce", "--embeddings", "--hop-seconds", "10", &right.display().to_string()]);
    assert!(!output.status.success());
    let said = String::from_utf8(output.stderr).unwrap();
    assert!(said.contains("--hop-seconds 10 is not a whole number of samples"), "{said}");
    let output = s.chorus_unchecked(&["produce", "--hop-seconds", "1", &file.display().to_string()]);
    assert!(!output.status.success(), "--hop-seconds without --embeddings is refused");
}
