//! What the `loraplus` subcommands do, as library functions (the binary only parses flags).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use clap::Args;

use loraplus_data::{paths, Split};

use crate::config::{usable_device, TrainConfig};
use crate::metrics_log;
use crate::model;
use crate::plots::{line_plot, Series};
use crate::task;
use crate::task::sequence::SequenceTask;
use crate::trainer::{self, RunSummary, Trainer};

pub mod generate;
pub mod glue;
pub mod tune;
pub use generate::{generate, GenerateArgs};
pub use glue::{glue, GlueArgs};
pub use tune::{tune, TuneArgs};

/// A user error (bad flag, config or input file): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct UsageError(pub anyhow::Error);

/// A run stopped by SIGINT / SIGTERM after its checkpoint (or a launcher whose ranks were):
/// the `loraplus` binary exits 130, as a shell expects of an interrupted command.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

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

/// Flags naming the data of a task that is not GLUE (see `TrainConfig`'s fields of the same names).
#[derive(Args, Debug, Default, Clone)]
pub struct DataFlags {
    /// Training file (CSV, TSV or JSONL, by extension).
    #[arg(long)]
    pub train_file: Option<PathBuf>,
    /// Evaluation file (same formats).
    #[arg(long)]
    pub eval_file: Option<PathBuf>,
    /// Column (or JSON field) of the text (classification / regression).
    #[arg(long)]
    pub text_column: Option<String>,
    /// Column of the second text of a pair.
    #[arg(long)]
    pub text_pair_column: Option<String>,
    /// Column of the label.
    #[arg(long)]
    pub label_column: Option<String>,
    /// Class names, comma-separated, as they appear in the label column (id = position).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// accuracy, f1 or matthews (classification).
    #[arg(long)]
    pub metric: Option<String>,
    /// causal-lm data format: text, prompt-completion or messages (default: detected).
    #[arg(long)]
    pub format: Option<String>,
    /// causal-lm: pack short examples into rows of max_seq_len tokens.
    #[arg(long)]
    pub packing: bool,
    /// causal-lm, messages rows: loss on assistant turns only (true, default) or on every token
    /// (false).
    #[arg(long, value_name = "BOOL")]
    pub assistant_only_loss: Option<bool>,
    /// causal-lm, prompt-completion rows: loss on the completion only (true, default) or on the
    /// prompt too (false).
    #[arg(long, value_name = "BOOL")]
    pub completion_only_loss: Option<bool>,
    /// Skip malformed rows of a classification / regression / GLUE file (counted in a
    /// warning) instead of failing.
    #[arg(long)]
    pub skip_malformed: bool,
}

impl DataFlags {
    /// Write the flags given into `cfg`.
    pub fn apply(&self, cfg: &mut TrainConfig) {
        if let Some(p) = &self.train_file {
            cfg.train_file = Some(p.clone());
        }
        if let Some(p) = &self.eval_file {
            cfg.eval_file = Some(p.clone());
        }
        if let Some(c) = &self.text_column {
            cfg.text_column = c.clone();
        }
        if let Some(c) = &self.text_pair_column {
            cfg.text_pair_column = Some(c.clone());
        }
        if let Some(c) = &self.label_column {
            cfg.label_column = c.clone();
        }
        if let Some(l) = &self.labels {
            cfg.labels = Some(l.clone());
        }
        if let Some(m) = &self.metric {
            cfg.metric = Some(m.clone());
        }
        if let Some(f) = &self.format {
            cfg.format = Some(f.clone());
        }
        if self.skip_malformed {
            cfg.skip_malformed = true;
        }
        if self.packing {
            cfg.packing = true;
        }
        if let Some(b) = self.assistant_only_loss {
            cfg.assistant_only_loss = b;
        }
        if let Some(b) = self.completion_only_loss {
            cfg.completion_only_loss = b;
        }
    }
}

/// A quantized frozen base (see `TrainConfig::quantize`).
#[derive(Args, Debug, Default, Clone)]
pub struct QuantFlags {
    /// Store the frozen base linears quantized: int8 or int4 (weight-only).
    #[arg(long)]
    pub quantize: Option<String>,
    /// int4 group size: 32, 64 (default), 128 or 256.
    #[arg(long)]
    pub quant_group_size: Option<i64>,
}

impl QuantFlags {
    pub fn apply(&self, cfg: &mut TrainConfig) {
        if let Some(q) = &self.quantize {
            cfg.quantize = Some(q.clone());
        }
        if let Some(g) = self.quant_group_size {
            cfg.quant_group_size = Some(g);
        }
    }
}

/// A sweep (`glue`, `tune`) reads lists in place of some single-run flags: those flags, when
/// given, are refused (they would be ignored), naming the list to use. `flags`: (flag, given,
/// the sweep's list flag).
fn refuse_swept(cmd: &str, flags: &[(&str, bool, &str)]) -> Result<()> {
    let given: Vec<String> = flags
        .iter()
        .filter(|(_, given, _)| *given)
        .map(|(flag, _, list)| format!("{flag} (give {list})"))
        .collect();
    if !given.is_empty() {
        bail!(
            "loraplus {cmd} sweeps lists and does not read {}",
            given.join(", ")
        );
    }
    Ok(())
}

/// Flags that override a config file's fields.
#[derive(Args, Debug, Default, Clone)]
pub struct Overrides {
    /// A GLUE task (sst2, mrpc, cola, stsb, qnli, rte, wnli, qqp, mnli), or a task kind on your
    /// own files: classification, regression, causal-lm.
    #[arg(long)]
    pub task: Option<String>,
    #[command(flatten)]
    pub data: DataFlags,
    /// HuggingFace model folder, or a Hub repository id (ORG/NAME) fetched into the Hub cache.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Revision (branch, tag or commit) of a Hub --model (default main).
    #[arg(long)]
    pub revision: Option<String>,
    /// Where checkpoints, metrics, plots and the adapter go.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Seed of everything: head and adapter initialisation, data order, dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16, f16.
    #[arg(long)]
    pub dtype: Option<String>,
    #[command(flatten)]
    pub quant: QuantFlags,
    /// CPU threads for libtorch (0: libtorch's default).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Data-parallel backend: auto, gloo, nccl or none (see `dist_backend` in the config).
    #[arg(long)]
    pub dist_backend: Option<String>,
    /// Stop after this many optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Training epochs (may be fractional).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Examples per optimizer step, all ranks and accumulation steps together.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per example after truncation.
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Learning rate of the A matrices (B's is lr x ratio).
    #[arg(long)]
    pub lr: Option<f64>,
    /// LoRA+ ratio (1 = plain LoRA).
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Use only the first N training examples (after shuffling with the seed).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on only the first N dev examples.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Evaluate every N optimizer steps (0: only at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Write a checkpoint every N optimizer steps (0: at the end and on interruption only).
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
        set!(dist_backend => dist_backend);
        set!(epochs => epochs);
        set!(batch_size => batch_size);
        set!(lr => optim.lr);
        set!(ratio => optim.loraplus_ratio);
        set!(eval_every => eval_every);
        set!(save_every => save_every);
        if let Some(m) = &self.model {
            cfg.model = Some(m.clone());
        }
        if let Some(r) = &self.revision {
            cfg.revision = Some(r.clone());
        }
        if let Some(s) = self.max_steps {
            cfg.max_steps = Some(s);
        }
        if let Some(n) = self.max_seq_len {
            cfg.max_seq_len = Some(n);
        }
        if let Some(n) = self.train_limit {
            cfg.train_limit = Some(n);
        }
        if let Some(n) = self.eval_limit {
            cfg.eval_limit = Some(n);
        }
        self.data.apply(cfg);
        self.quant.apply(cfg);
    }
}

/// `loraplus train --nproc-per-node N`: start N ranks of this same command line (without that
/// flag) on this node with the launcher contract, each with its share of the CPU threads, and
/// wait for them; fails naming the rank that failed. Ctrl-C in the terminal reaches every rank
/// (they agree on the step, write one checkpoint and exit 130); this process waits for them.
pub fn launch_ranks(n: usize) -> Result<()> {
    let program = std::env::current_exe().context("finding the loraplus executable")?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--nproc-per-node" {
            it.next();
        } else if !s.starts_with("--nproc-per-node=") {
            args.push(a);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut launch = loraplus_dist::LocalLaunch::new(program, args, n);
    launch.threads_per_rank = Some((cores / n).max(1));
    // Ctrl-C or SIGTERM to the launcher reaches every rank through it (a second one stops the
    // ranks without a checkpoint, as in a single process).
    let interrupts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = interrupts.clone();
    match ctrlc::set_handler(move || {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("interrupt: the ranks finish their step and write a checkpoint");
        } else {
            eprintln!("second interrupt: the ranks exit without a checkpoint");
        }
    }) {
        Ok(()) => launch.interrupts = Some(interrupts.clone()),
        Err(e) => tracing::warn!(
            "Ctrl-C handler not installed ({e}): an interrupt stops the launcher at once"
        ),
    }
    eprintln!(
        "starting {n} ranks on this node ({} CPU threads each)",
        (cores / n).max(1)
    );
    match loraplus_dist::launch_local(&launch) {
        Ok(()) => Ok(()),
        Err(_) if interrupts.load(Ordering::SeqCst) > 0 => Err(Interrupted.into()),
        // A rank refused the user's input (it printed why): so does the launcher.
        Err(e @ loraplus_dist::DistError::RankFailed { code: Some(2), .. }) => {
            Err(UsageError::wrap(e.into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// `loraplus train`: run, handle SIGINT/SIGTERM with a checkpoint, print a summary and plots.
pub fn train(cfg: TrainConfig, resume: Option<&Path>, progress: bool) -> Result<()> {
    let mut t = Trainer::new(cfg, resume)?;
    t.show_progress = progress;
    let flag = t.interrupt_flag();
    if let Err(e) = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing the current step and writing a checkpoint");
    }) {
        tracing::warn!(
            "Ctrl-C / SIGTERM handler not installed ({e}): an interrupt will stop the run without a checkpoint"
        );
    }
    if t.is_main() {
        eprintln!("{}", t.lora.summary());
        if let Some(q) = model::quantization_summary(&t.lora) {
            eprintln!("{q}");
        }
    }
    let summary = t.train()?;
    if t.is_main() {
        let plots = plot_run(&t.config.output_dir).unwrap_or_else(|e| {
            tracing::warn!("plots not written: {e:#}");
            Vec::new()
        });
        print_summary(&summary, &plots);
    }
    if t.interrupt_flag().load(Ordering::Relaxed) {
        return Err(Interrupted.into());
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
        let name = s
            .final_eval
            .as_ref()
            .map_or("main metric", |e| e.main_name.as_str());
        println!("best dev {name}: {b:.4} at step {at}");
    }
    if let Some(at) = s.target_reached_at {
        println!("target_metric reached at step {at}");
    }
    println!("adapter: {}", s.adapter_dir.display());
    let best = s.output_dir.join(trainer::BEST_ADAPTER_DIR);
    if best.exists() {
        println!("best adapter: {}", best.display());
    }
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
    /// A checkpoint directory (with adapter/) or an adapter directory (PEFT format); none: the
    /// base model alone (multiple-choice only).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The run's config file (TOML/JSON): task, data and model; the flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A GLUE task, classification, regression, causal-lm (eval loss and perplexity of
    /// --eval-file), or multiple-choice (log-likelihood scoring of --eval-file rows
    /// `{"question", "choices", "answer"}`).
    #[arg(long)]
    pub task: Option<String>,
    /// Base model folder or Hub repository id (default: the config's, else the default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Revision (branch, tag or commit) of a Hub --model (default main).
    #[arg(long)]
    pub revision: Option<String>,
    /// dev or test (test writes predictions in GLUE's submission format).
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// Where `--split test` writes its GLUE submission (default `<TASK>.tsv` in the current
    /// folder); for multiple-choice, the per-row scores (JSON).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// cpu, cuda, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Tokens per example after truncation (default: the config's; without --config, the
    /// adapter's run's, else 128, or a causal LM's training default).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Examples per evaluation batch (default: the config's; without --config, the adapter's
    /// run's, else 128).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Weights dtype of the base: f32, bf16 or f16 (default: the config's; without --config,
    /// the adapter's run's, else f32).
    #[arg(long)]
    pub dtype: Option<String>,
    /// GLUE data folder (default $GLUE_DIR, else ../shared/glue).
    #[arg(long)]
    pub glue_dir: Option<PathBuf>,
    /// Evaluate on the first N examples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Classification / regression dev split: also write every row's prediction, gold label and
    /// logits as JSON Lines (`{"index", "prediction", "label", "logits"}`) to this file.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataFlags,
    /// Evaluate on the quantized base the adapter was trained on.
    #[command(flatten)]
    pub quant: QuantFlags,
}

/// The adapter folder of `--adapter path`: its `adapter/` when it is a checkpoint or a finished
/// run's output folder, else itself when it holds an adapter config. Anything else is the
/// user's error (exit 2), naming what the folder is: missing, a file, or an unfinished run
/// (with its newest checkpoint to pass instead).
pub fn adapter_dir(path: &Path) -> Result<PathBuf> {
    let config = loraplus_core::ADAPTER_CONFIG;
    let inner = path.join(crate::checkpoint::ADAPTER_DIR);
    if inner.join(config).exists() {
        return Ok(inner);
    }
    if path.join(config).exists() {
        return Ok(path.to_path_buf());
    }
    let problem = if !path.exists() {
        "does not exist".to_string()
    } else if !path.is_dir() {
        "is a file, not an adapter folder".to_string()
    } else if let Some((_, newest)) = crate::checkpoint::list(path)?.pop() {
        format!(
            "holds no adapter yet (an unfinished run): pass a checkpoint, e.g. its newest {}",
            newest.display()
        )
    } else {
        format!(
            "holds no {config}: expected an adapter folder (PEFT format), a checkpoint or a finished run's output folder"
        )
    };
    Err(UsageError::wrap(anyhow::anyhow!(
        "--adapter {} {problem}",
        path.display()
    )))
}

/// Without `--model` (or `model` in the config), the base the adapter records
/// (`base_model_name_or_path`) when that is a folder here, as PEFT's `AutoPeftModel` does;
/// else the default model.
fn model_from_adapter(cfg: &mut TrainConfig, adapter: &Path) -> Result<()> {
    if cfg.model.is_some() {
        return Ok(());
    }
    let Ok(lc) = loraplus_core::read_adapter_config(adapter) else {
        return Ok(());
    };
    let Some(base) = lc.base_model_name_or_path.filter(|b| !b.is_empty()) else {
        return Ok(());
    };
    if Path::new(&base).is_dir() || loraplus_models::hub::is_repo_id(&base) {
        // A folder here, or a Hub repository id (from the Hub cache), as PEFT's AutoPeftModel.
        tracing::info!(
            "model: {base} (the adapter's base_model_name_or_path; --model names another)"
        );
        cfg.model = Some(PathBuf::from(base));
        return Ok(());
    }
    // A path that is not here (a relative one recorded from another folder): the default
    // model in its place would score another base without a word.
    Err(UsageError::wrap(anyhow::anyhow!(
        "the adapter {} records its base model as {base} (base_model_name_or_path), which is not a folder here (relative to {}): pass --model",
        adapter.display(),
        std::env::current_dir().unwrap_or_default().display()
    )))
}

/// The config of the run that trained the adapter `adir` (`trainer_state.json` of the
/// checkpoint `adir`, or of the newest checkpoint of the run `adir` is the adapter of), if
/// recorded.
fn recorded_config(adir: &Path) -> Option<TrainConfig> {
    let run = if adir.join(crate::checkpoint::TRAINER_STATE).is_file() {
        adir
    } else {
        adir.parent()?
    };
    let checkpoint = crate::checkpoint::resolve(run).ok()?;
    Some(crate::checkpoint::read_state(&checkpoint).ok()?.config)
}

/// The task the adapter's run trained, if recorded ([`recorded_config`]).
fn recorded_task(adir: &Path) -> Option<String> {
    recorded_config(adir).map(|c| c.task)
}

/// Eval of an adapter whose run is recorded, without `--config`, reads and scores the data as
/// the run did, so a checkpoint's scores are the ones its run logged: what a flag does not set
/// is the run's (its `max_seq_len`, eval batch size and dtype; its evaluation file, columns,
/// metric and format; whether malformed rows are skipped and too-long ones refused). A run on a
/// quantized base evaluated without `--quantize` is said to score the full-precision base.
fn eval_as_the_run(cfg: &mut TrainConfig, a: &EvalArgs, adapter: &Path) {
    let Some(run) = adapter_dir(adapter).ok().and_then(|a| recorded_config(&a)) else {
        return;
    };
    if run.task != cfg.task {
        return;
    }
    let d = &a.data;
    let mut taken: Vec<String> = Vec::new();
    // The run's value of a setting no flag gave (`given`), where it differs from eval's.
    macro_rules! adopt {
        ($given:expr, $field:ident) => {
            if !$given && run.$field != cfg.$field {
                taken.push(format!(
                    "{} {}",
                    stringify!($field),
                    serde_json::to_string(&run.$field).unwrap_or_default()
                ));
                cfg.$field = run.$field.clone();
            }
        };
    }
    // (A checkpoint from before max_seq_len was recorded leaves eval's default.)
    adopt!(
        a.max_seq_len.is_some() || run.max_seq_len.is_none(),
        max_seq_len
    );
    adopt!(a.batch_size.is_some(), eval_batch_size);
    adopt!(a.dtype.is_some(), dtype);
    adopt!(d.text_column.is_some(), text_column);
    adopt!(d.text_pair_column.is_some(), text_pair_column);
    adopt!(d.label_column.is_some(), label_column);
    adopt!(d.metric.is_some(), metric);
    adopt!(d.format.is_some(), format);
    adopt!(d.skip_malformed, skip_malformed);
    adopt!(false, too_long);
    adopt!(d.assistant_only_loss.is_some(), assistant_only_loss);
    adopt!(d.completion_only_loss.is_some(), completion_only_loss);
    // The run's evaluation file, where it still is (else eval asks for --eval-file).
    match (&d.eval_file, &run.eval_file) {
        (None, Some(f)) if f.is_file() => {
            taken.push(format!("eval_file {}", f.display()));
            cfg.eval_file = Some(f.clone());
        }
        (None, Some(f)) => tracing::warn!(
            "the adapter's run evaluated on {}, which is not here (relative to {}): give --eval-file",
            f.display(),
            std::env::current_dir().unwrap_or_default().display()
        ),
        _ => {}
    }
    if !taken.is_empty() {
        tracing::info!(
            "as the adapter's run (flags set others): {}",
            taken.join(", ")
        );
    }
    warn_full_precision(
        &run,
        a.quant.quantize.as_deref(),
        "evaluates it on",
        "gives the run's numbers",
    );
}

/// An adapter whose run trained on a quantized base, used without `--quantize`: said, since
/// the full-precision base is not the one its adapters learned on.
fn warn_full_precision(run: &TrainConfig, quantize: Option<&str>, doing: &str, flag_does: &str) {
    if let (None, Some(q)) = (quantize, &run.quantize) {
        tracing::warn!(
            "the adapter's run trained on the base quantized {q}; this {doing} the full-precision base (--quantize {q} {flag_does})"
        );
    }
}

/// `--task`, else (without `--config`) the task the adapter's run recorded.
fn task_or_recorded(
    task: Option<&str>,
    config: Option<&Path>,
    adapter: Option<&Path>,
) -> Option<String> {
    task.map(str::to_string).or_else(|| {
        let adir = adapter
            .filter(|_| config.is_none())
            .and_then(|a| adapter_dir(a).ok())?;
        let t = recorded_task(&adir)?;
        tracing::info!("task {t} (recorded by the adapter's run; --task names another)");
        Some(t)
    })
}

/// A GLUE task's adapter evaluated on another GLUE task (an SST-2 adapter on MRPC: the same
/// two classes, so nothing else would notice) is refused, by the task its run recorded
/// (`trainer_state.json` of the checkpoint, or of the run's newest checkpoint).
fn check_glue_task(cfg: &TrainConfig, adir: &Path) -> Result<()> {
    let Some(recorded) = recorded_task(adir) else {
        return Ok(());
    };
    let glue = |t: &str| loraplus_data::Task::from_name(t).is_ok();
    if recorded != cfg.task && glue(&recorded) && glue(&cfg.task) {
        return Err(UsageError::wrap(anyhow::anyhow!(
            "{} was trained on {recorded} (its run's {}), not {}: pass --task {recorded}",
            adir.display(),
            crate::checkpoint::TRAINER_STATE,
            cfg.task
        )));
    }
    Ok(())
}

/// What the adapter (and the run that trained it) settles for `eval` and `merge`: the base
/// model when none is given ([`model_from_adapter`]), a GLUE task that must match
/// ([`check_glue_task`]), and a classification adapter's class names (`label_names.json`,
/// written by training), which become the config's, so an eval file is scored with training's
/// class ids; a different task or label list is refused.
fn apply_adapter_run(cfg: &mut TrainConfig, adapter: Option<&Path>) -> Result<()> {
    let Some(adapter) = adapter else {
        return Ok(());
    };
    let adir = adapter_dir(adapter)?;
    model_from_adapter(cfg, &adir)?;
    check_glue_task(cfg, &adir)?;
    let Some(names) = crate::checkpoint::read_label_names(&adir)? else {
        return Ok(());
    };
    if cfg.task != names.task {
        return Err(UsageError::wrap(anyhow::anyhow!(
            "{} was trained for task {:?} (its {}), not {:?}",
            adapter.display(),
            names.task,
            crate::checkpoint::LABELS_FILE,
            cfg.task
        )));
    }
    match &cfg.labels {
        Some(l) if *l != names.labels => Err(UsageError::wrap(anyhow::anyhow!(
            "--labels {l:?} differ from the classes {:?} the adapter was trained with ({}): leave --labels out",
            names.labels,
            crate::checkpoint::LABELS_FILE
        ))),
        _ => {
            cfg.labels = Some(names.labels);
            Ok(())
        }
    }
}

/// The config of an `eval` or `merge`: the file's (or defaults sized for evaluation), with flags.
fn eval_config(
    config: Option<&Path>,
    task: Option<&str>,
    model: Option<&Path>,
    revision: Option<&str>,
    data: &DataFlags,
) -> Result<TrainConfig> {
    let mut cfg = match config {
        Some(p) => TrainConfig::from_file(p).map_err(UsageError::wrap)?,
        None => TrainConfig {
            eval_batch_size: 128,
            ..TrainConfig::default()
        },
    };
    if let Some(t) = task {
        cfg.task = t.to_string();
    } else if config.is_none() {
        return Err(UsageError::wrap(anyhow::anyhow!(
            "--task (or --config) is required: a GLUE task, classification, regression or causal-lm (an adapter of a loraplus run brings its own)"
        )));
    }
    if config.is_none() && !cfg.is_lm_task() {
        // Dev sentences may run longer than the training default; a causal LM's default is
        // its training one.
        cfg.max_seq_len = Some(128);
    }
    if let Some(m) = model {
        cfg.model = Some(m.to_path_buf());
    }
    if let Some(r) = revision {
        cfg.revision = Some(r.to_string());
    }
    data.apply(&mut cfg);
    Ok(cfg)
}

/// An adapter saved for a causal LM (`task_type` CAUSAL_LM) is refused for a classifier, and
/// one saved for a classifier (SEQ_CLS) for a causal-LM task: its head would be missing (or
/// random) and its layers trained for another objective.
pub(crate) fn check_adapter_task(
    lc: &loraplus_core::LoraConfig,
    head: loraplus_models::Head,
    adapter: &Path,
) -> Result<()> {
    use loraplus_models::Head;
    let wanted = match head {
        Head::CausalLm => "CAUSAL_LM",
        Head::SequenceClassification { .. } => "SEQ_CLS",
    };
    match lc.task_type.as_deref() {
        Some(t @ ("CAUSAL_LM" | "SEQ_CLS")) if t != wanted => Err(UsageError::wrap(anyhow::anyhow!(
            "{}: the adapter was trained for task_type {t} (adapter_config.json), this task needs {wanted}: {}",
            adapter.display(),
            if t == "CAUSAL_LM" {
                "pass --task causal-lm (or multiple-choice)"
            } else {
                "pass the classification or regression task it was trained on"
            }
        ))),
        _ => Ok(()),
    }
}

/// Load the base model in `mdir` with an adapter from `adapter` (a checkpoint or adapter
/// folder) for the head `head`; `for_merge`: see [`model::load_model_with_lora`].
fn load_with_adapter(
    cfg: &TrainConfig,
    mdir: &Path,
    head: loraplus_models::Head,
    adapter: &Path,
    device: tch::Device,
    for_merge: bool,
) -> Result<(model::Model, loraplus_core::LoraModel)> {
    let adir = adapter_dir(adapter)?;
    let lora_cfg =
        loraplus_core::read_adapter_config(&adir).map_err(|e| UsageError::wrap(e.into()))?;
    check_adapter_task(&lora_cfg, head, &adir)?;
    let base = lora_cfg.base_model_name_or_path.clone();
    let quantize = cfg.quant_scheme().map_err(UsageError::wrap)?;
    let (m, lora) = model::load_model_with_lora(
        mdir, head, lora_cfg, device, &cfg.dtype, quantize, for_merge,
    )?;
    lora.load_adapter(&adir).map_err(|e| {
        let e = anyhow::Error::from(e);
        let same = |b: &str| {
            Path::new(b) == mdir
                || std::fs::canonicalize(b).ok() == std::fs::canonicalize(mdir).ok()
        };
        match base.as_deref() {
            // A likely cause: the adapter was trained on another base.
            Some(b) if !same(b) => e.context(format!(
                "the adapter records base model {b} (base_model_name_or_path); the model here is {}",
                mdir.display()
            )),
            _ => e,
        }
    })?;
    if let Some(q) = model::quantization_summary(&lora) {
        eprintln!("{q}");
    }
    Ok((m, lora))
}

/// The base model in `mdir` alone, for `head`: what eval scores without an adapter.
fn load_base(
    cfg: &TrainConfig,
    mdir: &Path,
    head: loraplus_models::Head,
    device: tch::Device,
) -> Result<model::Model> {
    let opts = loraplus_models::LoadOptions {
        task: head,
        dtype: model::kind_of(&cfg.dtype).map_err(UsageError::wrap)?,
        device,
        quantize: cfg.quant_scheme().map_err(UsageError::wrap)?,
        ..loraplus_models::LoadOptions::default()
    };
    Ok(loraplus_models::TaskModel::load(mdir, &opts)?.0)
}

/// `path` can be written (before minutes of predictions are computed for it): opened for
/// appending, and removed again when this made it.
fn check_writable(flag: &str, path: &Path) -> Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("{flag} {} cannot be written", path.display()))
        .map_err(UsageError::wrap)?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Flags eval would ignore are refused: `--packing` (training only), and those that only one
/// `--split` (or only multiple-choice) reads.
fn check_eval_flags(a: &EvalArgs, task: &str) -> Result<()> {
    if a.limit == Some(0) {
        bail!("--limit must be at least 1, found 0 (leave it out to evaluate every row)");
    }
    if a.data.packing {
        bail!("--packing is for training: evaluation scores every example in a row of its own");
    }
    if task == "multiple-choice" {
        if a.split != "dev" || a.limit.is_some() || a.predictions.is_some() {
            bail!(
                "--split, --limit and --predictions are not for multiple-choice: it scores every row of --eval-file (--output gets the per-row scores)"
            );
        }
        return Ok(());
    }
    match a.split.as_str() {
        "test" if a.limit.is_some() || a.predictions.is_some() => bail!(
            "--limit and --predictions are for --split dev: a GLUE test submission has a prediction for every test row (written to --output)"
        ),
        "dev" if a.output.is_some() => bail!(
            "--output is where --split test writes its submission file (and multiple-choice its per-row scores); on the dev split, --predictions writes every row's prediction"
        ),
        "dev" | "test" => Ok(()),
        other => bail!("--split must be dev or test, found {other:?}"),
    }
}

/// `loraplus eval`.
pub fn eval(a: EvalArgs) -> Result<()> {
    if let (Some(ad), None, None) = (&a.adapter, &a.task, &a.config) {
        // What is wrong with the adapter comes before the task it would have named.
        adapter_dir(ad)?;
    }
    let task = task_or_recorded(a.task.as_deref(), a.config.as_deref(), a.adapter.as_deref());
    let mut cfg = eval_config(
        a.config.as_deref(),
        task.as_deref(),
        a.model.as_deref(),
        a.revision.as_deref(),
        &a.data,
    )?;
    if let Some(d) = &a.device {
        cfg.device = d.clone();
    }
    if let Some(n) = a.max_seq_len {
        cfg.max_seq_len = Some(n);
    }
    if let (Some(adapter), None) = (&a.adapter, &a.config) {
        eval_as_the_run(&mut cfg, &a, adapter);
    }
    if let Some(n) = a.batch_size {
        cfg.eval_batch_size = n;
    }
    if let Some(t) = &a.dtype {
        cfg.dtype = t.clone();
    }
    if let Some(g) = &a.glue_dir {
        cfg.glue_dir = Some(g.clone());
    }
    a.quant.apply(&mut cfg);
    check_eval_flags(&a, &cfg.task).map_err(UsageError::wrap)?;
    // Flags before files: an unknown scheme is named before any adapter path is read.
    cfg.quant_scheme().map_err(UsageError::wrap)?;
    let device = usable_device(&cfg.device)
        .context("--device")
        .map_err(UsageError::wrap)?;
    if cfg.task == "multiple-choice" {
        return eval_multiple_choice(&a, &cfg, device);
    }
    apply_adapter_run(&mut cfg, a.adapter.as_deref())?;
    cfg.validate().map_err(UsageError::wrap)?;
    let mdir = model::model_dir(&cfg)?;
    cfg.max_seq_len = Some(model::resolve_max_seq_len(&cfg, &mdir)?);
    let task = task::from_config(&cfg).map_err(UsageError::wrap)?;
    let model = match a.adapter.as_deref() {
        Some(adapter) => load_with_adapter(&cfg, &mdir, task.head(), adapter, device, false)?.0,
        // The base alone: its loss and perplexity, to compare an adapter with.
        None if task.head() == loraplus_models::Head::CausalLm => {
            load_base(&cfg, &mdir, task.head(), device)?
        }
        None => {
            return Err(UsageError::wrap(anyhow::anyhow!(
                "--adapter is required for task {} (its head is trained); causal-lm and multiple-choice also evaluate the base alone",
                task.name()
            )))
        }
    };
    let pad = task.padding(&cfg, &mdir).map_err(task::bad_data)?;
    match a.split.as_str() {
        "dev" => {
            let evals = task::limit_evals(
                task.load_evals(&cfg, &mdir).map_err(task::bad_data)?,
                a.limit,
            )
            .map_err(task::bad_data)?;
            task::check_eval_sizes(&cfg, &evals)?;
            if evals.is_empty() {
                return Err(UsageError::wrap(anyhow::anyhow!(
                    "nothing to evaluate: give --eval-file (task {})",
                    task.name()
                )));
            }
            let sets: Vec<_> = evals
                .iter()
                .map(|(_, d)| ("evaluation data", d.as_ref()))
                .collect();
            model::check_token_ids(&model, pad.0, &sets)?;
            if let Some(path) = &a.predictions {
                check_writable("--predictions", path)?;
                let seq = SequenceTask::from_config(&cfg).map_err(|_| {
                    UsageError::wrap(anyhow::anyhow!(
                        "--predictions is for classification and regression tasks"
                    ))
                })?;
                write_predictions(&seq, &model, &evals[0].1, pad.0, &cfg, device, path)?;
            }
            for (split, data) in evals {
                let r = task.evaluate(&model, &data, pad, &cfg, device, None)?;
                let values: Vec<String> = r
                    .values
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                println!(
                    "{} {split:?} ({} examples): {}",
                    task.name(),
                    data.len(),
                    values.join(", ")
                );
            }
            Ok(())
        }
        "test" => {
            let seq = SequenceTask::from_config(&cfg).map_err(|_| {
                UsageError::wrap(anyhow::anyhow!(
                    "--split test writes GLUE submission files: only for GLUE tasks"
                ))
            })?;
            if !matches!(seq.source, crate::task::sequence::Source::Glue { .. }) {
                return Err(UsageError::wrap(anyhow::anyhow!(
                    "--split test writes GLUE submission files: only for GLUE tasks"
                )));
            }
            let out = a
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.tsv", seq.task.name)));
            check_writable("--output", &out)?;
            let data = seq.load_split(&cfg, &mdir, Split::Test)?;
            let (preds, _) = seq.predict(&model, &data, pad.0, &cfg, device)?;
            let mut text = String::from("index\tprediction\n");
            for (i, p) in preds.iter().enumerate() {
                text.push_str(&format!("{i}\t{}\n", seq.label_text(p)));
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

/// Every row's prediction, gold label and logits, as JSON Lines.
fn write_predictions(
    seq: &SequenceTask,
    model: &model::Model,
    data: &std::sync::Arc<loraplus_data::TokenizedDataset>,
    pad_id: u32,
    cfg: &TrainConfig,
    device: tch::Device,
    path: &Path,
) -> Result<()> {
    let (logits, preds, gold) = seq.predict_with_logits(model, data, pad_id, cfg, device)?;
    let mut text = String::new();
    for (i, ((l, p), g)) in logits.iter().zip(&preds).zip(&gold).enumerate() {
        let label = |x: &loraplus_data::Label| match x {
            loraplus_data::Label::Class(c) => serde_json::json!(c),
            loraplus_data::Label::Score(s) => serde_json::json!(s),
        };
        let row = serde_json::json!({
            "index": i,
            "prediction": label(p),
            "label": g.as_ref().map(label),
            "logits": l,
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `loraplus eval --task multiple-choice`: accuracy of log-likelihood scoring (lm-eval-harness'
/// `acc` and `acc_norm`), with or without an adapter; `--output` gets the per-row scores;
/// `--max-seq-len` bounds each sequence (the first question tokens dropped, as lm-eval does).
fn eval_multiple_choice(a: &EvalArgs, cfg: &TrainConfig, device: tch::Device) -> Result<()> {
    use crate::task::multiple_choice;
    let path = cfg.eval_file.clone().ok_or_else(|| {
        UsageError::wrap(anyhow::anyhow!(
            "--task multiple-choice needs --eval-file rows {{\"question\", \"choices\", \"answer\"}}"
        ))
    })?;
    let rows = multiple_choice::read_rows(&path).map_err(UsageError::wrap)?;
    if let Some(out) = &a.output {
        check_writable("--output", out)?;
    }
    let mut cfg = cfg.clone();
    if let Some(ad) = &a.adapter {
        model_from_adapter(&mut cfg, &adapter_dir(ad)?)?;
    }
    let cfg = &cfg;
    let mdir = model::model_dir(cfg)?;
    let tok = model::decoder_tokenizer(&mdir)?;
    let head = loraplus_models::Head::CausalLm;
    let model = match &a.adapter {
        Some(ad) => load_with_adapter(cfg, &mdir, head, ad, device, false)?.0,
        None => load_base(cfg, &mdir, head, device)?,
    };
    let report =
        multiple_choice::evaluate(&model, &tok, &path, cfg.eval_batch_size, cfg.max_seq_len)?;
    println!(
        "multiple-choice {} ({} questions): accuracy {:.4}, accuracy_norm {:.4}",
        path.display(),
        rows.len(),
        report.accuracy,
        report.accuracy_norm
    );
    if let Some(out) = &a.output {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// A checkpoint or adapter directory.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The base the adapter was trained on was quantized: merge into the same quantized base,
    /// dequantized (the output is full precision).
    #[command(flatten)]
    pub quant: QuantFlags,
    /// The run's config file (task, data, model); the flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The task the adapter was trained on (sets the head: a GLUE task, classification,
    /// regression or causal-lm).
    #[arg(long)]
    pub task: Option<String>,
    /// Base model folder or Hub repository id (default: the config's, else the default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Revision (branch, tag or commit) of a Hub --model (default main).
    #[arg(long)]
    pub revision: Option<String>,
    /// Output folder: model.safetensors + config.json (+ tokenizer files), loadable by transformers.
    /// A new or empty folder, never the base model's or the adapter's.
    #[arg(long)]
    pub output: PathBuf,
    /// Write into an --output folder that already holds files (they are replaced).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub data: DataFlags,
}

/// Where `merge` may write: not the base model's folder nor the adapter's (the files it reads),
/// and, unless `overwrite`, not a folder that holds files already.
fn check_merge_output(output: &Path, model: &Path, adapter: &Path, overwrite: bool) -> Result<()> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    for (what, dir) in [
        ("the base model's folder", model),
        ("the adapter's folder", adapter),
    ] {
        if same(output, dir) {
            return Err(UsageError::wrap(anyhow::anyhow!(
                "--output {} is {what}: merge reads it; choose a new folder",
                output.display()
            )));
        }
    }
    if output.exists() {
        if !output.is_dir() {
            return Err(UsageError::wrap(anyhow::anyhow!(
                "--output {} is a file, not a folder",
                output.display()
            )));
        }
        let holds_files = std::fs::read_dir(output)
            .with_context(|| format!("reading {}", output.display()))?
            .next()
            .is_some();
        if holds_files && !overwrite {
            return Err(UsageError::wrap(anyhow::anyhow!(
                "--output {} already holds files: choose a new or empty folder, or pass --overwrite to replace them",
                output.display()
            )));
        }
    }
    Ok(())
}

/// `loraplus merge`.
pub fn merge(a: MergeArgs) -> Result<()> {
    if let (None, None) = (&a.task, &a.config) {
        adapter_dir(&a.adapter)?;
    }
    let task = task_or_recorded(a.task.as_deref(), a.config.as_deref(), Some(&a.adapter));
    let mut cfg = eval_config(
        a.config.as_deref(),
        task.as_deref(),
        a.model.as_deref(),
        a.revision.as_deref(),
        &a.data,
    )?;
    if cfg.device != "cpu" || cfg.dtype != "f32" {
        tracing::info!(
            "merging on the CPU in f32 (the config's device {:?} and dtype {:?} are for training)",
            cfg.device,
            cfg.dtype
        );
    }
    cfg.dtype = "f32".into();
    a.quant.apply(&mut cfg);
    cfg.quant_scheme().map_err(UsageError::wrap)?;
    if let (None, Some(run)) = (
        &a.config,
        adapter_dir(&a.adapter)
            .ok()
            .and_then(|d| recorded_config(&d)),
    ) {
        warn_full_precision(
            &run,
            a.quant.quantize.as_deref(),
            "merges it into",
            "merges it into the dequantized base it trained on",
        );
    }
    apply_adapter_run(&mut cfg, Some(&a.adapter))?;
    cfg.validate().map_err(UsageError::wrap)?;
    let task = task::from_config(&cfg).map_err(UsageError::wrap)?;
    let mdir = model::model_dir(&cfg)?;
    check_merge_output(&a.output, &mdir, &a.adapter, a.overwrite)?;
    let (model, lora) =
        load_with_adapter(&cfg, &mdir, task.head(), &a.adapter, tch::Device::Cpu, true)?;
    // Adapters trained on a quantized base merge into that base, dequantized.
    lora.dequantize_base()?;
    lora.merge(true)?;
    model::write_merged(&model, &lora, &mdir, task.as_ref(), &a.output)?;
    println!("merged model written to {}", a.output.display());
    Ok(())
}

/// `loraplus info`.
pub fn info() -> Result<()> {
    println!("loraplus {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch: {}", model::libtorch_version());
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
    println!(
        "architectures (config.json model_type): {}; causal LM: {}",
        loraplus_models::supported_model_types().join(", "),
        loraplus_models::registry::causal_lm_model_types().join(", ")
    );
    println!(
        "Hugging Face Hub: {}",
        loraplus_models::hub::HubOptions::from_env().describe()
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
