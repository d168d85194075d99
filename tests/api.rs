//! The query API on a running job and on `chorus serve`: searches by segment, vector and WAV upload, filters, JSON
//! errors, body limits, the bearer token, and the answer cache with its invalidation on insert.

use serde_json::{Value, json};

use std::time::Duration;

use crate::support::{
    Scenario, T0, free_port, http, http_get, http_raw, http_with_host, metric, sample_samples, terminate, tools,
    wait_for, write_wav, write_wav_i16,
};

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

/// A `chorus serve` of a test; killed when dropped, so a test that fails before [`stop`] leaves none behind.
struct Served(Option<std::process::Child>);

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `chorus serve` over what `s` holds on `port`, and waits until it answers.
fn serve(s: &Scenario, port: u16) -> Served {
    let served = Served(Some(s.spawn_numbered(1, &["serve", "--listen", &format!("127.0.0.1:{port}")])));
    wait_for("chorus serve to answer", Duration::from_secs(60), || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    served
}

/// Stops a server started by [`serve`] and checks that it ended well.
fn stop(s: &Scenario, mut served: Served) {
    let mut child = served.0.take().expect("running");
    terminate(child.id());
    assert!(child.wait().unwrap().success(), "{}", s.job_log());
}

/// A scenario whose archive holds the sample's two segments from pole-1, and those segments' ids.
fn archived_scenario(name: &str, overrides: &[(&str, toml::Value)]) -> (Scenario, Vec<String>) {
    let s = Scenario::new(name, overrides);
    let sample = tools().sample.display().to_string();
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample]);
    s.run_until_idle();
    let ids: Vec<String> = s.archived("default", false).iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids.len(), 2, "the sample is two windows");
    (s, ids)
}

fn parsed(status: u16, body: &str) -> (u16, Value) {
    (status, serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}")))
}

#[test]
fn r13_a_body_without_a_json_content_type_labels_and_searches_nothing() {
    let (s, ids) = archived_scenario("r13-content-type", &[]);
    let port = free_port();
    let server = serve(&s, port);
    let label = json!({ "labels": [{ "segment_id": ids[0], "label": "Turdus merula" }] }).to_string();
    let search = json!({ "segment_id": ids[0], "k": 1 }).to_string();

    // What a page elsewhere can send without the browser asking first: no content type, or text/plain.
    for (path, body) in [("/v1/labels", &label), ("/v1/search", &search)] {
        let (status, answer) = parsed_http(port, path, &[], body);
        assert_eq!(status, 415, "{path} without a content type → {answer}");
        assert_eq!(answer["error"]["status"].as_u64(), Some(415), "{answer}");
        assert!(reason(&answer).contains("no content type"), "{answer}");
        assert!(reason(&answer).contains("application/json"), "{answer}");
        let (status, answer) = parsed_http(port, path, &[("Content-Type", "text/plain")], body);
        assert_eq!(status, 415, "{path} as text/plain → {answer}");
        assert!(reason(&answer).contains("application/json"), "{answer}");
    }
    let (status, answer) = parsed_http(port, "/v1/labels", &[("Content-Type", "audio/wav")], &label);
    assert_eq!(status, 415, "{answer}");

    // Said to be JSON, the same bodies are taken.
    let json_type = [("Content-Type", "application/json; charset=utf-8")];
    let (status, answer) = parsed_http(port, "/v1/search", &json_type, &search);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["queries"][0]["hits"][0]["segment_id"].as_str(), Some(ids[1].as_str()), "{answer}");
    let (status, answer) = parsed_http(port, "/v1/labels", &json_type, &label);
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(1)), "{answer}");

    // The broker took the label before the 202: had a refused request produced one, it would be here too.
    let records = s.consume(&s.labels_topic, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].key.as_deref(), Some(ids[0].as_str()));
    assert_eq!(records[0].payload, b"Turdus merula");
    stop(&s, server);
}

fn parsed_http(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let (status, body) = http(port, "POST", path, headers, body.as_bytes()).expect("the API answers");
    parsed(status, &body)
}

#[test]
fn r13_the_api_and_the_page_answer_only_to_ip_addresses_localhost_and_allowed_hosts() {
    let port = free_port();
    let s = Scenario::new("r13-hosts", &[("api.allowed_hosts", vec![toml::Value::from("Chorus.Test")].into())]);
    let server = serve(&s, port);
    let get = |host: Option<&str>, path: &str| {
        let (status, body) = http_with_host(port, "GET", path, host, &[], b"").expect("the server answers");
        (status, body)
    };

    let answered = [
        "127.0.0.1".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LocalHost".to_owned(),
        format!("[::1]:{port}"),
        format!("chorus.test:{port}"),
        "CHORUS.TEST.".to_owned(),
    ];
    for host in &answered {
        for path in ["/", "/search", "/v1/spaces"] {
            assert_eq!(get(Some(host), path).0, 200, "Host: {host}, {path}");
        }
    }

    let refused = [
        ("evil.example", "evil.example"),
        ("evil.example:80", "evil.example"),
        ("localhost.evil.example", "localhost.evil.example"),
        ("127.0.0.1.evil.example", "127.0.0.1.evil.example"),
        ("chorus.test.evil.example", "chorus.test.evil.example"),
        ("chorus.test:http", "chorus.test:http"),
        ("[::1", "[::1"),
    ];
    for (host, named) in refused {
        for path in ["/", "/search", "/v1/spaces", "/v1/segments?limit=1", "/v1/nowhere"] {
            let (status, answer) = parsed_pair(get(Some(host), path));
            assert_eq!(status, 421, "Host: {host}, {path} → {answer}");
            assert_eq!(answer["error"]["status"].as_u64(), Some(421), "{answer}");
            assert!(reason(&answer).contains(&format!("'{named}'")), "{answer}");
            assert!(reason(&answer).contains("api.allowed_hosts"), "{answer}");
        }
        let search = json!({ "vector": [0.0], "k": 1 }).to_string();
        let headers = [("Content-Type", "application/json")];
        let (status, _) = http_with_host(port, "POST", "/v1/search", Some(host), &headers, search.as_bytes()).unwrap();
        assert_eq!(status, 421, "POST, Host: {host}");
    }

    // A target in absolute form names the host, whatever the Host header says.
    let absolute =
        format!("GET http://evil.example:{port}/v1/spaces HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let (status, answer) = parsed_pair(http_raw(port, absolute.as_bytes()).unwrap());
    assert_eq!(status, 421, "{answer}");
    // No Host (HTTP/1.0), or two: refused.
    let (status, answer) = parsed_pair(http_raw(port, b"GET /v1/spaces HTTP/1.0\r\n\r\n").unwrap());
    assert_eq!(status, 400, "{answer}");
    assert!(reason(&answer).contains("no Host header"), "{answer}");
    let (status, _) = get(None, "/");
    assert_eq!(status, 400);
    let two = b"GET /v1/spaces HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let (status, answer) = parsed_pair(http_raw(port, two).unwrap());
    assert_eq!(status, 400, "{answer}");

    // The probes and metrics are not the API: they answer whatever the host.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(Some("evil.example"), path).0, 200, "{path}");
    }
    stop(&s, server);
}

fn parsed_pair((status, body): (u16, String)) -> (u16, Value) {
    parsed(status, &body)
}

#[test]
fn r13_a_search_by_a_segment_no_index_holds_is_404_at_once_without_reading_the_archive() {
    let (s, ids) = archived_scenario("r13-unknown-segment", &[]);
    let port = free_port();
    let server = serve(&s, port);
    // A file in the archive that cannot be read: a request that reads the archive fails on it.
    let day = std::fs::read_dir(s.archive.join("space=default")).unwrap().next().unwrap().unwrap().path();
    std::fs::write(day.join("part-zzzzzzzz-damaged.parquet"), b"not parquet at all").unwrap();

    let (status, answer) = post_json(port, "/v1/search", &json!({ "segment_id": "00000000000000ff" }), None);
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["status"].as_u64(), Some(404), "{answer}");
    assert_eq!(reason(&answer), "segment 00000000000000ff is not in the archive (no index holds it)", "{answer}");
    // An indexed segment is searched from its index, as before.
    let (status, answer) = post_json(port, "/v1/search", &json!({ "segment_id": ids[0], "k": 1 }), None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["queries"][0]["hits"][0]["segment_id"].as_str(), Some(ids[1].as_str()), "{answer}");
    stop(&s, server);
}

/// A WAV file of `seconds` of silence, 16-bit at 8 kHz.
fn silence_wav(dir: &std::path::Path, seconds: usize) -> Vec<u8> {
    let path = dir.join(format!("silence-{seconds}s.wav"));
    write_wav_i16(&path, 8_000, &vec![0.0; seconds * 8_000]);
    std::fs::read(path).unwrap()
}

#[test]
fn r13_a_clip_longer_than_max_clip_seconds_is_refused_with_413_from_its_header() {
    let port = free_port();
    let s = Scenario::new("r13-clip-length", &[("api.max_clip_seconds", 10.into())]);
    let server = serve(&s, port);
    let wav = [("Content-Type", "audio/wav")];
    let search = |body: &[u8]| parsed_pair(http(port, "POST", "/v1/search", &wav, body).expect("the API answers"));

    let (status, answer) = search(&silence_wav(s.dir.path(), 11));
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["status"].as_u64(), Some(413), "{answer}");
    assert!(reason(&answer).split_whitespace().any(|word| word == "11.0"), "{answer}");
    assert!(reason(&answer).contains("api.max_clip_seconds = 10"), "{answer}");

    // A header declaring two hours over a second of data: refused for its length, before a sample is read (reading
    // them would find the data cut short).
    let mut long = silence_wav(s.dir.path(), 1);
    assert_eq!(&long[36..40], b"data", "a canonical 44-byte header");
    long[40..44].copy_from_slice(&(7_200u32 * 8_000 * 2).to_le_bytes());
    let (status, answer) = search(&long);
    assert_eq!(status, 413, "{answer}");
    assert!(reason(&answer).split_whitespace().any(|word| word == "7200.0"), "{answer}");

    // At the limit, it is searched: two windows of 5 s.
    let (status, answer) = search(&silence_wav(s.dir.path(), 10));
    assert_eq!(status, 200, "{answer}");
    let queries: Vec<&str> =
        answer["queries"].as_array().unwrap().iter().map(|q| q["query"].as_str().unwrap()).collect();
    assert_eq!(queries, ["clip@0s", "clip@5s"], "{answer}");
    stop(&s, server);
}

#[test]
fn r13_a_search_query_string_that_does_not_parse_is_a_json_400_naming_the_field() {
    let port = free_port();
    let s = Scenario::new("r13-query-string", &[]);
    let server = serve(&s, port);
    let clip = silence_wav(s.dir.path(), 1);
    let cases = [
        ("/v1/search?k=abc", "k: invalid digit found in string"),
        ("/v1/search?k=5&ef=-1", "ef: invalid digit found in string"),
        ("/v1/search?refined=maybe", "refined: "),
    ];
    for (path, says) in cases {
        let (status, body) = http(port, "POST", path, &[("Content-Type", "audio/wav")], &clip).unwrap();
        let (status, answer) = parsed(status, &body);
        assert_eq!(status, 400, "{path} → {answer}");
        assert_eq!(answer["error"]["status"].as_u64(), Some(400), "{answer}");
        assert!(reason(&answer).contains(says), "{path} → {answer}");
    }
    let (status, body) = http(port, "GET", "/v1/segments?limit=abc", &[], b"").unwrap();
    let (status, answer) = parsed(status, &body);
    assert_eq!(status, 400, "{answer}");
    assert!(reason(&answer).contains("limit: invalid digit found in string"), "{answer}");
    stop(&s, server);
}

#[test]
fn r13_the_bearer_scheme_is_matched_in_any_case_and_the_token_exactly() {
    let port = free_port();
    let s = Scenario::new("r13-bearer", &[("api.token", TOKEN.into())]);
    let server = serve(&s, port);
    let spaces = |authorization: &str| {
        let (status, body) = http(port, "GET", "/v1/spaces", &[("Authorization", authorization)], b"").unwrap();
        parsed(status, &body)
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, answer) = spaces(&format!("{scheme} {TOKEN}"));
        assert_eq!(status, 200, "{scheme} → {answer}");
    }
    let wrong = [format!("Bearer {}", TOKEN.to_uppercase()), format!("Bearer {TOKEN}x"), format!("Basic {TOKEN}")];
    for authorization in &wrong {
        let (status, answer) = spaces(authorization);
        assert_eq!(status, 401, "{authorization} → {answer}");
    }
    stop(&s, server);
}
