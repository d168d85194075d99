//! The query API on a running job and on `chorus serve`: searches by segment, vector and WAV upload, filters, JSON
//! errors, body limits, the bearer token, and the answer cache with its invalidation on insert.

use serde_json::{Value, json};

use std::time::Duration;

use crate::support::{Scenario, T0, free_port, http, metric, sample_samples, terminate, tools, wait_for, write_wav};

const TOKEN: &str = "test-token-0123456789";

fn post_json(port: u16, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let (status, body) = http(port, "POST", path, &headers, body.to_string().as_bytes()).expect("the API answers");
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}")))
}

fn get_json(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http(port, "GET", path, &[("Authorization", &format!("Bearer {TOKEN}"))], b"").unwrap();
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}")))
}

fn reason(answer: &Value) -> String {
    answer["error"]["reason"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn r4_the_query_api_searches_filters_refuses_clearly_and_caches_until_an_insert() {
    let port = free_port();
    let s = Scenario::new(
        "r4-api",
        &[
            ("http.listen", format!("127.0.0.1:{port}").into()),
            ("api.token", TOKEN.into()),
            ("api.max_body_bytes", 800_000.into()),
            ("index.snapshot_interval_seconds", 1.into()),
        ],
    );
    let sample = tools().sample.display().to_string();
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample]);
    s.chorus(&["produce", "--sensor", "pole-2", "--start", T0, &sample]);
    let mut job = s.spawn(&["run"]);
    wait_for("both sensors' segments to be archived", Duration::from_secs(90), || {
        s.archived("default", false).len() == 4
    });
    let archived = s.archived("default", false);
    let own = archived.iter().find(|r| r.sensor == "pole-1").unwrap().id.to_string();

    // The token is required.
    let (status, answer) = post_json(port, "/v1/search", &json!({ "segment_id": own }), None);
    assert_eq!(status, 401, "{answer}");
    assert!(reason(&answer).contains("Bearer"), "{answer}");
    let (status, _) = post_json(port, "/v1/search", &json!({ "segment_id": own }), Some("wrong-token-000000000"));
    assert_eq!(status, 401);

    // By segment id: the same audio from the other sensor comes first, the segment itself is left out.
    let (status, answer) = post_json(port, "/v1/search", &json!({ "segment_id": own, "k": 3 }), Some(TOKEN));
    assert_eq!(status, 200, "{answer}");
    let hits = answer["queries"][0]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3, "{answer}");
    assert!(hits.iter().all(|h| h["segment_id"] != own.as_str()), "{answer}");
    assert_eq!(hits[0]["sensor"], "pole-2", "{answer}");
    assert!(hits[0]["distance"].as_f64().unwrap() < 1e-3, "{answer}");
    assert_eq!(answer["cached"], false);

    // Filters: only pole-1, only the second window's time.
    let filtered = json!({ "segment_id": own, "k": 5, "sensors": ["pole-1"], "from": "2026-05-01T05:00:05Z" });
    let (status, answer) = post_json(port, "/v1/search", &filtered, Some(TOKEN));
    assert_eq!(status, 200, "{answer}");
    let hits = answer["queries"][0]["hits"].as_array().unwrap();
    assert!(
        !hits.is_empty()
            && hits.iter().all(|h| h["sensor"] == "pole-1" && h["start_time"].as_str() >= Some("2026-05-01T05:00:05Z")),
        "{answer}"
    );

    // The same question again comes from the cache.
    let (_, again) = post_json(port, "/v1/search", &json!({ "segment_id": own, "k": 3 }), Some(TOKEN));
    assert_eq!(again["cached"], true, "{again}");

    // By WAV upload (the API embeds it with the job's model): the first window matches pole-1 and pole-2.
    let clip = s.dir.path().join("clip.wav");
    write_wav(&clip, 32_000, &sample_samples()[..5 * 32_000]);
    let wav = std::fs::read(&clip).unwrap();
    let bearer = format!("Bearer {TOKEN}");
    let headers = [("Content-Type", "audio/wav"), ("Authorization", bearer.as_str())];
    let (status, body) = http(port, "POST", "/v1/search?k=2&sensors=pole-2", &headers, &wav).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["queries"][0]["hits"][0]["sensor"], "pole-2", "{answer}");
    assert_eq!(answer["queries"][0]["hits"][0]["start_time"], "2026-05-01T05:00:00Z", "{answer}");

    // Refusals name what is wrong, as JSON.
    let cases = [
        (json!({ "vector": [1.0, 2.0] }), 400, "2 numbers"),
        (json!({ "segment_id": "xyz" }), 400, "16 hex digits"),
        (json!({ "segment_id": own, "k": 0 }), 400, "k = 0"),
        (json!({ "segment_id": own, "space": "nowhere" }), 404, "no space 'nowhere'"),
        (json!({ "segment_id": own, "from": "yesterday" }), 400, "RFC 3339"),
        (json!({ "segment_id": "00000000000000ff" }), 404, "not in the archive"),
        (json!({ "vektor": [] }), 400, "unknown field"),
    ];
    for (body, want, says) in cases {
        let (status, answer) = post_json(port, "/v1/search", &body, Some(TOKEN));
        assert_eq!(status, want, "{body} → {answer}");
        assert!(reason(&answer).contains(says), "{body} → {answer}");
    }
    let big = vec![0u8; 900_000];
    let (status, body) = http(port, "POST", "/v1/search", &headers, &big).unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_body_bytes"), "{body}");
    let (status, body) =
        http(port, "POST", "/v1/search", &[("Content-Type", "text/plain"), ("Authorization", &bearer)], b"hi").unwrap();
    assert_eq!(status, 415, "{body}");

    // A segment by id.
    let (status, answer) = get_json(port, &format!("/v1/segments/{own}"));
    assert_eq!((status, answer["sensor"].as_str()), (200, Some("pole-1")), "{answer}");
    assert_eq!(get_json(port, "/v1/segments/00000000000000ff").0, 404);
    let (status, answer) = get_json(port, "/v1/spaces");
    assert_eq!((status, answer["spaces"][0]["points"].as_u64()), (200, Some(4)), "{answer}");

    // An insert into the space invalidates the cached answer.
    s.chorus(&["produce", "--sensor", "pole-3", "--start", T0, &sample]);
    wait_for("the third sensor to be archived", Duration::from_secs(90), || s.archived("default", false).len() == 6);
    let (_, after) = post_json(port, "/v1/search", &json!({ "segment_id": own, "k": 3 }), Some(TOKEN));
    assert_eq!(after["cached"], false, "{after}");
    let (_, metrics) = crate::support::http_get(port, "/metrics").unwrap();
    assert_eq!(metric(&metrics, "chorus_query_cache_total{result=\"hit\"}"), 1.0);
    assert_eq!(metric(&metrics, "chorus_query_seconds_count{kind=\"audio\"}"), 1.0);
    crate::support::promtool_check(&metrics);
    // Everything produced has been read: the consumer lag of every partition read is 0.
    wait_for("the consumer lag to be reported", Duration::from_secs(30), || {
        let (_, metrics) = crate::support::http_get(port, "/metrics").unwrap();
        let lag: Vec<&str> = metrics.lines().filter(|l| l.starts_with("chorus_kafka_consumer_lag{")).collect();
        !lag.is_empty() && lag.iter().all(|l| l.ends_with(" 0"))
    });
    // Per-stage timings, queue depths (drained to 0 once all is archived) and the workers' busy time.
    let (_, metrics) = crate::support::http_get(port, "/metrics").unwrap();
    let value = |series: &str| metric(&metrics, series);
    for stage in ["decode", "segment", "embed", "index", "archive"] {
        assert!(value(&format!("chorus_stage_seconds_count{{stage=\"{stage}\"}}")) >= 1.0, "{stage}");
    }
    assert_eq!(value("chorus_queue_depth{queue=\"embed\"}"), 0.0);
    assert_eq!(value("chorus_queue_depth{queue=\"archive\"}"), 0.0);
    let busy = value("chorus_worker_busy_seconds_total{worker=\"0\"}");
    assert!(busy > 0.0, "worker 0 did some work: {busy}");
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());

    // `chorus serve` answers the same over what the job left on disk.
    let serve_port = free_port();
    let mut serve = s.spawn_numbered(1, &["serve", "--listen", &format!("127.0.0.1:{serve_port}")]);
    wait_for("chorus serve to answer", Duration::from_secs(60), || {
        crate::support::http_get(serve_port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let (status, served) = post_json(serve_port, "/v1/search", &json!({ "segment_id": own, "k": 3 }), Some(TOKEN));
    assert_eq!(status, 200, "{served}");
    // The job's hits also carry the refinement's clusters and labels, which `chorus serve` does not have.
    let plain = |hits: &Value| -> Vec<Value> {
        hits.as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let mut h = h.clone();
                for field in ["cluster", "label", "label_score"] {
                    h.as_object_mut().unwrap().remove(field);
                }
                h
            })
            .collect()
    };
    assert_eq!(plain(&served["queries"][0]["hits"]), plain(&after["queries"][0]["hits"]), "serve and job disagree");

    // The load generator: a hotspot pattern, mostly answered from the cache, within the SLA.
    let url = format!("127.0.0.1:{serve_port}");
    let output = s.chorus(&["bench-query", "--url", &url, "--clients", "2", "--seconds", "2", "--pattern", "hotspot"]);
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(report.contains("p99") && report.contains("PASS"), "{report}");
    let errors = report.split_whitespace().collect::<Vec<_>>();
    let errors = errors.windows(2).find(|w| w[1].trim_end_matches(',') == "errors").map(|w| w[0]);
    assert_eq!(errors, Some("0"), "{report}");
    terminate(serve.id());
    assert!(serve.wait().unwrap().success(), "{}", s.job_log());
}
