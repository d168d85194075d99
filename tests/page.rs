//! The search page, used end to end in headless Chromium: pick a call, see and hear its neighbours, label one (the
//! label reaches the job and spreads), upload a clip.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Scenario, T0, free_port, http, terminate, tools, wait_for};

/// Debian's Chromium, which `scripts/tools.sh chromium` installs.
fn chromium() -> String {
    let path = std::path::Path::new("/usr/bin/chromium");
    assert!(path.exists(), "{} is missing: run the tests with scripts/test.sh, which installs it", path.display());
    path.display().to_string()
}

fn get_json(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http(port, "GET", path, &[], b"").unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn r6_the_search_page_finds_shows_plays_and_labels_in_a_browser() {
    let port = free_port();
    let s = Scenario::new(
        "r6-page",
        &[("http.listen", format!("127.0.0.1:{port}").into()), ("refine.round_ms", 100.into())],
    );
    let sample = tools().sample.display().to_string();
    for sensor in ["pole-1", "pole-2", "pole-3"] {
        s.chorus(&["produce", "--sensor", sensor, "--start", T0, &sample]);
    }
    let mut job = s.spawn(&["run"]);
    wait_for("the segments to be archived", Duration::from_secs(90), || s.archived("default", false).len() == 6);

    // The endpoints the page uses.
    let (status, recent) = get_json(port, "/v1/segments?limit=4");
    assert_eq!(status, 200, "{recent}");
    let listed = recent["segments"].as_array().unwrap();
    assert_eq!(listed.len(), 4);
    assert!(listed.windows(2).all(|w| w[0]["start_time"].as_str() >= w[1]["start_time"].as_str()), "{recent}");
    let id = listed[0]["segment_id"].as_str().unwrap().to_owned();
    let (status, wav) = http(port, "GET", &format!("/v1/segments/{id}/audio.wav"), &[], b"").unwrap();
    assert_eq!((status, wav.len() > 100), (200, true));
    assert_eq!(get_json(port, "/v1/segments/00000000000000ff/audio.wav").0, 404);
    assert_eq!(get_json(port, "/v1/segments?limit=0").0, 400);
    let (status, page) = http(port, "GET", "/", &[], b"").unwrap();
    assert!(status == 200 && page.contains("<title>chorus"), "{status}");

    // A person at the page.
    let clip = s.dir.path().join("clip.wav");
    std::fs::copy(&sample, &clip).unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let seen: Value = serde_json::from_str(
        &s.python("search_page.py", &[&url, &chromium(), &clip.display().to_string(), "Turdus merula"]),
    )
    .unwrap();
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert!(seen["recent"].as_u64().unwrap() >= 1, "{seen}");
    let hits = seen["hits"].as_array().unwrap();
    assert!(!hits.is_empty() && !hits.contains(&seen["picked"]), "a call is not its own neighbour: {seen}");
    let (width, height) = chorus::spectrogram::size(500);
    for image in seen["images"].as_array().unwrap() {
        assert_eq!(image, &serde_json::json!([width, height]), "{seen}");
    }
    for seconds in seen["audio_seconds"].as_array().unwrap() {
        assert!((seconds.as_f64().unwrap() - 5.0).abs() < 0.01, "5 s windows: {seen}");
    }
    assert_eq!(seen["played"], true);
    assert!(!seen["upload_hits"].as_array().unwrap().is_empty(), "{seen}");

    // The label given on the page reached the job.
    let labelled = seen["labelled"].as_str().unwrap().to_owned();
    wait_for("the page's label to reach the job", Duration::from_secs(30), || {
        get_json(port, &format!("/v1/segments/{labelled}")).1["label"] == "Turdus merula"
    });
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());
}
