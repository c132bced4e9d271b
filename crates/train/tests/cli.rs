//! The `loraplus` command end to end, on the real MiniLM and real GLUE rows, tiny budgets:
//! exit codes and messages for bad configs, a training run with its outputs, exact resume
//! after SIGINT in fresh processes, a kill -9 during checkpointing, eval of a PEFT-written
//! adapter against PEFT's own predictions, and merge into a model transformers loads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraplus"));
    c.env("LORAPLUS_LOG", "warn");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(p.exists(), "{} not found: run `make setup`", p.display());
    p
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("running loraplus")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A tiny budget: 8 steps of 8 sentences of at most 32 tokens, evaluated on 32 dev sentences.
/// `o` exited 2 (the user's input refused) and its error output holds `needle`.
fn refused(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    assert!(stderr(o).contains(needle), "{}", stderr(o));
}

fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(
        &p,
        format!(
            "task = \"sst2\"\noutput_dir = \"{}\"\nmax_seq_len = 32\nbatch_size = 8\nmax_steps = 8\ntrain_limit = 256\neval_limit = 32\nlog_every = 2\nthreads = 1\n{extra}\n[lora]\nr = 4\nlora_alpha = 8\n",
            dir.join("out").display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn config_errors_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("tsak = \"sst2\"\n", "unknown field `tsak`"),
        ("batch_size = \"big\"\n", "batch_size"),
        ("task = \"sst3\"\n", "sst3"),
        ("[optim]\nratio = 2.0\n", "loraplus_ratio"),
        ("[optim]\nlr = -1e-3\n", "optim.lr"),
        ("[optim]\nloraplus_ratio = 0.0\n", "optim.loraplus_ratio"),
        ("[lora]\nlora_dropout = 1.5\n", "lora.lora_dropout"),
        ("max_steps = 0\n", "max_steps"),
        ("threads = 100000\n", "threads"),
        ("bucket_multiplier = 0\n", "bucket_multiplier"),
        (
            "task = \"classification\"\ntrain_file = \"x.csv\"\nearly_stopping_patience = 2\n",
            "field `early_stopping_patience` needs evaluation data",
        ),
        (
            "task = \"classification\"\nlabels = []\n",
            "a classifier needs at least two",
        ),
    ];
    for (text, needle) in cases {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let o = run(&["train", "--config", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{text}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{text}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    let o = run(&["train", "--config", "/nonexistent/x.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/x.toml"), "{}", stderr(&o));
    let o = run(&["train", "--task", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope"));
    let o = run(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    // Data parallel on this node: the launcher refuses a bad config or rank count itself.
    let o = run(&["train", "--nproc-per-node", "2", "--batch-size", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("batch_size"), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("rank"),
        "no rank started: {}",
        stderr(&o)
    );
    let o = run(&["train", "--nproc-per-node", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--nproc-per-node"), "{}", stderr(&o));
    // Flags the command would ignore, and data files that are not there: exit 2 before any
    // model loads, naming the flag.
    let missing = dir.path().join("missing.csv");
    let missing = missing.to_str().unwrap();
    let folder = dir.path().to_str().unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let a_file = a_file.to_str().unwrap();
    let under_a_file = format!("{a_file}/run");
    let flag_cases: &[(&[&str], &str)] = &[
        (
            &["eval", "--task", "sst2", "--limit", "0"],
            "--limit must be at least 1, found 0",
        ),
        (
            &["train", "--task", "sst2", "--output-dir", a_file],
            "is a file, not a folder",
        ),
        // A folder under a file cannot be made: said before the data and the model load.
        (
            &["train", "--task", "sst2", "--output-dir", &under_a_file],
            "cannot be written",
        ),
        (
            &["train", "--task", "sst2", "--metric", "f1"],
            "task \"sst2\" does not read `metric` (--metric)",
        ),
        (
            &["train", "--task", "sst2", "--train-file", missing],
            "does not read `train_file` (--train-file)",
        ),
        (
            &["train", "--task", "classification", "--train-file", missing],
            "missing.csv is not found",
        ),
        (
            &["train", "--task", "classification", "--train-file", folder],
            "is a folder",
        ),
        (
            &[
                "train",
                "--task",
                "causal-lm",
                "--train-file",
                missing,
                "--labels",
                "a,b",
            ],
            "does not read `labels` (--labels)",
        ),
        (
            &["eval", "--task", "sst2", "--split", "test", "--limit", "3"],
            "--limit and --predictions are for --split dev",
        ),
        (
            &["eval", "--task", "sst2", "--output", "x.tsv"],
            "--output is where --split test",
        ),
        (
            &["eval", "--task", "sst2", "--split", "train"],
            "--split must be dev or test",
        ),
        (
            &[
                "eval",
                "--task",
                "causal-lm",
                "--eval-file",
                missing,
                "--packing",
            ],
            "--packing is for training",
        ),
        (
            &["glue", "--tasks", "sst2", "--seed", "3", "--ratio", "4"],
            "glue sweeps lists and does not read --ratio (give --ratios), --seed (give --seeds)",
        ),
        (
            &["tune", "--task", "sst2", "--lr", "1e-3"],
            "tune sweeps lists and does not read --lr (give --lrs)",
        ),
        (
            &[
                "eval",
                "--task",
                "multiple-choice",
                "--eval-file",
                missing,
                "--split",
                "test",
            ],
            "not for multiple-choice",
        ),
        (
            &[
                "generate",
                "--model",
                folder,
                "--prompt",
                "hi",
                "--temperature",
                "0.5",
            ],
            "--do-sample",
        ),
        (
            &["generate", "--model", folder, "--prompt", "hi", "--merge"],
            "--adapter",
        ),
        (
            &[
                "generate", "--model", folder, "--prompt", "hi", "--seed", "3",
            ],
            "--do-sample",
        ),
    ];
    for (args, needle) in flag_cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    // A model that is not there: exit 2 naming it, before the run's folder is made.
    let out_dir = dir.path().join("run");
    let out_dir = out_dir.to_str().unwrap();
    let no_model = dir.path().join("no-model");
    let no_model = no_model.to_str().unwrap();
    let o = run(&[
        "train",
        "--task",
        "sst2",
        "--model",
        no_model,
        "--output-dir",
        out_dir,
    ]);
    refused(&o, &format!("--model {no_model} does not exist"));
    assert!(
        !Path::new(out_dir).exists(),
        "no run folder for a bad model"
    );
    let o = bin()
        .env("LORAPLUS_MODEL_DIR", no_model)
        .args(["train", "--task", "sst2", "--output-dir", out_dir])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the default model is not there") && stderr(&o).contains(no_model),
        "{}",
        stderr(&o)
    );
    assert!(
        !Path::new(out_dir).exists(),
        "no run folder for a bad model"
    );
    // --adapter naming no adapter: what the folder is instead.
    let unfinished = dir.path().join("unfinished");
    let step = unfinished.join("checkpoints/step-000004");
    std::fs::create_dir_all(&step).unwrap();
    std::fs::write(step.join("trainer_state.json"), "{}").unwrap();
    let unfinished = unfinished.to_str().unwrap();
    let adapter_cases = [
        (no_model.to_string(), "does not exist".to_string()),
        (
            unfinished.to_string(),
            format!("holds no adapter yet (an unfinished run): pass a checkpoint, e.g. its newest {unfinished}/checkpoints/step-000004"),
        ),
        (
            step.join("trainer_state.json").to_str().unwrap().to_string(),
            "is a file".to_string(),
        ),
    ];
    // With --task, and without (the task would come from the adapter's run).
    for (path, needle) in &adapter_cases {
        for (cmd, task) in [
            ("eval", "sst2"),
            ("merge", "sst2"),
            ("eval", ""),
            ("merge", ""),
        ] {
            let mut args = vec![cmd, "--adapter", path];
            if !task.is_empty() {
                args.extend(["--task", task]);
            }
            if cmd == "merge" {
                args.extend(["--output", out_dir]);
            }
            let o = run(&args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
            assert!(
                stderr(&o).contains(&format!("--adapter {path} {needle}")),
                "{args:?}: {}",
                stderr(&o)
            );
        }
    }
    // LoRA settings loraplus-core refuses: exit 2 with its message.
    let bad_lora = dir.path().join("bad-lora.toml");
    std::fs::write(
        &bad_lora,
        format!(
            "task = \"sst2\"\noutput_dir = \"{out_dir}\"\nmax_steps = 1\ntrain_limit = 16\neval_limit = 16\nmax_seq_len = 16\n[lora]\ntarget_modules = [\"q_proj\"]\n"
        ),
    )
    .unwrap();
    let o = run(&["train", "--config", bad_lora.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("target_modules [\"q_proj\"] matches no module")
            && stderr(&o).contains("bert.encoder.layer.{i}.attention.self.query (6)"),
        "{}",
        stderr(&o)
    );
    // --resume naming nothing resumable.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (path, needle) in [
        (no_model, "does not exist"),
        (empty.to_str().unwrap(), "is neither a checkpoint"),
    ] {
        let o = run(&["train", "--task", "sst2", "--resume", path]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("--resume {path} {needle}")),
            "{}",
            stderr(&o)
        );
    }
}

/// A model folder whose files are not a usable checkpoint, a device this process lacks, an
/// adapter that does not fit the model, a max_seq_len beyond the position table, a batch the
/// ranks cannot share: exit 2 naming the file, key or field, before any training.
#[test]
fn unusable_models_devices_and_adapters_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = repo().join(".venv/minilm");
    let config = std::fs::read_to_string(minilm.join("config.json")).unwrap();
    let model = |name: &str, config: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), config).unwrap();
        std::fs::copy(minilm.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
        d
    };
    // A non-float tensor (an integer LayerNorm weight used to panic inside the forward).
    let tensors = tch::Tensor::read_safetensors(minilm.join("model.safetensors")).unwrap();
    let key = "encoder.layer.0.output.LayerNorm.weight";
    let cast: Vec<(String, tch::Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| {
            let t = if k == key {
                t.to_kind(tch::Kind::Int64)
            } else {
                t
            };
            (k, t)
        })
        .collect();
    let int_weight = model("int-weight", &config);
    tch::Tensor::write_safetensors(&cast, int_weight.join("model.safetensors")).unwrap();
    let not_st = model("not-safetensors", &config);
    std::fs::write(not_st.join("model.safetensors"), b"not a checkpoint").unwrap();
    let no_layers = model(
        "no-layers",
        &config.replace("\"num_hidden_layers\": 6", "\"num_hidden_layers\": 0"),
    );
    let not_json = model("not-json", "{\"model_type\": \"bert\",");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(PathBuf, String)> = vec![
        (
            int_weight.clone(),
            format!("tensor {key} has dtype I64, expected a floating-point weight"),
        ),
        (not_st.clone(), "not a valid safetensors file".into()),
        (
            no_layers.clone(),
            "the number of layers must be at least 1, found 0".into(),
        ),
        (not_json.clone(), "parsing config JSON".into()),
    ];
    let out = dir.path().join("out");
    for (m, needle) in &cases {
        let o = run(&[
            "train",
            "--task",
            "sst2",
            "--model",
            &s(m),
            "--max-steps",
            "1",
            "--output-dir",
            &s(&out),
            "--overwrite-output-dir",
        ]);
        assert_eq!(o.status.code(), Some(2), "{m:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{m:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&s(m)),
            "names the folder: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    // A device this process does not have, for every command that takes one.
    let gpus = tch::Cuda::device_count();
    let absent = format!("cuda:{gpus}");
    for args in [
        vec!["train", "--task", "sst2", "--device", &absent],
        vec![
            "eval",
            "--task",
            "sst2",
            "--adapter",
            "x",
            "--device",
            &absent,
        ],
        vec![
            "generate", "--model", "x", "--prompt", "hi", "--device", &absent,
        ],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!(
                "{absent} requested, but libtorch sees {gpus} CUDA device(s)"
            )),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // max_seq_len beyond BERT's 512 positions: refused before training, naming the field.
    let o = run(&[
        "train",
        "--task",
        "sst2",
        "--max-seq-len",
        "600",
        "--output-dir",
        &s(&out),
        "--overwrite-output-dir",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("field `max_seq_len` (--max-seq-len) is 600")
            && stderr(&o).contains("has 512 positions"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("metrics.jsonl").exists(), "nothing trained");
    // A global batch the ranks cannot share: the launcher refuses it once.
    let o = run(&[
        "train",
        "--task",
        "sst2",
        "--batch-size",
        "3",
        "--nproc-per-node",
        "2",
        "--output-dir",
        &s(&out),
        "--overwrite-output-dir",
    ]);
    refused(
        &o,
        "batch_size 3 (the global batch) with grad_accum 1 over 2 ranks",
    );
    assert!(
        !stderr(&o).contains("launcher: rank"),
        "refused before any rank starts: {}",
        stderr(&o)
    );
    // An adapter whose tensors do not fit (r in the config differs from the weights'): exit 2
    // naming the file by its path.
    let run_dir = dir.path().join("run");
    let o = run(&[
        "train",
        "--config",
        tiny_config(dir.path(), "").to_str().unwrap(),
        "--max-steps",
        "1",
        "--output-dir",
        &s(&run_dir),
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let adapter = run_dir.join("adapter");
    let cfg_path = adapter.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["r"] = 8.into();
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let o = run(&[
        "eval",
        "--task",
        "sst2",
        "--adapter",
        &s(&adapter),
        "--limit",
        "4",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let weights = adapter.join("adapter_model.safetensors");
    assert!(
        stderr(&o).contains(&format!("{}: tensor base_model.model.", weights.display()))
            && stderr(&o).contains("expected [8, 384] (r=8, in_features=384)"),
        "{}",
        stderr(&o)
    );
    // An SST-2 run's adapter on MRPC (two classes too): refused by the task its run recorded.
    let o = run(&[
        "eval",
        "--task",
        "mrpc",
        "--adapter",
        &s(&run_dir),
        "--limit",
        "4",
    ]);
    refused(
        &o,
        "was trained on sst2 (its run's trainer_state.json), not mrpc",
    );
    // A head the checkpoint lacks, left out of modules_to_save: random and frozen, said so.
    let o = run(&[
        "train",
        "--config",
        tiny_config(dir.path(), "").to_str().unwrap(),
        "--max-steps",
        "1",
        "--output-dir",
        &s(&dir.path().join("frozen-head")),
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("random and frozen"), "{}", stderr(&o));
    let frozen = dir.path().join("frozen.toml");
    std::fs::write(
        &frozen,
        std::fs::read_to_string(tiny_config(dir.path(), "")).unwrap() + "modules_to_save = []\n",
    )
    .unwrap();
    let o = run(&[
        "train",
        "--config",
        &s(&frozen),
        "--max-steps",
        "1",
        "--output-dir",
        &s(&dir.path().join("frozen-head")),
        "--overwrite-output-dir",
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "classifier: initialised at random and frozen (modules_to_save does not list it)"
        ),
        "{}",
        stderr(&o)
    );
    // eval without --task: the task the adapter's run recorded.
    let o = run(&[
        "eval",
        "--adapter",
        &s(&dir.path().join("frozen-head")),
        "--limit",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("SST-2 Dev (4 examples)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // r above a layer's width: said once (MiniLM's layers are 384 wide).
    let wide = dir.path().join("wide.toml");
    std::fs::write(
        &wide,
        std::fs::read_to_string(tiny_config(dir.path(), ""))
            .unwrap()
            .replace("r = 4", "r = 400"),
    )
    .unwrap();
    let o = run(&[
        "train",
        "--config",
        &s(&wide),
        "--max-steps",
        "1",
        "--output-dir",
        &s(&dir.path().join("wide")),
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o)
            .matches("r 400 exceeds the layer's width min(384, 384) = 384")
            .count(),
        1,
        "{}",
        stderr(&o)
    );
    // A classifier's adapter for a causal-LM task: refused by its task_type.
    let merged = dir.path().join("merged");
    let o = run(&[
        "merge",
        "--task",
        "causal-lm",
        "--adapter",
        &s(&adapter),
        "--output",
        &s(&merged),
    ]);
    refused(&o, "the adapter was trained for task_type SEQ_CLS (adapter_config.json), this task needs CAUSAL_LM");
}

#[test]
fn info_reports_libtorch_and_the_default_model() {
    let o = run(&["info"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("libtorch: 2.11.0"), "{out}");
    assert!(
        out.contains("default model:") && out.contains("(found)"),
        "{out}"
    );
    assert!(
        out.contains("architectures (config.json model_type): bert, roberta")
            && out.contains("modernbert")
            && out.contains("causal LM: gpt2, llama"),
        "{out}"
    );
}

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap()
}

#[test]
fn train_then_sigint_and_resume_gives_the_same_adapter() {
    // Straight run.
    let a = tempfile::tempdir().unwrap();
    let cfg = tiny_config(a.path(), "");
    let o = run(&["train", "--config", cfg.to_str().unwrap(), "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        stdout.contains("steps: 8") && stdout.contains("dev: accuracy"),
        "{stdout}"
    );
    let out = a.path().join("out");
    for f in [
        "metrics.jsonl",
        "loss.png",
        "loss.svg",
        "dev_metric.png",
        "adapter/adapter_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"train\""))
            .count(),
        4
    );
    let straight = adapter_bytes(&out);

    // Interrupted with SIGINT once a few steps are logged, then resumed to the same budget.
    let b = tempfile::tempdir().unwrap();
    let cfg_b = tiny_config(b.path(), "");
    let mut child = bin()
        .args([
            "train",
            "--config",
            cfg_b.to_str().unwrap(),
            "--no-progress",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics_b = b.path().join("out/metrics.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&metrics_b).map_or(true, |m| m.lines().count() < 1) {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe_kill(child.id(), 2);
    let status = child.wait().unwrap();
    let ckpts = loraplus_train::checkpoint::list(&b.path().join("out")).unwrap();
    assert!(
        !ckpts.is_empty(),
        "no checkpoint after SIGINT (status {status:?})"
    );
    let (step, _) = ckpts.last().unwrap().clone();
    if step < 8 {
        assert_eq!(
            status.code(),
            Some(130),
            "an interrupted run exits with 130"
        );
    }
    let o = run(&[
        "train",
        "--config",
        cfg_b.to_str().unwrap(),
        "--no-progress",
        "--resume",
        b.path().join("out").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        adapter_bytes(&b.path().join("out")),
        straight,
        "resumed from step {step}: adapters differ"
    );
}

fn unsafe_kill(pid: u32, sig: i32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn kill_9_while_checkpointing_leaves_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "save_every = 1\nkeep_last = 3\n");
    let mut child = bin()
        .args(["train", "--config", cfg.to_str().unwrap(), "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = dir.path().join("out");
    let t0 = Instant::now();
    // Kill as soon as a second checkpoint directory (complete or not) appears.
    loop {
        let n = std::fs::read_dir(out.join("checkpoints")).map_or(0, |d| d.count());
        if n >= 2 || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    unsafe_kill(child.id(), 9);
    child.wait().unwrap();
    let o = run(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--no-progress",
        "--resume",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "resume after kill -9 failed: {}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("steps: 8"));
}

#[test]
fn eval_of_a_peft_written_adapter_matches_peft() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = repo().join(".venv/minilm");
    let glue = std::env::var("GLUE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared/glue"));
    let n = 96;
    let status = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/peft_eval_ref.py"))
        .args([
            model_dir.to_str().unwrap(),
            glue.to_str().unwrap(),
            dir.path().to_str().unwrap(),
            &n.to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("expected.json")).unwrap())
            .unwrap();
    let acc = expected["accuracy"].as_f64().unwrap();
    let preds_path = dir.path().join("ours.jsonl");
    let o = run(&[
        "eval",
        "--adapter",
        dir.path().join("adapter").to_str().unwrap(),
        "--task",
        "sst2",
        "--limit",
        &n.to_string(),
        "--predictions",
        preds_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains(&format!("accuracy {acc:.4}")),
        "PEFT accuracy {acc:.4}, loraplus: {out}"
    );
    // Row by row: the same prediction and logits (1e-4) for every sentence.
    let ours = read_predictions(&preds_path);
    let theirs_p = expected["predictions"].as_array().unwrap();
    let theirs_l = expected["logits"].as_array().unwrap();
    assert_eq!(ours.len(), n);
    assert_eq!(theirs_p.len(), n);
    for (i, (row, (p, l))) in ours.iter().zip(theirs_p.iter().zip(theirs_l)).enumerate() {
        assert_eq!(row["prediction"], *p, "row {i}");
        assert_close_row(i, &row["logits"], l);
    }
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));
    // The same adapter without its head (no modules_to_save): the classifier is random, and
    // eval says so.
    let headless = dir.path().join("headless");
    std::fs::create_dir(&headless).unwrap();
    let adapter = dir.path().join("adapter");
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    cfg["modules_to_save"] = serde_json::Value::Null;
    std::fs::write(headless.join("adapter_config.json"), cfg.to_string()).unwrap();
    let tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(adapter.join("adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.contains("classifier") && !k.contains("pooler"))
            .collect();
    tch::Tensor::write_safetensors(&tensors, headless.join("adapter_model.safetensors")).unwrap();
    let o = run(&[
        "eval",
        "--adapter",
        headless.to_str().unwrap(),
        "--task",
        "sst2",
        "--limit",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("classifier: neither in the checkpoint nor in the adapter"),
        "{}",
        stderr(&o)
    );
}

fn read_predictions(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_close_row(i: usize, ours: &serde_json::Value, theirs: &serde_json::Value) {
    let (a, b) = (ours.as_array().unwrap(), theirs.as_array().unwrap());
    assert_eq!(a.len(), b.len(), "row {i}");
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!((x - y).abs() < 1e-4, "row {i}: logits {a:?} vs {b:?}");
    }
}

#[test]
fn merge_writes_a_model_transformers_loads_with_the_same_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "");
    let o = run(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--no-progress",
        "--max-steps",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let merged = dir.path().join("merged");
    let o = run(&[
        "merge",
        "--adapter",
        dir.path().join("out/adapter").to_str().unwrap(),
        "--task",
        "sst2",
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Where merge may not write: a folder with files (without --overwrite), the adapter's
    // folder, the base model's folder (here the merged model as a base: the real default model
    // is never put at risk by a test). Refused before anything is read or written.
    let adapter = dir.path().join("out/adapter");
    let (adapter, merged_s) = (adapter.to_str().unwrap(), merged.to_str().unwrap());
    let before = std::fs::read(merged.join("model.safetensors")).unwrap();
    for (extra, needle) in [
        (vec!["--output", merged_s], "already holds files"),
        (vec!["--output", adapter], "the adapter's folder"),
        (
            vec!["--model", merged_s, "--output", merged_s, "--overwrite"],
            "the base model's folder",
        ),
    ] {
        let mut args = vec!["merge", "--adapter", adapter, "--task", "sst2"];
        args.extend(&extra);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{extra:?}: {}", stderr(&o));
    }
    assert_eq!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        before
    );
    assert!(!Path::new(adapter).join("model.safetensors").exists());
    let o = run(&[
        "merge",
        "--adapter",
        adapter,
        "--task",
        "sst2",
        "--output",
        merged_s,
        "--overwrite",
    ]);
    assert!(o.status.success(), "--overwrite: {}", stderr(&o));
    let preds_path = dir.path().join("ours.jsonl");
    let o = run(&[
        "eval",
        "--adapter",
        dir.path().join("out/adapter").to_str().unwrap(),
        "--task",
        "sst2",
        "--limit",
        "64",
        // transformers' truncation below (the run trained at 32).
        "--max-seq-len",
        "128",
        "--predictions",
        preds_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let script = r#"
import csv, sys, torch
from transformers import AutoTokenizer, AutoModelForSequenceClassification
m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
rows = list(csv.reader(open(sys.argv[2] + "/SST-2/dev.tsv"), delimiter="\t", quoting=csv.QUOTE_NONE))[1:65]
enc = tok([r[0] for r in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
with torch.no_grad():
    out = m(**enc).logits
import json
print(json.dumps({"predictions": out.argmax(-1).tolist(), "logits": out.tolist()}))
"#;
    let glue = std::env::var("GLUE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared/glue"));
    let o = Command::new(python())
        .args([
            "-c",
            script,
            merged.to_str().unwrap(),
            glue.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Row by row: transformers on the merged model against loraplus on the unmerged adapter.
    let theirs: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let ours = read_predictions(&preds_path);
    let (tp, tl) = (
        theirs["predictions"].as_array().unwrap(),
        theirs["logits"].as_array().unwrap(),
    );
    assert_eq!(ours.len(), 64);
    assert_eq!(tp.len(), 64);
    for (i, (row, (p, l))) in ours.iter().zip(tp.iter().zip(tl)).enumerate() {
        assert_eq!(row["prediction"], *p, "row {i}");
        assert_close_row(i, &row["logits"], l);
    }
}

#[test]
fn glue_runs_lora_and_loraplus_side_by_side_from_a_json_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("base.json");
    std::fs::write(
        &cfg,
        r#"{"max_seq_len": 32, "batch_size": 8, "max_steps": 3, "train_limit": 64, "eval_limit": 24, "eval_every": 1, "log_every": 1, "threads": 1, "target_metric": 0.0, "lora": {"r": 2, "lora_alpha": 4}}"#,
    )
    .unwrap();
    let out = dir.path().join("glue");
    let args = [
        "glue",
        "--config",
        cfg.to_str().unwrap(),
        "--tasks",
        "sst2,stsb",
        "--ratios",
        "1,16",
        "--seeds",
        "1",
        "--output-dir",
        out.to_str().unwrap(),
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("glue_results.md")).unwrap();
    for needle in [
        "| sst2 | 1 | accuracy",
        "| sst2 | 16 | accuracy",
        "| stsb | 16 | combined_score",
    ] {
        assert!(md.contains(needle), "{needle} missing from:\n{md}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("glue_results.json")).unwrap())
            .unwrap();
    let runs = json.as_array().unwrap();
    assert_eq!(runs.len(), 4);
    // target 0.0 is reached at the first evaluation.
    assert!(runs
        .iter()
        .all(|r| r["target_reached_at"] == 1 && r["steps"] == 3));
    for task in ["sst2", "stsb"] {
        for f in ["loss.png", "loss.svg", "dev_metric.png", "dev_metric.svg"] {
            assert!(out.join(task).join(f).exists(), "{task}/{f} missing");
        }
    }
    let svg = std::fs::read_to_string(out.join("sst2/loss.svg")).unwrap();
    assert!(
        svg.contains("LoRA s1") && svg.contains("LoRA+ 16 s1"),
        "both runs overlaid"
    );

    // --reuse: the same tables from the finished runs, nothing trained again.
    let adapter = out.join("sst2/ratio-16/seed-1/adapter/adapter_model.safetensors");
    let modified = std::fs::metadata(&adapter).unwrap().modified().unwrap();
    std::fs::remove_file(out.join("glue_results.md")).unwrap();
    let o = run(&[&args[..], &["--reuse"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("reusing").count(), 4, "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("glue_results.md")).unwrap(),
        md
    );
    assert_eq!(
        std::fs::metadata(&adapter).unwrap().modified().unwrap(),
        modified
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("glue_results.json")).unwrap())
            .unwrap();
    for (a, b) in again.as_array().unwrap().iter().zip(runs) {
        for key in ["final_main", "best_main", "target_reached_at", "steps"] {
            assert_eq!(a[key], b[key], "{key}");
        }
    }

    // A run trained with other settings is not taken as this grid's: refused before anything
    // trains, naming the run and each difference; where and how the runs execute may change.
    let o = run(&[&args[..], &["--reuse", "--max-steps", "4", "--lr", "0.001"]].concat());
    refused(&o, "max_steps: 3 then, 4 now");
    let err = stderr(&o);
    assert!(
        err.contains("sst2/ratio-1/seed-1") && err.contains("optim.lr: 0.0002 then, 0.001 now"),
        "{err}"
    );
    assert!(!err.contains("reusing"), "{err}");
    assert_eq!(
        std::fs::metadata(&adapter).unwrap().modified().unwrap(),
        modified
    );
    let o = run(&[
        &args[..],
        &["--reuse", "--threads", "2", "--save-every", "7"],
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("reusing").count(), 4, "{}", stderr(&o));

    // A run interrupted before its end (its final adapter and newest checkpoint gone) is
    // resumed from the checkpoint before, and reports what the uninterrupted run did.
    let cut = out.join("stsb/ratio-16/seed-1");
    std::fs::remove_dir_all(cut.join("adapter")).unwrap();
    let mut kept: Vec<PathBuf> = std::fs::read_dir(cut.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    kept.sort();
    assert!(kept.len() >= 2, "{kept:?}");
    std::fs::remove_dir_all(kept.pop().unwrap()).unwrap();
    let o = run(&[&args[..], &["--reuse"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("reusing").count(), 3, "{err}");
    assert!(
        err.contains(&format!("stsb ratio 16 seed 1: resuming {}", cut.display())),
        "{err}"
    );
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("glue_results.json")).unwrap())
            .unwrap();
    for (a, b) in resumed.as_array().unwrap().iter().zip(runs) {
        for key in ["final_main", "best_main", "target_reached_at", "steps"] {
            assert_eq!(a[key], b[key], "{key} of {a}");
        }
    }
}

/// `glue --reuse` takes a finished run only if it trained on the rows the task has now: a
/// training file edited since (labels flipped) is refused, naming the run.
#[test]
fn glue_reuse_refuses_a_run_trained_on_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let glue = dir.path().join("glue");
    std::fs::create_dir_all(glue.join("SST-2")).unwrap();
    let real = std::path::PathBuf::from(
        std::env::var("GLUE_DIR").unwrap_or_else(|_| "../shared/glue".into()),
    );
    let real = if real.is_absolute() {
        real
    } else {
        repo().join(real)
    };
    for (f, n) in [("train.tsv", 65), ("dev.tsv", 33)] {
        let text = std::fs::read_to_string(real.join("SST-2").join(f)).unwrap();
        let head: Vec<&str> = text.lines().take(n).collect();
        std::fs::write(glue.join("SST-2").join(f), head.join("\n") + "\n").unwrap();
    }
    let cfg = tiny_config(dir.path(), "");
    let out = dir.path().join("grid");
    let run_glue = |extra: &[&str]| {
        bin()
            .env("GLUE_DIR", &glue)
            .args([
                "glue",
                "--config",
                cfg.to_str().unwrap(),
                "--tasks",
                "sst2",
                "--ratios",
                "1",
                "--seeds",
                "1",
                "--max-steps",
                "1",
                "--output-dir",
                out.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run_glue(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_glue(&["--reuse"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("reusing"), "{}", stderr(&o));
    let train = glue.join("SST-2/train.tsv");
    let flipped: String = std::fs::read_to_string(&train)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let l = if i == 0 {
                l.to_string()
            } else if let Some(s) = l.strip_suffix('0') {
                format!("{s}1")
            } else {
                format!("{}0", &l[..l.len() - 1])
            };
            l + "\n"
        })
        .collect();
    std::fs::write(&train, flipped).unwrap();
    refused(&run_glue(&["--reuse"]), "was trained on other data");
}

/// Without --seeds, `glue` trains with the config's seed (it trained seed 42 whatever the
/// config said).
#[test]
fn glue_without_seeds_takes_the_configs_seed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "seed = 7");
    let out = dir.path().join("grid");
    let o = run(&[
        "glue",
        "--config",
        cfg.to_str().unwrap(),
        "--tasks",
        "sst2",
        "--ratios",
        "1",
        "--max-steps",
        "1",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("sst2/ratio-1/seed-7/adapter").is_dir());
    assert!(!out.join("sst2/ratio-1/seed-42").exists());
}

/// `metrics.jsonl` without what varies from run to run (timings).
fn metric_records(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("elapsed_s");
            o.remove("samples_per_s");
            v
        })
        .collect()
}

/// Resumed from a checkpoint between two log lines (step 3, logging every 2 steps), and from
/// an older checkpoint than the newest, a run writes the uninterrupted run's metrics record for
/// record: its first log line averages steps 3 and 4 (the checkpoint keeps the window's loss),
/// and the records the abandoned steps left are dropped. Resumed at its end, it evaluates once
/// more and the file still holds one final evaluation.
#[test]
fn resume_from_an_older_checkpoint_rewrites_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "save_every = 3\nkeep_last = 5\neval_every = 3");
    let cfg = cfg.to_str().unwrap();
    let out = dir.path().join("out");
    let o = run(&["train", "--config", cfg, "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let straight = metric_records(&out);
    let steps: Vec<(String, u64)> = straight
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["step"].as_u64().unwrap(),
            )
        })
        .collect();
    let at = |k: &str, s: u64| (k.to_string(), s);
    assert_eq!(
        steps,
        [
            at("train", 2),
            at("eval", 3),
            at("train", 4),
            at("train", 6),
            at("eval", 6),
            at("train", 8),
            at("eval", 8)
        ]
    );
    let adapter = adapter_bytes(&out);
    let step3 = out.join("checkpoints/step-000003");
    let window = std::fs::read_to_string(step3.join("trainer_state.json")).unwrap();
    assert!(window.contains("\"loss_window\""), "{window}");
    for from in [step3.as_path(), out.as_path()] {
        let o = run(&[
            "train",
            "--config",
            cfg,
            "--no-progress",
            "--resume",
            from.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            metric_records(&out),
            straight,
            "resumed from {}",
            from.display()
        );
        assert_eq!(adapter_bytes(&out), adapter);
    }
}

/// Resumed from an older checkpoint with other settings (fewer steps, another lr), a run
/// abandons the steps after it: their checkpoints go (else `--resume <output_dir>` would take
/// the abandoned step 8, and pruning, which keeps the highest steps, would remove the new run's),
/// `best_adapter` is the best of the steps kept, and the final adapter is the new run's.
#[test]
fn resume_from_an_older_checkpoint_abandons_the_later_steps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "save_every = 3\nkeep_last = 3\neval_every = 3");
    let cfg = cfg.to_str().unwrap();
    let out = dir.path().join("out");
    // At this lr the best evaluation is the last one (step 8), which the resumed run abandons.
    let o = run(&["train", "--config", cfg, "--no-progress", "--lr", "1e-2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let best_of = |step: &str| -> u64 {
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("checkpoints/{step}/trainer_state.json")))
                .unwrap(),
        )
        .unwrap();
        state["best_step"].as_u64().unwrap()
    };
    assert_eq!(best_of("step-000008"), 8);
    let checkpoints = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    assert!(checkpoints().contains(&"step-000008".to_string()));
    let o = run(&[
        "train",
        "--config",
        cfg,
        "--no-progress",
        "--max-steps",
        "4",
        "--lr",
        "1e-9",
        "--resume",
        out.join("checkpoints/step-000003").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("removed the later checkpoints of the abandoned steps (step 6, step 8)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(checkpoints(), ["step-000003", "step-000004"]);
    // lr 1e-9 changes nothing the evaluation sees: step 3 stays the best.
    let best = best_of("step-000004");
    assert_eq!(best, 3);
    let bytes = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert!(
        bytes(&out.join("best_adapter"))
            == bytes(&out.join(format!("checkpoints/step-{best:06}/adapter"))),
        "best_adapter is not step {best}'s adapter"
    );
    assert!(
        bytes(&out.join("adapter")) == bytes(&out.join("checkpoints/step-000004/adapter")),
        "the final adapter is not step 4's"
    );
    // The next --resume of the output directory continues the new run.
    let o = run(&[
        "train",
        "--config",
        cfg,
        "--no-progress",
        "--max-steps",
        "5",
        "--resume",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoints(), ["step-000003", "step-000004", "step-000005"]);

    // Resumed into another folder that holds an earlier run: refused (the two runs would mix),
    // unless told to overwrite it; the resumed run's best adapter comes along.
    let other = dir.path().join("other");
    let o = run(&[
        "train",
        "--config",
        cfg,
        "--no-progress",
        "--output-dir",
        other.to_str().unwrap(),
        "--max-steps",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let into_other = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--config",
            cfg,
            "--no-progress",
            "--output-dir",
            other.to_str().unwrap(),
            "--max-steps",
            "6",
            "--resume",
        ];
        let ck = out.join("checkpoints/step-000004");
        let ck = ck.to_str().unwrap().to_string();
        a.push(&ck);
        a.extend(extra);
        run(&a)
    };
    refused(&into_other(&[]), "holds checkpoints of an earlier run");
    let o = into_other(&["--overwrite-output-dir"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut in_other: Vec<String> = std::fs::read_dir(other.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    in_other.sort();
    assert!(
        !in_other.contains(&"step-000002".to_string())
            && in_other.contains(&"step-000006".to_string()),
        "{in_other:?}"
    );
    assert!(other
        .join("best_adapter/adapter_model.safetensors")
        .is_file());
}

/// A fresh run into an output directory with an earlier run's checkpoints is refused (exit 2,
/// naming the directory and the ways out): pruning keeps the highest step numbers, so the
/// earlier run's step 8 would outlive the new run's step 2 and `--resume` would find it. With
/// `--overwrite-output-dir` the new run starts over: only its own checkpoint is left, and its
/// best adapter is its own.
#[test]
fn a_fresh_run_refuses_an_earlier_runs_checkpoints_unless_told_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "eval_every = 4");
    let cfg = cfg.to_str().unwrap();
    let out = dir.path().join("out");
    let o = run(&["train", "--config", cfg, "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let steps = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    assert!(steps(&out).contains(&"step-000008".to_string()));
    assert!(out.join("best_adapter").exists());

    let o = run(&[
        "train",
        "--config",
        cfg,
        "--no-progress",
        "--max-steps",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    for needle in [
        out.to_str().unwrap(),
        "step-000008",
        "--resume",
        "--overwrite-output-dir",
    ] {
        assert!(e.contains(needle), "{needle} not in: {e}");
    }
    assert!(
        steps(&out).contains(&"step-000008".to_string()),
        "nothing removed"
    );

    let o = run(&[
        "train",
        "--config",
        cfg,
        "--no-progress",
        "--max-steps",
        "2",
        "--eval-every",
        "0",
        "--overwrite-output-dir",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps(&out), ["step-000002"]);
    // Its only evaluation is the final one: its best adapter is its final adapter, not the
    // earlier run's.
    assert_eq!(
        std::fs::read(out.join("best_adapter/adapter_model.safetensors")).unwrap(),
        adapter_bytes(&out)
    );
}

/// `glue` and `tune` check what every run will need before the first one trains: a typo in
/// the last task, a repeated ratio, missing GLUE data, or a search with nothing to score on
/// stop at once (exit 2), with nothing trained.
#[test]
fn glue_and_tune_refuse_bad_grids_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g");
    let out_s = out.to_str().unwrap();
    let small = [
        "--max-steps",
        "2",
        "--train-limit",
        "8",
        "--eval-limit",
        "8",
    ];
    for (args, needle) in [
        (vec!["--tasks", "sst2,mrcp", "--ratios", "1"], "mrcp"),
        (vec!["--tasks", "sst2,,", "--ratios", "1"], "empty name"),
        (
            vec!["--tasks", "sst2", "--ratios", "1,1"],
            "lists 1.0 twice",
        ),
        (
            vec!["--tasks", "sst2", "--ratios", "0"],
            "optim.loraplus_ratio",
        ),
        (vec!["--tasks", "sst2"], "missing"),
    ] {
        let mut a = vec!["glue", "--seeds", "1", "--output-dir", out_s];
        a.extend(&small);
        a.extend(&args);
        let mut c = bin();
        if needle == "missing" {
            c.env("GLUE_DIR", "/nonexistent/glue");
        }
        let o = c.args(&a).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(!out.join("sst2").exists(), "{args:?}: a run was trained");
    }
    let csv = dir.path().join("train.csv");
    std::fs::write(&csv, "sentence,label\ngood,pos\nbad,neg\n").unwrap();
    let o = run(&[
        "tune",
        "--task",
        "classification",
        "--train-file",
        csv.to_str().unwrap(),
        "--lrs",
        "1e-4",
        "--ratios",
        "1,2",
        "--max-steps",
        "4",
        "--output-dir",
        dir.path().join("t").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("eval_file"), "{}", stderr(&o));
    assert!(!dir.path().join("t/trials").exists(), "a trial was trained");
}

/// A classification adapter keeps its class names (`label_names.json`), so `eval` numbers an
/// eval file's classes as training did: a file holding only "pos" rows is scored with pos = 1
/// (as with `--labels neg,pos`), where reading the classes from that file alone would fail or
/// renumber them. Another label list or task is refused (exit 2).
/// `eval` of a run's adapter truncates as the run did (its recorded `max_seq_len`, not eval's
/// default of 128), so it prints the numbers the run logged; `--max-seq-len` still chooses.
#[test]
fn eval_of_a_runs_adapter_truncates_as_the_run_did() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "");
    let out = dir.path().join("out");
    let o = run(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--max-steps",
        "2",
        "--max-seq-len",
        "8",
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, evals) = loraplus_train::metrics_log::read(&out.join("metrics.jsonl")).unwrap();
    let logged = evals.last().unwrap().main;
    let adapter = out.join("adapter");
    let predictions = |name: &str, extra: &[&str]| {
        let path = dir.path().join(name);
        let mut args = vec![
            "eval",
            "--adapter",
            adapter.to_str().unwrap(),
            "--limit",
            "32",
            "--predictions",
            path.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (
            String::from_utf8_lossy(&o.stdout).to_string(),
            std::fs::read_to_string(&path).unwrap(),
        )
    };
    let (stdout, recorded) = predictions("recorded.jsonl", &[]);
    assert!(
        stdout.contains(&format!("accuracy {logged:.4}")),
        "logged accuracy {logged}: {stdout}"
    );
    let (_, given) = predictions("given.jsonl", &["--max-seq-len", "8"]);
    assert_eq!(recorded, given);
    let (_, longer) = predictions("longer.jsonl", &["--max-seq-len", "128"]);
    assert_eq!(recorded.lines().count(), longer.lines().count());
    assert!(
        recorded.lines().zip(longer.lines()).any(|(a, b)| a != b),
        "sentences cut at 8 tokens and at 128 score the same"
    );
}

/// `eval` of a run's adapter reads the data as the run did: its evaluation file, its column
/// names (a pair task stays a pair task), its dtype and eval batch size, so it prints the
/// numbers the run logged, and the same predictions as with every setting spelled out.
#[test]
fn eval_of_a_runs_adapter_reads_its_files_as_the_run_did() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let words = [
        "good", "bad", "fine", "awful", "great", "poor", "nice", "dull",
    ];
    let rows = |n: usize, shift: usize| -> String {
        let mut t = String::from("first,second,verdict\n");
        for i in 0..n {
            let (w, v) = (words[(i + shift) % 8], words[(3 * i + 1) % 8]);
            let same = (i + shift) % 8 < 4;
            t += &format!(
                "a {w} film {i},it was {v},{}\n",
                if same { "yes" } else { "no" }
            );
        }
        t
    };
    std::fs::write(p("train.csv"), rows(48, 0)).unwrap();
    std::fs::write(p("dev.csv"), rows(24, 5)).unwrap();
    let out = p("out");
    let o = run(&[
        "train",
        "--task",
        "classification",
        "--train-file",
        &p("train.csv"),
        "--eval-file",
        &p("dev.csv"),
        "--text-column",
        "first",
        "--text-pair-column",
        "second",
        "--label-column",
        "verdict",
        "--metric",
        "f1",
        "--dtype",
        "bf16",
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "5e-3",
        "--max-seq-len",
        "24",
        "--output-dir",
        &out,
        "--threads",
        "1",
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, evals) =
        loraplus_train::metrics_log::read(&Path::new(&out).join("metrics.jsonl")).unwrap();
    let logged = evals.last().unwrap();
    let f1 = logged.metrics.iter().find(|(k, _)| k == "f1").unwrap().1;
    let eval = |name: &str, extra: &[&str]| {
        let path = p(name);
        let adapter = p("out/adapter");
        let mut args = vec!["eval", "--adapter", &adapter, "--predictions", &path];
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (
            String::from_utf8_lossy(&o.stdout).to_string(),
            std::fs::read_to_string(&path).unwrap(),
        )
    };
    let (stdout, recorded) = eval("recorded.jsonl", &[]);
    assert!(
        stdout.contains(&format!("f1 {f1:.4}")) && stdout.contains("(24 examples)"),
        "logged f1 {f1}: {stdout}"
    );
    let dev = p("dev.csv");
    let (_, spelled) = eval(
        "spelled.jsonl",
        &[
            "--eval-file",
            &dev,
            "--text-column",
            "first",
            "--text-pair-column",
            "second",
            "--label-column",
            "verdict",
            "--metric",
            "f1",
            "--dtype",
            "bf16",
            "--max-seq-len",
            "24",
        ],
    );
    assert_eq!(recorded, spelled);
    // Another dtype is this eval's choice.
    let (_, f32) = eval("f32.jsonl", &["--dtype", "f32"]);
    assert_eq!(recorded.lines().count(), f32.lines().count());
    assert_ne!(recorded, f32, "bf16 and f32 logits print the same");
}

/// A run started in another folder with relative paths (model, data) records them as
/// absolute ones, so `eval` of its adapter from here scores the run's base on the run's eval
/// file (it took the default model and dropped the file, without a word). An adapter whose
/// recorded base is not a folder here is refused (exit 2), not scored on the default model.
#[test]
fn a_run_with_relative_paths_is_evaluated_from_another_folder() {
    let dir = tempfile::tempdir().unwrap();
    let rel = dir.path().join("rel");
    std::fs::create_dir_all(rel.join("models")).unwrap();
    std::fs::create_dir_all(rel.join("data")).unwrap();
    std::os::unix::fs::symlink(repo().join(".venv/minilm"), rel.join("models/m")).unwrap();
    let words = [
        "good", "bad", "fine", "awful", "great", "poor", "nice", "dull",
    ];
    let mut train = String::from("text,label\n");
    for (i, w) in words.iter().cycle().take(32).enumerate() {
        train += &format!(
            "a {w} film {i},{}\n",
            if i % 2 == 0 { "pos" } else { "neg" }
        );
    }
    std::fs::write(rel.join("data/train.csv"), &train).unwrap();
    std::fs::write(rel.join("data/dev.csv"), &train).unwrap();
    let o = bin()
        .current_dir(&rel)
        .args([
            "train",
            "--task",
            "classification",
            "--model",
            "models/m",
            "--train-file",
            "data/train.csv",
            "--eval-file",
            "data/dev.csv",
            "--output-dir",
            "out",
            "--max-steps",
            "2",
            "--max-seq-len",
            "16",
            "--threads",
            "1",
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, evals) = loraplus_train::metrics_log::read(&rel.join("out/metrics.jsonl")).unwrap();
    let logged = evals.last().unwrap().main;
    let adapter = rel.join("out/adapter");
    let o = bin()
        .current_dir(dir.path())
        .args(["eval", "--adapter", "rel/out"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("accuracy {logged:.4}")) && out.contains("(32 examples)"),
        "logged {logged}: {out}"
    );
    // A recorded base that is a path not here: refused, naming it.
    let cfg_path = adapter.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = "models/elsewhere/m".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let o = bin()
        .current_dir(dir.path())
        .args(["eval", "--adapter", "rel/out"])
        .output()
        .unwrap();
    refused(&o, "records its base model as models/elsewhere/m");
    assert!(stderr(&o).contains("pass --model"), "{}", stderr(&o));
}

/// A regression's metric is fixed (pearson and spearman, selected by their mean): `--metric`
/// is refused, not ignored; an evaluation set of one row is refused before training (the run
/// trained, then failed at its first evaluation, exit 1), and so is `eval --limit 1`.
#[test]
fn regression_refuses_a_metric_and_an_eval_set_of_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let mut train = String::from("text,score\n");
    for i in 0..16 {
        train += &format!("a film {i},{}\n", i % 5);
    }
    std::fs::write(p("train.csv"), &train).unwrap();
    std::fs::write(p("one.csv"), "text,score\na film,2.5\n").unwrap();
    let args = |eval: &str, out: &str| -> Vec<String> {
        [
            "train",
            "--task",
            "regression",
            "--train-file",
            &p("train.csv"),
            "--eval-file",
            &p(eval),
            "--label-column",
            "score",
            "--max-steps",
            "2",
            "--max-seq-len",
            "16",
            "--threads",
            "1",
            "--no-progress",
            "--output-dir",
            &p(out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args("one.csv", "one");
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    refused(&o, "has 1 row(s): pearson and spearman need at least 2");
    assert!(!dir.path().join("one/checkpoints").exists(), "it trained");
    let mut a = args("train.csv", "metric");
    a.extend(["--metric".to_string(), "pearson".to_string()]);
    refused(
        &run(&a.iter().map(String::as_str).collect::<Vec<_>>()),
        "leave `metric` out",
    );
    let a = args("train.csv", "ok");
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let adapter = p("ok");
    let o = run(&["eval", "--adapter", &adapter, "--limit", "1"]);
    refused(&o, "pearson and spearman need at least 2");
}

#[test]
fn eval_numbers_classes_as_training_did() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let words = [
        "good", "bad", "fine", "awful", "great", "poor", "nice", "dull",
    ];
    let mut train = String::from("text,label\n");
    for (i, w) in words.iter().cycle().take(32).enumerate() {
        train += &format!(
            "a {w} film {i},{}\n",
            if i % 2 == 0 { "pos" } else { "neg" }
        );
    }
    std::fs::write(p("train.csv"), &train).unwrap();
    let only_pos: String = std::iter::once("text,label\n".to_string())
        .chain((0..6).map(|i| format!("a {} film,pos\n", words[2 * i % 8])))
        .collect();
    std::fs::write(p("pos.csv"), only_pos).unwrap();
    let o = run(&[
        "train",
        "--task",
        "classification",
        "--train-file",
        &p("train.csv"),
        "--eval-file",
        &p("train.csv"),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--max-seq-len",
        "16",
        "--output-dir",
        &p("out"),
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names = std::fs::read_to_string(dir.path().join("out/adapter/label_names.json")).unwrap();
    assert!(
        names.contains("\"neg\"") && names.contains("\"pos\""),
        "{names}"
    );
    let (adapter, pos) = (p("out/adapter"), p("pos.csv"));
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--adapter",
            &adapter,
            "--task",
            "classification",
            "--eval-file",
            &pos,
        ];
        a.extend(extra);
        run(&a)
    };
    let implied = eval(&[]);
    assert!(implied.status.success(), "{}", stderr(&implied));
    let given = eval(&["--labels", "neg,pos"]);
    assert!(given.status.success(), "{}", stderr(&given));
    let line = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.contains("accuracy"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        !line(&implied).is_empty(),
        "{}",
        String::from_utf8_lossy(&implied.stdout)
    );
    assert_eq!(line(&implied), line(&given));
    let o = eval(&["--labels", "pos,neg"]);
    refused(&o, "differ from the classes");
    let o = run(&[
        "eval",
        "--adapter",
        &p("out/adapter"),
        "--task",
        "regression",
        "--eval-file",
        &p("pos.csv"),
    ]);
    refused(&o, "trained for task \"classification\"");
}

#[test]
fn a_malformed_row_fails_naming_its_line_unless_skip_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let mut train = String::from("text,label\n");
    for i in 0..16 {
        train += &format!("film {i},{}\n", if i % 2 == 0 { "pos" } else { "neg" });
        if i == 5 {
            train += "a row without its label\n";
        }
    }
    std::fs::write(p("train.csv"), &train).unwrap();
    let csv = p("train.csv");
    let train_with = |extra: &[&str], out: &str| {
        let out = p(out);
        let mut a = vec![
            "train",
            "--task",
            "classification",
            "--train-file",
            &csv,
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--max-seq-len",
            "8",
            "--output-dir",
            &out,
            "--no-progress",
        ];
        a.extend(extra);
        run(&a)
    };
    let o = train_with(&[], "strict");
    assert_eq!(o.status.code(), Some(2), "the user's data: {}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("train.csv") && e.contains("line 8") && e.contains("skip_malformed"),
        "{e}"
    );
    let o = train_with(&["--skip-malformed"], "skip");
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("skipped 1 malformed row(s) of 17"), "{e}");
    assert_eq!(e.matches("skipped").count(), 1, "said once: {e}");
    let names = std::fs::read_to_string(dir.path().join("skip/adapter/label_names.json")).unwrap();
    assert!(
        names.contains("\"neg\"") && names.contains("\"pos\""),
        "{names}"
    );
}
