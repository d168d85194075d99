//! The shipped profiles, and how bad config files are reported.

use chorus::config::Config;
use chorus_operators::metrics;

use crate::support::root;

#[test]
fn r2_every_shipped_profile_parses_and_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.model.window, 160_000, "{}: the stand-in model takes 5 s at 32 kHz", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "config/ should hold at least balanced.toml and low-latency.toml");
}

#[test]
fn r2_an_unknown_key_is_an_error_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    let text = std::fs::read_to_string(root().join("config/balanced.toml")).unwrap();
    std::fs::write(&path, text.replace("hop_seconds = 5.0", "hop_seconds = 5.0\nhop_secs = 2.5")).unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(error.starts_with(&path.display().to_string()), "{error}");
    assert!(error.contains("unknown field `hop_secs`"), "{error}");

    // The command line reports the same, and exits with failure.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["run", "--config", &path.display().to_string()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `hop_secs`"));
}

#[test]
fn r21_kafka_properties_load_with_names_quoted_or_not_and_chorus_own_ones_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kafka.toml");
    let text = std::fs::read_to_string(root().join("config/balanced.toml")).unwrap();
    let properties = "\n[kafka.properties]\nclient.id = \"pole-station\"\n\"socket.keepalive.enable\" = true\n";
    let with = |extra: &str| {
        // The table goes right after [kafka]'s own keys, before the next section.
        let at = text.find("\n[model]").unwrap();
        format!("{}{properties}{extra}{}", &text[..at], &text[at..])
    };
    std::fs::write(&path, with("")).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let properties = &config.kafka.security.properties;
    assert_eq!(properties.get("client.id").map(String::as_str), Some("pole-station"));
    assert_eq!(properties.get("socket.keepalive.enable").map(String::as_str), Some("true"));
    std::fs::write(&path, with("enable.auto.commit = true\n")).unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(error.starts_with(&path.display().to_string()), "{error}");
    assert!(error.contains("'enable.auto.commit' is chorus's own"), "{error}");
}

#[test]
fn r6_the_grafana_dashboard_charts_every_metric_and_only_metrics_that_exist() {
    let path = root().join("config/grafana/chorus.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut charted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{panel}: no targets"));
        assert!(!targets.is_empty(), "{panel}: no targets");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{target}: no expr"));
            for (at, _) in expr.match_indices("chorus_") {
                let name: String = expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|f| metrics::ALL.contains(f)))
                    .unwrap_or(&name)
                    .to_owned();
                assert!(metrics::ALL.contains(&family.as_str()), "{}: {name} is not a chorus metric", path.display());
                charted.insert(family);
            }
        }
    }
    let missing: Vec<&&str> = metrics::ALL.iter().filter(|m| !charted.contains(**m)).collect();
    assert!(missing.is_empty(), "{}: no panel charts {missing:?}", path.display());
}

#[test]
fn r6_every_subcommand_teaches_with_an_example_in_its_help() {
    let chorus = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chorus")).args(args).output().unwrap();
        assert!(output.status.success(), "chorus {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let top = chorus(&["--help"]);
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    for expected in ["run", "produce", "query", "archive", "prune", "spectrogram", "serve", "bench-query"] {
        assert!(commands.iter().any(|c| c == expected), "{expected} missing from {commands:?}");
    }
    for command in &commands {
        let help = chorus(&[command, "--help"]);
        assert!(help.contains("Examples:\n  chorus "), "chorus {command} --help shows no example:\n{help}");
        assert!(help.contains("-v, --verbose") && help.contains("-q, --quiet"), "chorus {command} --help: -v/-q");
    }
}
