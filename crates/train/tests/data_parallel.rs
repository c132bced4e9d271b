//! Data-parallel training on c10d (Gloo, loopback): 2 ranks x batch b train the adapters of
//! 1 rank x batch 2b (a GLUE task on MiniLM with dropout off, and a causal-LM task on a tiny
//! Llama); a run launched by torchrun and one launched by `--nproc-per-node 2` write identical
//! checkpoints; a resumed 2-rank run equals an uninterrupted one bitwise; a killed rank makes
//! the run fail naming it, in bounded time; Ctrl-C (SIGINT to the terminal's process group)
//! stops a `--nproc-per-node 2` run with one resumable checkpoint and no rank left running;
//! a sharded evaluation (uneven shards of an odd-sized set) gives the metrics of one process
//! on the same adapters, bitwise (MRPC, STS-B, causal LM).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::minilm_without_dropout;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraplus"));
    c.env("LORAPLUS_LOG", "warn");
    c
}

fn ok(o: Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn glue_config(dir: &Path, model: &Path, extra: &str) -> PathBuf {
    let p = dir.join(format!("dp{}.toml", extra.len()));
    std::fs::write(
        &p,
        format!(
            "task = \"sst2\"\nmodel = \"{}\"\nmax_seq_len = 32\nbatch_size = 8\nmax_steps = 20\ntrain_limit = 256\neval_limit = 16\nlog_every = 5\nthreads = 1\n{extra}\n[lora]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.0\n",
            model.display()
        ),
    )
    .unwrap();
    p
}

fn adapter(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut v = loraplus_core::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_diff(a: &Path, b: &Path) -> f64 {
    let (x, y) = (adapter(a), adapter(b));
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(&y)
        .map(|((n, t), (m, u))| {
            assert_eq!(n, m);
            (t - u).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut c = bin();
    c.args([
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--no-progress",
        "--output-dir",
    ])
    .arg(out)
    .args(extra);
    c.output().unwrap()
}

#[test]
fn two_ranks_equal_one_rank_with_twice_the_batch_and_torchrun_equals_nproc() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(dir.path());
    let cfg = glue_config(dir.path(), &model, "");
    // One rank, a global batch of 8 per step as 2 accumulated micro-batches of 4: the same
    // rows and the same per-row shapes as 2 ranks x 4.
    let cfg_accum = glue_config(dir.path(), &model, "grad_accum = 2");
    let one = dir.path().join("one");
    ok(train(&cfg_accum, &one, &[]), "1 rank");
    let two = dir.path().join("two");
    let o = train(&cfg, &two, &["--nproc-per-node", "2"]);
    ok(o, "2 ranks");
    let d = max_diff(&one.join("adapter"), &two.join("adapter"));
    assert!(
        d < 1e-6,
        "2 ranks x 4 against 1 rank x 8 (2 x 4 accumulated): adapters differ by {d}"
    );
    // One rank with one micro-batch of 8: the same step up to float rounding (other GEMM
    // shapes, another summation order), which Adam's normalisation amplifies where gradients
    // are near zero; bounded well below the size of an update.
    let one8 = dir.path().join("one8");
    ok(train(&cfg, &one8, &[]), "1 rank x 8");
    let d8 = max_diff(&one8.join("adapter"), &two.join("adapter"));
    eprintln!("2 ranks x 4 against 1 rank x 8 in one micro-batch: max |diff| {d8:e}");
    assert!(
        d8 < 2e-5,
        "2 ranks x 4 against 1 rank x 8: adapters differ by {d8}"
    );
    // Only rank 0 wrote: one metrics file with the 20 steps, evaluations included.
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.matches("\"kind\":\"train\"").count(),
        4,
        "{metrics}"
    );

    // The same run under torchrun's agent (its own store): the same checkpoint, bitwise.
    let torchrun = repo().join(".venv/bin/torchrun");
    let tr = dir.path().join("torchrun");
    let o = Command::new(&torchrun)
        .args(["--standalone", "--nproc-per-node", "2", "--no-python"])
        .arg(env!("CARGO_BIN_EXE_loraplus"))
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--no-progress",
            "--output-dir",
        ])
        .arg(&tr)
        .env("LORAPLUS_LOG", "warn")
        .output()
        .unwrap();
    ok(o, "torchrun");
    let d = max_diff(&two.join("adapter"), &tr.join("adapter"));
    assert_eq!(d, 0.0, "torchrun and --nproc-per-node differ by {d}");
    // Every tensor of the step-20 checkpoints (adapter and optimizer state) equal in value.
    for f in [
        "adapter/adapter_model.safetensors",
        "optimizer/optimizer.safetensors",
    ] {
        let read = |root: &Path| {
            let mut v =
                loraplus_core::read_safetensors(&root.join("checkpoints/step-000020").join(f))
                    .unwrap();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let (a, b) = (read(&two), read(&tr));
        assert_eq!(a.len(), b.len(), "{f}");
        for ((n, x), (m, y)) in a.iter().zip(&b) {
            assert_eq!(n, m, "{f}");
            assert!(
                x.equal(y),
                "{f}: {n} differs between torchrun and --nproc-per-node"
            );
        }
    }
}

#[test]
fn causal_lm_two_ranks_equal_one_rank_accumulating_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let fx = dir.path().join("fx");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/causal_lm_ref.py");
    let o = Command::new(repo().join(".venv/bin/python"))
        .arg(&script)
        .args(["fixture", fx.to_str().unwrap()])
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .unwrap();
    ok(o, "causal_lm_ref.py fixture");
    // Rows of different lengths and target counts: the token-weighted loss matters.
    let train_file = dir.path().join("train.jsonl");
    let rows: String = (0..32)
        .map(|i| {
            let words = ["the cat", "a small red dog", "my old car by the sea", "a tree"][i % 4];
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("where is {words}?"), "completion": format!(" {words} is {}", "here ".repeat(1 + i % 5))})
            )
        })
        .collect();
    std::fs::write(&train_file, rows).unwrap();
    let cfg = |extra: &str| {
        let p = dir.path().join(format!("lm{}.toml", extra.len()));
        std::fs::write(
            &p,
            format!(
                "task = \"causal-lm\"\nmodel = \"{}\"\ntrain_file = \"{}\"\nmax_seq_len = 48\nbatch_size = 8\nmax_steps = 10\nlog_every = 5\nthreads = 1\n{extra}\n[optim]\nlr = 2e-3\n[lora]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.0\n",
                fx.join("llama").display(),
                train_file.display()
            ),
        )
        .unwrap();
        p
    };
    let one = dir.path().join("one");
    ok(
        train(&cfg("grad_accum = 2"), &one, &[]),
        "1 rank, 2 x 4 accumulated",
    );
    let two = dir.path().join("two");
    ok(
        train(&cfg(""), &two, &["--nproc-per-node", "2"]),
        "2 ranks x 4",
    );
    let d = max_diff(&one.join("adapter"), &two.join("adapter"));
    assert!(
        d < 1e-6,
        "causal LM: 2 ranks x 4 against 1 rank x 8 (2 x 4 accumulated) differ by {d}"
    );
}

/// The evaluation records of a run, by step.
fn eval_records(out: &Path) -> Vec<loraplus_train::metrics_log::EvalRecord> {
    loraplus_train::metrics_log::read(&out.join("metrics.jsonl"))
        .unwrap()
        .1
}

/// A 2-rank run of `cfg` (4 steps, sharded evaluations at steps 2 and 4 over 5 batches: 3 on
/// rank 0, 2 on rank 1), then one process evaluating its step-4 checkpoint (a resume at the
/// step budget runs only the final evaluation): the step-4 metrics must be equal, bitwise.
fn sharded_eval_equals_one_process(dir: &Path, cfg: &Path, what: &str, metrics: &[&str]) {
    let two = dir.join(format!("{what}-two"));
    let mut c = bin();
    // Warnings, and which evaluation batches each rank scores.
    c.env("LORAPLUS_LOG", "warn,loraplus_train::task=debug")
        .args(["train", "--config", cfg.to_str().unwrap(), "--no-progress"])
        .args(["--nproc-per-node", "2", "--output-dir"])
        .arg(&two);
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    ok(o, &format!("{what}: 2 ranks"));
    for line in [
        "rank 0: scored 3 of 5 evaluation batches",
        "rank 1: scored 2 of 5 evaluation batches",
    ] {
        assert!(
            stderr.contains(line),
            "{what}: the evaluation was not sharded ({line:?} missing):\n{stderr}"
        );
    }
    let one = dir.join(format!("{what}-one"));
    let ck = two.join("checkpoints/step-000004");
    let mut c = bin();
    c.args(["train", "--config", cfg.to_str().unwrap(), "--no-progress"])
        .arg("--output-dir")
        .arg(&one)
        .arg("--resume")
        .arg(&ck);
    ok(
        c.output().unwrap(),
        &format!("{what}: 1 rank on the same adapters"),
    );
    let sharded = eval_records(&two);
    assert_eq!(
        sharded.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![2, 4],
        "{what}"
    );
    let single = eval_records(&one);
    assert_eq!(single.len(), 1, "{what}: one final evaluation");
    let (a, b) = (&sharded[1], &single[0]);
    assert_eq!(b.step, 4, "{what}");
    assert_eq!(a.main_name, b.main_name, "{what}");
    assert_eq!(
        a.main.to_bits(),
        b.main.to_bits(),
        "{what}: main metric {} (2 ranks) against {} (1 rank)",
        a.main,
        b.main
    );
    assert_eq!(
        a.metrics.len(),
        b.metrics.len(),
        "{what}: {a:?} against {b:?}"
    );
    for ((n, x), (m, y)) in a.metrics.iter().zip(&b.metrics) {
        assert_eq!(n, m, "{what}");
        eprintln!("{what}: {n}: 2 ranks {x}, 1 rank {y}");
        assert_eq!(
            x.to_bits(),
            y.to_bits(),
            "{what}: {n}: 2 ranks {x} against 1 rank {y}"
        );
    }
    for name in metrics {
        assert!(
            a.metrics.iter().any(|(n, _)| n == name),
            "{what}: no {name} in {:?}",
            a.metrics
        );
    }
}

#[test]
fn sharded_evaluation_equals_one_process_on_the_same_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(dir.path());
    // 17 dev rows in batches of 4: 5 batches, the last of one row, split 3 / 2 over the ranks.
    let shared = "max_seq_len = 32\nbatch_size = 8\nmax_steps = 4\ntrain_limit = 64\neval_limit = 17\neval_batch_size = 4\neval_every = 2\nlog_every = 2\nthreads = 1\n[optim]\nlr = 1e-3\n[lora]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.0\n";
    // A classification scored by F1 and accuracy, and a regression by Pearson / Spearman.
    for (task, metrics) in [
        ("mrpc", &["f1", "accuracy"][..]),
        ("stsb", &["pearson", "spearmanr"][..]),
    ] {
        let cfg = dir.path().join(format!("{task}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "task = \"{task}\"\nmodel = \"{}\"\n{shared}",
                model.display()
            ),
        )
        .unwrap();
        sharded_eval_equals_one_process(dir.path(), &cfg, task, metrics);
    }

    // Causal LM: 9 evaluation rows of different lengths in batches of 2 (5 batches, the last
    // of one row): the eval loss is the token-weighted mean over the whole set.
    let fx = dir.path().join("fx");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/causal_lm_ref.py");
    let o = Command::new(repo().join(".venv/bin/python"))
        .arg(&script)
        .args(["fixture", fx.to_str().unwrap()])
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .unwrap();
    ok(o, "causal_lm_ref.py fixture");
    let words = [
        "the cat",
        "a small red dog",
        "my old car by the sea",
        "a tree",
    ];
    let rows = |n: usize| -> String {
        (0..n)
            .map(|i| {
                let w = words[i % 4];
                format!(
                    "{}\n",
                    serde_json::json!({"prompt": format!("where is {w}?"), "completion": format!(" {w} is {}", "here ".repeat(1 + i % 5))})
                )
            })
            .collect()
    };
    let (train_file, eval_file) = (
        dir.path().join("train.jsonl"),
        dir.path().join("eval.jsonl"),
    );
    std::fs::write(&train_file, rows(32)).unwrap();
    std::fs::write(&eval_file, rows(9)).unwrap();
    let cfg = dir.path().join("lm.toml");
    std::fs::write(
        &cfg,
        format!(
            "task = \"causal-lm\"\nmodel = \"{}\"\ntrain_file = \"{}\"\neval_file = \"{}\"\nmax_seq_len = 48\nbatch_size = 8\nmax_steps = 4\neval_batch_size = 2\neval_every = 2\nlog_every = 2\nthreads = 1\n[optim]\nlr = 2e-3\n[lora]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.0\n",
            fx.join("llama").display(),
            train_file.display(),
            eval_file.display()
        ),
    )
    .unwrap();
    sharded_eval_equals_one_process(
        dir.path(),
        &cfg,
        "causal-lm",
        &["eval_loss", "perplexity", "eval_tokens"],
    );
}

#[test]
fn a_resumed_two_rank_run_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(dir.path());
    let cfg = glue_config(dir.path(), &model, "save_every = 4");
    let full = dir.path().join("full");
    let two = ["--nproc-per-node", "2", "--max-steps", "8"];
    ok(train(&cfg, &full, &two), "uninterrupted");
    let resumed = dir.path().join("resumed");
    let ck = full.join("checkpoints/step-000004");
    let mut args = two.to_vec();
    args.extend(["--resume", ck.to_str().unwrap()]);
    ok(train(&cfg, &resumed, &args), "resumed");
    let d = max_diff(&full.join("adapter"), &resumed.join("adapter"));
    assert_eq!(d, 0.0, "the resumed run differs by {d}");
}

/// A `--nproc-per-node 2` run with no step budget to speak of, started with `configure` applied
/// (stderr piped), returned once rank 0 has logged a training step.
fn launch_until_training(
    cfg: &Path,
    out: &Path,
    configure: impl FnOnce(&mut Command),
) -> std::process::Child {
    let mut c = bin();
    c.args([
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--no-progress",
        "--max-steps",
        "100000",
        "--nproc-per-node",
        "2",
        "--output-dir",
    ])
    .arg(out)
    .stderr(Stdio::piped())
    .stdout(Stdio::null());
    configure(&mut c);
    let launcher = c.spawn().unwrap();
    let started = Instant::now();
    let metrics = out.join("metrics.jsonl");
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"kind\":\"train\"")) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no training step in 3 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    launcher
}

#[test]
fn a_killed_rank_fails_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(dir.path());
    let cfg = glue_config(dir.path(), &model, "");
    let out = dir.path().join("out");
    // Wait until training runs (rank 0 logged a step), then kill rank 1.
    let mut launcher = launch_until_training(&cfg, &out, |_| {});
    let rank1 = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(") ")
                .next()
                .and_then(|r| r.split(' ').nth(1))
                .unwrap_or("");
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            ppid == launcher.id().to_string() && env.split(|&b| b == 0).any(|kv| kv == b"RANK=1")
        })
        .expect("rank 1 among the launcher's children");
    let killed = Instant::now();
    unsafe { libc_kill(rank1, 9) };
    let status = launcher.wait().unwrap();
    let waited = killed.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(launcher.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(waited < Duration::from_secs(60), "took {waited:?}: {err}");
    assert!(err.contains("rank 1"), "{err}");
}

/// The processes whose environment holds `marker` (inherited from the launcher by its ranks).
fn processes_marked(marker: &str) -> Vec<i32> {
    let needle = format!("LORAPLUS_TEST_MARK={marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes())
        })
        .collect()
}

#[test]
fn ctrl_c_stops_every_rank_with_one_resumable_checkpoint() {
    interrupt_stops_every_rank(Signal::CtrlC, true);
}

/// `kill`, `timeout` and schedulers signal the launcher alone: it passes the interrupt on (the
/// ranks trained to the end, exit 0, before).
#[test]
fn sigterm_to_the_launcher_alone_stops_every_rank_with_a_checkpoint() {
    interrupt_stops_every_rank(Signal::TermToLauncher, false);
}

enum Signal {
    /// As a terminal does: SIGINT to the launcher's whole process group.
    CtrlC,
    /// SIGTERM to the launcher's pid only.
    TermToLauncher,
}

fn interrupt_stops_every_rank(signal: Signal, resume: bool) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(dir.path());
    let cfg = glue_config(dir.path(), &model, "");
    let out = dir.path().join("out");
    let marker = format!("interrupt-{}-{}", std::process::id(), resume);
    // The launcher leads its own process group, as a terminal's foreground job.
    let mut launcher = launch_until_training(&cfg, &out, |c| {
        c.env("LORAPLUS_TEST_MARK", &marker).process_group(0);
    });
    assert_eq!(
        processes_marked(&marker).len(),
        3,
        "expected the launcher and two ranks to be running"
    );
    let interrupted = Instant::now();
    let pid = i32::try_from(launcher.id()).unwrap();
    match signal {
        Signal::CtrlC => assert_eq!(unsafe { libc_kill(-pid, 2) }, 0, "SIGINT to the group"),
        Signal::TermToLauncher => {
            assert_eq!(unsafe { libc_kill(pid, 15) }, 0, "SIGTERM to the launcher")
        }
    }
    let status = launcher.wait().unwrap();
    let waited = interrupted.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(launcher.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "launcher exit status: {err}");
    assert!(waited < Duration::from_secs(60), "took {waited:?}: {err}");
    // Every rank has exited with the launcher (reaped by it, nothing orphaned).
    let left = processes_marked(&marker);
    assert!(left.is_empty(), "processes left running: {left:?}\n{err}");
    let ckpts = loraplus_train::checkpoint::list(&out).unwrap();
    assert_eq!(
        ckpts.len(),
        1,
        "one checkpoint after Ctrl-C: {ckpts:?}\n{err}"
    );
    let (step, path) = ckpts[0].clone();
    assert!(step >= 1, "checkpoint at step {step}");
    if !resume {
        return;
    }
    // The checkpoint resumes under the same 2-rank launch for one more step.
    let resumed = dir.path().join("resumed");
    let until = (step + 1).to_string();
    ok(
        train(
            &cfg,
            &resumed,
            &[
                "--nproc-per-node",
                "2",
                "--max-steps",
                &until,
                "--resume",
                path.to_str().unwrap(),
            ],
        ),
        "resuming the interrupted run",
    );
    assert!(resumed.join("adapter/adapter_model.safetensors").exists());
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `--dist-backend gloo` under the launcher variables of a world of one builds a group of one
/// (to measure the collectives' cost, as `benches/dp.sh` does with NCCL on a GPU): the same
/// adapter as a run without a group, bitwise, and the communication share logged. Bad
/// backends are refused by name, exit 2.
#[test]
fn a_named_backend_builds_a_group_of_one_that_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(dir.path());
    let cfg = glue_config(dir.path(), &model, "eval_every = 0");
    let plain = dir.path().join("plain");
    ok(train(&cfg, &plain, &["--max-steps", "6"]), "no group");
    let one = dir.path().join("group-of-one");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = bin()
        .args(["train", "--config", cfg.to_str().unwrap(), "--no-progress"])
        .args(["--max-steps", "6", "--dist-backend", "gloo", "--output-dir"])
        .arg(&one)
        .env("LORAPLUS_LOG", "info")
        .env("RANK", "0")
        .env("LOCAL_RANK", "0")
        .env("WORLD_SIZE", "1")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o, "a gloo group of one");
    assert!(log.contains("rank 0 of 1"), "{log}");
    assert!(
        log.contains("communication:"),
        "no communication share logged:\n{log}"
    );
    let d = max_diff(&plain.join("adapter"), &one.join("adapter"));
    assert_eq!(d, 0.0, "a group of one changed the adapter by {d}");

    for (flags, expected) in [
        (
            vec!["--dist-backend", "mpi"],
            "must be auto, gloo, nccl or none, found \"mpi\"",
        ),
        (
            vec!["--dist-backend", "nccl"],
            "nccl, which reduces CUDA tensors",
        ),
    ] {
        let o = train(&cfg, &dir.path().join("bad"), &flags);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
}

/// `--dist-backend none` trains alone whatever the environment says: a `RANK` set for something
/// else (no `WORLD_SIZE`) stops a default run, not this one, whose adapter is the plain run's.
/// Starting ranks with it is a contradiction, refused with exit 2.
#[test]
fn backend_none_ignores_the_launcher_variables() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(dir.path());
    let cfg = glue_config(dir.path(), &model, "eval_every = 0");
    let plain = dir.path().join("plain");
    ok(train(&cfg, &plain, &["--max-steps", "3"]), "no group");
    let with_rank = |out: &Path, extra: &[&str]| {
        bin()
            .args(["train", "--config", cfg.to_str().unwrap(), "--no-progress"])
            .args(["--max-steps", "3", "--output-dir"])
            .arg(out)
            .args(extra)
            .env("RANK", "3")
            .env_remove("WORLD_SIZE")
            .output()
            .unwrap()
    };
    let o = with_rank(&dir.path().join("default"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "RANK without WORLD_SIZE trained: {err}"
    );
    assert!(err.contains("WORLD_SIZE"), "{err}");
    let alone = dir.path().join("alone");
    ok(
        with_rank(&alone, &["--dist-backend", "none"]),
        "dist_backend none under RANK=3",
    );
    let d = max_diff(&plain.join("adapter"), &alone.join("adapter"));
    assert_eq!(d, 0.0, "dist_backend none changed the adapter by {d}");
    let o = train(
        &cfg,
        &dir.path().join("both"),
        &["--nproc-per-node", "2", "--dist-backend", "none"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("dist_backend is none"), "{err}");
}

/// The ranks refuse the user's data (a column the file lacks): the launcher exits 2 as they do,
/// and the message names the file.
#[test]
fn ranks_refusing_the_data_make_the_launcher_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("train.csv");
    std::fs::write(&csv, "sentence,label\ngood,pos\nbad,neg\n").unwrap();
    let o = bin()
        .args(["train", "--nproc-per-node", "2", "--task", "classification"])
        .arg("--train-file")
        .arg(&csv)
        .arg("--output-dir")
        .arg(dir.path().join("run"))
        .args(["--max-steps", "1", "--no-progress"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("train.csv: line 1: the header has no column \"text\""),
        "{err}"
    );
    assert!(err.contains("exited with status 2"), "{err}");
}

/// Every micro-batch is split over the ranks, so an incomplete last one is left out
/// (DistributedSampler's drop_last): too few examples for one batch exit 2 saying so, and
/// examples left out of each epoch are counted in a warning.
#[test]
fn data_parallel_says_what_an_incomplete_batch_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("train.csv");
    let rows: String = (0..10)
        .map(|i| format!("film {i},{}\n", if i % 2 == 0 { "pos" } else { "neg" }))
        .collect();
    std::fs::write(&csv, format!("text,label\n{rows}")).unwrap();
    let run = |batch: &str, out: &str| {
        bin()
            .args(["train", "--nproc-per-node", "2", "--task", "classification"])
            .arg("--train-file")
            .arg(&csv)
            .arg("--output-dir")
            .arg(dir.path().join(out))
            .args([
                "--batch-size",
                batch,
                "--max-steps",
                "1",
                "--max-seq-len",
                "8",
            ])
            .args(["--threads", "2", "--no-progress"])
            .output()
            .unwrap()
    };
    let o = run("16", "none");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("10 training examples make no full batch of 16"),
        "{err}"
    );
    let o = run("4", "some");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o, "batch 4 of 10 examples");
    assert_eq!(
        err.matches("2 of the 10 training examples make no full batch of 4")
            .count(),
        1,
        "said once, by rank 0: {err}"
    );
}
