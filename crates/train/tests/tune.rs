//! `loraplus tune` end to end on the real MiniLM and SST-2 rows, tiny budgets: successive
//! halving writes the table, the chosen config (which `train --config` takes) and heatmaps; a
//! second run reuses every finished trial and trains nothing; bad grids exit 2 with a message.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loraplus"))
        .env("LORAPLUS_LOG", "warn")
        .args(args)
        .output()
        .expect("running loraplus")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn config(dir: &Path) -> String {
    let p = dir.join("base.toml");
    std::fs::write(
        &p,
        "task = \"sst2\"\nmax_seq_len = 32\nbatch_size = 8\nmax_steps = 4\ntrain_limit = 64\neval_limit = 24\nthreads = 1\n[lora]\nr = 2\nlora_alpha = 4\n",
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn tune_writes_the_table_config_and_heatmaps_and_reuses_trials() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let out = dir.path().join("tune");
    let args = [
        "tune",
        "--config",
        &cfg,
        "--lrs",
        "1e-4,1e-3",
        "--ratios",
        "1,16",
        "--min-steps",
        "2",
        "--early-rank",
        "loss",
        "--head-lr",
        "1e-3",
        "--seeds",
        "7",
        "--output-dir",
        out.to_str().unwrap(),
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // 4 cells x 2 steps, then the better 2 x 4 steps: 6 trials, 16 of 16 steps... of 4 x 4.
    assert!(stdout.contains("6 trials (6 run now)"), "{stdout}");
    assert!(stdout.contains("100% of the full grid"), "{stdout}");
    for f in [
        "tune_results.md",
        "tune_results.json",
        "best.toml",
        "trials.jsonl",
        "heatmap_rung0.png",
        "heatmap_rung0.svg",
        "heatmap_last.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.join("tune_results.md")).unwrap();
    assert!(md.contains("(best)"), "{md}");
    // Rung 0 is ranked by the eval loss: the two cells of rung 1 are its two lowest losses.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tune_results.json")).unwrap())
            .unwrap();
    let scores = json["scores"].as_array().unwrap();
    let cell = |s: &serde_json::Value| (s["lr"].as_f64().unwrap(), s["ratio"].as_f64().unwrap());
    let mut rung0: Vec<&serde_json::Value> = scores.iter().filter(|s| s["rung"] == 0).collect();
    assert_eq!(rung0.len(), 4, "{json}");
    assert!(rung0.iter().all(|s| s["ranked_by"] == "loss"), "{json}");
    rung0.sort_by(|a, b| {
        a["loss"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["loss"].as_f64().unwrap())
    });
    let mut kept: Vec<(f64, f64)> = rung0[..2].iter().map(|s| cell(s)).collect();
    let mut rung1: Vec<(f64, f64)> = scores
        .iter()
        .filter(|s| s["rung"] == 1)
        .map(|s| {
            assert_eq!(s["ranked_by"], "metric", "{s}");
            cell(s)
        })
        .collect();
    kept.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rung1.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(kept, rung1, "{json}");
    // Each trial's loss is the one its own run logged at its final evaluation.
    for t in json["trials"].as_array().unwrap() {
        let key = format!(
            "lr-{}_ratio-{}_seed-{}_steps-{}",
            t["lr"].as_f64().unwrap(),
            t["ratio"].as_f64().unwrap(),
            t["seed"],
            t["steps"]
        );
        let log = std::fs::read_to_string(out.join("trials").join(&key).join("metrics.jsonl"))
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let last_eval: serde_json::Value = log
            .lines()
            .rfind(|l| l.contains("\"kind\":\"eval\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap();
        assert_eq!(t["loss"], last_eval["loss"], "{key}");
        assert!(t["loss"].as_f64().unwrap() > 0.0, "{key}");
    }
    // The chosen config trains as it is (the trials' seed, the head lr held fixed) to the
    // metric tune reported.
    let best = std::fs::read_to_string(out.join("best.toml")).unwrap();
    assert!(best.contains("head_lr = 0.001"), "{best}");
    assert!(best.contains("seed = 7"), "{best}");
    let o = run(&[
        "train",
        "--config",
        out.join("best.toml").to_str().unwrap(),
        "--no-progress",
        "--output-dir",
        dir.path().join("best-run").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let reported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tune_results.json")).unwrap())
            .unwrap();
    let retrained: serde_json::Value =
        std::fs::read_to_string(dir.path().join("best-run/metrics.jsonl"))
            .unwrap()
            .lines()
            .rfind(|l| l.contains("\"kind\":\"eval\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap();
    assert_eq!(
        retrained["main"], reported["best_metric"],
        "{retrained} vs {reported}"
    );

    // Again: every trial reused, nothing trained.
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let again = String::from_utf8_lossy(&o.stdout);
    assert!(again.contains("6 trials (0 run now)"), "{again}");
    assert!(
        !text(&o).contains("] rung"),
        "a trial ran again: {}",
        text(&o)
    );
}

#[test]
fn bad_grids_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    for (flag, value, needle) in [
        ("--lrs", "1e-4,0", "--lrs"),
        ("--lrs", "-1e-3", "positive"),
        ("--ratios", "16,-2", "--ratios"),
        ("--eta", "1", "--eta"),
        ("--early-rank", "accuracy", "--early-rank"),
    ] {
        let o = run(&["tune", "--config", &cfg, &format!("{flag}={value}")]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", text(&o));
        assert!(text(&o).contains(needle), "{flag} {value}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
    // A negative value after a space is a value, not a flag: the grid's own message.
    let o = run(&["tune", "--config", &cfg, "--lrs", "-1e-3,1e-3"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("positive") && !text(&o).contains("unexpected argument"),
        "{}",
        text(&o)
    );
    let o = run(&["tune", "--config", &cfg, "--min-steps", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--min-steps 0"), "{}", text(&o));
    let o = run(&["tune", "--config", &cfg, "--lrs", ""]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&["tune", "--config", &cfg, "--max-steps", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
