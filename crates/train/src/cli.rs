//! What the `loraplus` subcommands do, as library functions (the binary only parses flags).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use loraplus_data::{paths, Encoder, Split, Task};

use crate::backend;
use crate::config::{parse_device, TrainConfig};
use crate::metrics_log;
use crate::plots::{line_plot, Series};
use crate::trainer::{self, RunSummary, Trainer};

/// A user error (bad flag, config or input file): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub anyhow::Error);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for UsageError {}

impl UsageError {
    pub fn wrap(e: anyhow::Error) -> anyhow::Error {
        anyhow::Error::new(UsageError(e))
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LORAPLUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Flags that override a config file's fields.
#[derive(Args, Debug, Default, Clone)]
pub struct Overrides {
    /// GLUE task (sst2, mrpc, cola, stsb, qnli, rte, wnli, qqp, mnli).
    #[arg(long)]
    pub task: Option<String>,
    /// HuggingFace model folder.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16, f16.
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// LoRA+ ratio (1 = plain LoRA).
    #[arg(long)]
    pub ratio: Option<f64>,
    #[arg(long)]
    pub train_limit: Option<usize>,
    #[arg(long)]
    pub eval_limit: Option<usize>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long)]
    pub save_every: Option<usize>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut TrainConfig) {
        macro_rules! set {
            ($field:ident => $($target:tt)+) => {
                if let Some(v) = self.$field.clone() {
                    cfg.$($target)+ = v;
                }
            };
        }
        set!(task => task);
        set!(output_dir => output_dir);
        set!(seed => seed);
        set!(device => device);
        set!(dtype => dtype);
        set!(threads => threads);
        set!(epochs => epochs);
        set!(batch_size => batch_size);
        set!(max_seq_len => max_seq_len);
        set!(lr => optim.lr);
        set!(ratio => optim.loraplus_ratio);
        set!(eval_every => eval_every);
        set!(save_every => save_every);
        if let Some(m) = &self.model {
            cfg.model = Some(m.clone());
        }
        if let Some(s) = self.max_steps {
            cfg.max_steps = Some(s);
        }
        if let Some(n) = self.train_limit {
            cfg.train_limit = Some(n);
        }
        if let Some(n) = self.eval_limit {
            cfg.eval_limit = Some(n);
        }
    }
}

/// `loraplus train`: run, handle SIGINT/SIGTERM with a checkpoint, print a summary and plots.
pub fn train(cfg: TrainConfig, resume: Option<&Path>, progress: bool) -> Result<()> {
    let mut t = Trainer::new(cfg, resume)?;
    t.show_progress = progress;
    let flag = t.interrupt_flag();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing the current step and writing a checkpoint");
    });
    let s = t.lora.summary();
    eprintln!("{s}");
    let summary = t.train()?;
    let plots = plot_run(&t.config.output_dir).unwrap_or_else(|e| {
        tracing::warn!("plots not written: {e:#}");
        Vec::new()
    });
    print_summary(&summary, &plots);
    if t.interrupt_flag().load(Ordering::Relaxed) {
        std::process::exit(130);
    }
    Ok(())
}

fn print_summary(s: &RunSummary, plots: &[PathBuf]) {
    println!(
        "steps: {} ({}), {:.1} s",
        s.steps, s.stopped_because, s.train_seconds
    );
    if let Some(e) = &s.final_eval {
        println!("dev: {}", e.describe());
    }
    if let (Some(b), Some(at)) = (s.best_metric, s.best_step) {
        println!("best dev main metric: {b:.4} at step {at}");
    }
    println!("adapter: {}", s.adapter_dir.display());
    println!(
        "best adapter: {}",
        s.output_dir.join(trainer::BEST_ADAPTER_DIR).display()
    );
    println!(
        "metrics: {}",
        s.output_dir.join(metrics_log::METRICS_FILE).display()
    );
    for p in plots {
        println!("plot: {}", p.display());
    }
}

/// Loss and dev-metric plots of one run.
pub fn plot_run(output_dir: &Path) -> Result<Vec<PathBuf>> {
    let (train, eval) = metrics_log::read(&output_dir.join(metrics_log::METRICS_FILE))?;
    let mut out = Vec::new();
    let loss = Series {
        label: "train loss".into(),
        group: None,
        points: train.iter().map(|r| (r.step as f64, r.loss)).collect(),
    };
    line_plot(
        &output_dir.join("loss"),
        "training loss",
        "step",
        "loss",
        &[loss],
    )?;
    out.push(output_dir.join("loss.png"));
    if !eval.is_empty() {
        let name = eval[0].main_name.clone();
        let dev = Series {
            label: format!("dev {name}"),
            group: None,
            points: eval.iter().map(|r| (r.step as f64, r.main)).collect(),
        };
        line_plot(
            &output_dir.join("dev_metric"),
            &format!("dev {name}"),
            "step",
            &name,
            &[dev],
        )?;
        out.push(output_dir.join("dev_metric.png"));
    }
    Ok(out)
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint directory (with adapter/) or an adapter directory (PEFT format).
    #[arg(long)]
    pub adapter: PathBuf,
    #[arg(long)]
    pub task: String,
    /// Base model folder (default: the default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// dev or test (test writes predictions in GLUE's submission format).
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// Where test predictions go (default `<TASK>.tsv` in the current folder).
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 128)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long)]
    pub glue_dir: Option<PathBuf>,
    /// Evaluate on the first N examples only.
    #[arg(long)]
    pub limit: Option<usize>,
}

fn adapter_dir(path: &Path) -> PathBuf {
    let inner = path.join(crate::checkpoint::ADAPTER_DIR);
    if inner.join(loraplus_core::ADAPTER_CONFIG).exists() {
        inner
    } else {
        path.to_path_buf()
    }
}

/// `loraplus eval`.
pub fn eval(a: EvalArgs) -> Result<()> {
    let task = Task::from_name(&a.task).map_err(UsageError::wrap)?;
    let device = parse_device(&a.device).map_err(UsageError::wrap)?;
    let adir = adapter_dir(&a.adapter);
    let lora_cfg = loraplus_core::read_adapter_config(&adir).map_err(UsageError::wrap)?;
    let mdir = a.model.clone().unwrap_or_else(paths::model_dir);
    let cfg = TrainConfig {
        task: a.task.clone(),
        model: Some(mdir.clone()),
        glue_dir: a.glue_dir.clone(),
        max_seq_len: a.max_seq_len,
        eval_batch_size: a.batch_size,
        device: a.device.clone(),
        ..TrainConfig::default()
    };
    let (model, lora) = backend::load_model_with_lora(&mdir, task, lora_cfg, device, "f32")?;
    lora.load_adapter(&adir)?;
    let encoder = Encoder::from_model_dir(&mdir, a.max_seq_len)?;
    match a.split.as_str() {
        "dev" => {
            for split in task.spec().dev_splits() {
                let mut data = trainer::load_split(&cfg, task, split, &encoder)?;
                if let Some(n) = a.limit {
                    data = std::sync::Arc::new(backend::first_n(&data, n)?);
                }
                let r =
                    trainer::evaluate_split(&model, task, &data, encoder.pad_id(), &cfg, device)?;
                let values: Vec<String> = r
                    .values
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                println!(
                    "{} {split:?} ({} examples): {}",
                    task.spec().name,
                    data.len(),
                    values.join(", ")
                );
            }
            Ok(())
        }
        "test" => {
            let data = trainer::load_split(&cfg, task, Split::Test, &encoder)?;
            let (preds, _) = trainer::predict(&model, task, &data, encoder.pad_id(), &cfg, device)?;
            let out = a
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.tsv", task.spec().name)));
            let mut text = String::from("index\tprediction\n");
            for (i, p) in preds.iter().enumerate() {
                text.push_str(&format!("{i}\t{}\n", backend::label_text(task, p)));
            }
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{} test predictions written to {}",
                preds.len(),
                out.display()
            );
            Ok(())
        }
        other => Err(UsageError::wrap(anyhow::anyhow!(
            "--split must be dev or test, found {other:?}"
        ))),
    }
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// A checkpoint or adapter directory.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The task the adapter was trained on (sets the classification head's size).
    #[arg(long)]
    pub task: String,
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output folder: model.safetensors + config.json (+ tokenizer.json), loadable by transformers.
    #[arg(long)]
    pub output: PathBuf,
}

/// `loraplus merge`.
pub fn merge(a: MergeArgs) -> Result<()> {
    let task = Task::from_name(&a.task).map_err(UsageError::wrap)?;
    let adir = adapter_dir(&a.adapter);
    let lora_cfg = loraplus_core::read_adapter_config(&adir).map_err(UsageError::wrap)?;
    let mdir = a.model.clone().unwrap_or_else(paths::model_dir);
    let (model, lora) =
        backend::load_model_with_lora(&mdir, task, lora_cfg, tch::Device::Cpu, "f32")?;
    lora.load_adapter(&adir)?;
    lora.merge(true)?;
    backend::write_merged(&model, &lora, &mdir, task, &a.output)?;
    println!("merged model written to {}", a.output.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct GlueArgs {
    /// Base config (TOML/JSON); its task is replaced by each of --tasks.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Comma-separated tasks.
    #[arg(long, default_value = "sst2,mrpc,cola,stsb", value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Comma-separated LoRA+ ratios; 1 is plain LoRA.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    pub ratios: Vec<f64>,
    /// Comma-separated seeds.
    #[arg(long, default_value = "42", value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Reuse finished runs (an `adapter/` and `metrics.jsonl` in the run's folder) instead of
    /// training them again: redo the tables and plots of an earlier grid, or finish a grid that
    /// was interrupted.
    #[arg(long)]
    pub reuse: bool,
    /// Flags as for `train`; `--output-dir` (default runs/glue) gets `<task>/ratio-R/seed-S/`.
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Serialize)]
struct GlueRun {
    task: String,
    ratio: f64,
    seed: u64,
    main_name: String,
    final_main: f64,
    best_main: Option<f64>,
    target_reached_at: Option<usize>,
    steps: usize,
    seconds: f64,
}

/// `loraplus glue`: every (task, ratio, seed) on the same budget; a markdown table, JSON and
/// overlaid plots per task.
pub fn glue(a: GlueArgs) -> Result<()> {
    let mut base = match &a.config {
        Some(p) => TrainConfig::from_file(p).map_err(UsageError::wrap)?,
        None => TrainConfig::default(),
    };
    a.overrides.apply(&mut base);
    let root = a
        .overrides
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/glue"));
    let mut runs = Vec::new();
    for task in &a.tasks {
        let mut loss_series = Vec::new();
        let mut dev_series = Vec::new();
        for (ratio_index, &ratio) in a.ratios.iter().enumerate() {
            for &seed in &a.seeds {
                let out = root
                    .join(task)
                    .join(format!("ratio-{ratio}"))
                    .join(format!("seed-{seed}"));
                let mut cfg = base.clone();
                cfg.task = task.clone();
                cfg.seed = seed;
                cfg.optim.loraplus_ratio = ratio;
                cfg.output_dir = out.clone();
                cfg.validate().map_err(UsageError::wrap)?;
                let metrics = out.join(metrics_log::METRICS_FILE);
                let finished = out
                    .join("adapter")
                    .join(loraplus_core::ADAPTER_CONFIG)
                    .exists()
                    && metrics.exists();
                let summary = if a.reuse && finished {
                    eprintln!(
                        "== {task} ratio {ratio} seed {seed}: reusing {}",
                        out.display()
                    );
                    None
                } else {
                    eprintln!("== {task} ratio {ratio} seed {seed}");
                    let mut t = Trainer::new(cfg, None)?;
                    Some(t.train()?)
                };
                let (train, eval) = metrics_log::read(&metrics)?;
                let last = eval
                    .last()
                    .with_context(|| format!("{}: no evaluation", metrics.display()))?;
                let run = match &summary {
                    Some(s) => {
                        let fe = s.final_eval.clone().context("no final evaluation")?;
                        GlueRun {
                            task: task.clone(),
                            ratio,
                            seed,
                            main_name: fe.main_name.clone(),
                            final_main: fe.main,
                            best_main: s.best_metric,
                            target_reached_at: s.target_reached_at,
                            steps: s.steps,
                            seconds: s.train_seconds,
                        }
                    }
                    None => GlueRun {
                        task: task.clone(),
                        ratio,
                        seed,
                        main_name: last.main_name.clone(),
                        final_main: last.main,
                        best_main: eval.iter().map(|e| e.main).reduce(f64::max),
                        target_reached_at: base
                            .target_metric
                            .and_then(|t| eval.iter().find(|e| e.main >= t).map(|e| e.step)),
                        steps: train.last().map_or(last.step, |r| r.step),
                        seconds: last.elapsed_s,
                    },
                };
                let label = if ratio == 1.0 {
                    format!("LoRA s{seed}")
                } else {
                    format!("LoRA+ {ratio} s{seed}")
                };
                loss_series.push(Series {
                    label: label.clone(),
                    group: Some(ratio_index),
                    points: train.iter().map(|r| (r.step as f64, r.loss)).collect(),
                });
                dev_series.push(Series {
                    label,
                    group: Some(ratio_index),
                    points: eval.iter().map(|r| (r.step as f64, r.main)).collect(),
                });
                runs.push(run);
            }
        }
        let dir = root.join(task);
        line_plot(
            &dir.join("loss"),
            &format!("{task}: training loss"),
            "step",
            "loss",
            &loss_series,
        )?;
        line_plot(
            &dir.join("dev_metric"),
            &format!("{task}: dev metric"),
            "step",
            "metric",
            &dev_series,
        )?;
    }
    let md = glue_table(&runs);
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("glue_results.md"), &md)?;
    std::fs::write(
        root.join("glue_results.json"),
        serde_json::to_string_pretty(&runs)?,
    )?;
    println!("{md}");
    Ok(())
}

fn glue_table(runs: &[GlueRun]) -> String {
    let mut md = String::from("| task | ratio | metric | seeds | final dev (mean ± std) | best dev | steps to target |\n|---|---|---|---|---|---|---|\n");
    let mut keys: Vec<(String, f64)> = Vec::new();
    for r in runs {
        if !keys.iter().any(|(t, q)| *t == r.task && *q == r.ratio) {
            keys.push((r.task.clone(), r.ratio));
        }
    }
    for (task, ratio) in keys {
        let group: Vec<&GlueRun> = runs
            .iter()
            .filter(|r| r.task == task && r.ratio == ratio)
            .collect();
        let vals: Vec<f64> = group.iter().map(|r| r.final_main).collect();
        let n = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let std = if vals.len() > 1 {
            (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        let best = group
            .iter()
            .filter_map(|r| r.best_main)
            .fold(f64::NAN, f64::max);
        let targets: Vec<String> = group
            .iter()
            .map(|r| {
                r.target_reached_at
                    .map_or("-".to_string(), |s| s.to_string())
            })
            .collect();
        md.push_str(&format!(
            "| {task} | {ratio} | {} | {} | {mean:.4} ± {std:.4} | {best:.4} | {} |\n",
            group[0].main_name,
            group.len(),
            targets.join(", ")
        ));
    }
    md
}

/// `loraplus info`.
pub fn info() -> Result<()> {
    println!("loraplus {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch: {}", backend::libtorch_version());
    println!("CUDA available: {}", tch::Cuda::is_available());
    println!("CUDA devices: {}", tch::Cuda::device_count());
    println!("cuDNN available: {}", tch::Cuda::cudnn_is_available());
    println!("CPU threads: {}", tch::get_num_threads());
    let mdir = paths::model_dir();
    let found = mdir.join("model.safetensors").exists();
    println!(
        "default model: {} ({})",
        mdir.display(),
        if found {
            "found"
        } else {
            "NOT found: run `make setup` or set LORAPLUS_MODEL_DIR"
        }
    );
    let glue = paths::glue_dir();
    println!(
        "GLUE data: {} ({})",
        glue.display(),
        if glue.is_dir() {
            "found"
        } else {
            "NOT found: set GLUE_DIR"
        }
    );
    Ok(())
}

/// Fail with a usage error if `path` does not exist.
pub fn require_exists(path: &Path, what: &str) -> Result<()> {
    if !path.exists() {
        bail!(UsageError(anyhow::anyhow!(
            "{what} {} does not exist",
            path.display()
        )));
    }
    Ok(())
}
