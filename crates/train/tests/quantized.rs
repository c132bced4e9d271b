//! `loraplus` on a quantized frozen base (issue #14), end to end on the real MiniLM and real
//! SST-2 rows, tiny budgets: bad quantization input exits 2 naming the value; an adapter
//! trained on an int8 base loads in PEFT on the full-precision base with loraplus' own
//! full-precision logits, row by row; `merge --quantize` writes the dequantized base plus the
//! adapter, which transformers runs with the logits loraplus gets on the quantized base.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraplus"));
    c.env("LORAPLUS_LOG", "warn");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn glue() -> PathBuf {
    std::env::var("GLUE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared/glue"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("running loraplus")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// 6 steps of 8 sentences of at most 32 tokens; LoRA on query and value, random classifier.
fn tiny_config(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(
        &p,
        format!(
            "task = \"sst2\"\noutput_dir = \"{}\"\nmax_seq_len = 32\nbatch_size = 8\nmax_steps = 6\ntrain_limit = 256\neval_limit = 32\neval_every = 0\nlog_every = 2\nthreads = 1\n[lora]\nr = 4\nlora_alpha = 8\n[optim]\nlr = 5e-3\n",
            dir.join("out").display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn bad_quantization_input_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--quantize", "nf4"], &["\"nf4\"", "int8", "int4"]),
        (
            &["--quantize", "int4", "--quant-group-size", "48"],
            &["48", "[32, 64, 128, 256]"],
        ),
        (
            &["--quant-group-size", "64"],
            &["quant_group_size", "quantize"],
        ),
        // MiniLM's linears are 384 and 1536 wide: 256 divides neither 384 nor the layer named.
        (
            &["--quantize", "int4", "--quant-group-size", "256"],
            &[
                "in_features 384",
                "group size 256",
                "bert.encoder.layer.0.attention.self.query",
            ],
        ),
    ];
    for (flags, needles) in cases {
        let mut args = vec!["train", "--config", cfg, "--no-progress"];
        args.extend_from_slice(flags);
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{flags:?}: no {n:?} in: {err}");
        }
        assert!(!err.contains("panicked"), "{flags:?}: {err}");
    }
    let o = run(&[
        "eval",
        "--task",
        "sst2",
        "--adapter",
        cfg,
        "--quantize",
        "int3",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("int3"), "{}", stderr(&o));
}

fn logits(value: &serde_json::Value) -> Vec<Vec<f64>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// `loraplus eval --predictions` on the first `n` dev rows: every row's logits.
fn eval_logits(dir: &Path, adapter: &Path, n: usize, quant: &[&str], name: &str) -> Vec<Vec<f64>> {
    let path = dir.join(format!("{name}.jsonl"));
    let n = n.to_string();
    let mut args = vec![
        "eval",
        "--adapter",
        adapter.to_str().unwrap(),
        "--task",
        "sst2",
        "--limit",
        &n,
        // The reference's truncation (the run trained at 32).
        "--max-seq-len",
        "128",
        "--predictions",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(quant);
    let o = run(&args);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            logits(&serde_json::json!([row["logits"]]))[0].clone()
        })
        .collect()
}

/// transformers (+ PEFT with an adapter) on the first `n` dev rows.
fn reference_logits(model: &Path, adapter: Option<&Path>, n: usize) -> Vec<Vec<f64>> {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `make setup`",
        python.display()
    );
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/quantized_peft_ref.py");
    let o = Command::new(python)
        .arg(script)
        .args([
            model.to_str().unwrap(),
            adapter.map_or("-", |a| a.to_str().unwrap()),
            glue().to_str().unwrap(),
            &n.to_string(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    logits(&v["logits"])
}

/// Row by row, every logit within `tol`; returns the largest difference.
fn assert_rows_close(what: &str, ours: &[Vec<f64>], theirs: &[Vec<f64>], tol: f64) -> f64 {
    assert_eq!(ours.len(), theirs.len(), "{what}: row count");
    let mut worst: f64 = 0.0;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: row {i}");
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            assert!(d <= tol, "{what}: row {i}: {a:?} vs {b:?}");
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn an_int8_trained_adapter_loads_in_peft_and_merges_from_the_dequantized_base() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let o = run(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--no-progress",
        "--quantize",
        "int8",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // The start-of-run summary: the base's bytes before and after.
    let line = err
        .lines()
        .find(|l| l.starts_with("base quantized int8:"))
        .unwrap_or_else(|| panic!("no quantization summary in: {err}"));
    assert!(
        line.contains("MiB ->") && line.contains("linear weights"),
        "{line}"
    );
    let adapter = dir.path().join("out/adapter");
    let base = repo().join(".venv/minilm");
    let n = 48;

    // Evaluated without --quantize, the run's quantized base is pointed out.
    let o = run(&[
        "eval",
        "--adapter",
        adapter.to_str().unwrap(),
        "--limit",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "trained on the base quantized int8; this evaluates it on the full-precision base"
        ),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "eval",
        "--adapter",
        adapter.to_str().unwrap(),
        "--limit",
        "4",
        "--quantize",
        "int8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("full-precision base"),
        "{}",
        stderr(&o)
    );

    // On the full-precision base: loraplus and PEFT agree row by row.
    let ours_full = eval_logits(dir.path(), &adapter, n, &[], "full");
    let peft = reference_logits(&base, Some(&adapter), n);
    assert_rows_close(
        "PEFT on the f32 base vs loraplus on the f32 base",
        &ours_full,
        &peft,
        1e-4,
    );

    // On the int8 base the logits move, but little (the adapter trained there).
    let ours_int8 = eval_logits(dir.path(), &adapter, n, &["--quantize", "int8"], "int8");
    let moved = assert_rows_close("int8 base vs f32 base", &ours_int8, &ours_full, 0.05);
    assert!(
        moved > 0.0,
        "the int8 base gives exactly the f32 logits: is it quantized?"
    );

    // Merged without --quantize, into the full-precision base: said.
    let o = run(&[
        "merge",
        "--adapter",
        adapter.to_str().unwrap(),
        "--output",
        dir.path().join("merged-f32").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "trained on the base quantized int8; this merges it into the full-precision base"
        ),
        "{}",
        stderr(&o)
    );

    // merge --quantize int8: the dequantized base plus the adapter, in full precision;
    // transformers on it gives loraplus' logits on the quantized base.
    let merged = dir.path().join("merged");
    let o = run(&[
        "merge",
        "--adapter",
        adapter.to_str().unwrap(),
        "--task",
        "sst2",
        "--quantize",
        "int8",
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("full-precision base"),
        "{}",
        stderr(&o)
    );
    let merged_logits = reference_logits(&merged, None, n);
    assert_rows_close(
        "transformers on the merged int8 model vs loraplus on the int8 base",
        &ours_int8,
        &merged_logits,
        1e-4,
    );
}
