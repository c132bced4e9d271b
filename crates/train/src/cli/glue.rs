//! `loraplus glue`: the LoRA-against-LoRA+ experiment driver (tasks x ratios x seeds on one
//! budget), with its table and overlaid plots.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::checkpoint;
use crate::cli::{Overrides, UsageError};
use crate::config::TrainConfig;
use crate::metrics_log;
use crate::plots::{line_plot, Series};
use crate::trainer::{Trainer, FINAL_ADAPTER_DIR};

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
    /// Comma-separated seeds (default: the config's seed, else 42).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Reuse finished runs (an `adapter/` and `metrics.jsonl` in the run's folder) instead of
    /// training them again, and resume interrupted ones from their newest checkpoint: redo the
    /// tables and plots of an earlier grid, or finish a grid that was interrupted.
    #[arg(long)]
    pub reuse: bool,
    /// Flags as for `train`; `--output-dir` (default: the config's `output_dir`, else runs/glue)
    /// gets `<task>/ratio-R/seed-S/`.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// The config of the grid's run (task, ratio, seed), in its folder under `root`.
fn run_config(base: &TrainConfig, root: &Path, task: &str, ratio: f64, seed: u64) -> TrainConfig {
    let mut cfg = base.clone();
    cfg.task = task.to_string();
    cfg.seed = seed;
    cfg.optim.loraplus_ratio = ratio;
    cfg.output_dir = root
        .join(task)
        .join(format!("ratio-{ratio}"))
        .join(format!("seed-{seed}"));
    // The run's folder is the experiment's: an unfinished run starts over.
    cfg.overwrite_output_dir = true;
    cfg
}

/// A run that finished: its final adapter and its metrics are in its folder.
fn finished(out: &Path) -> bool {
    out.join(FINAL_ADAPTER_DIR)
        .join(loraplus_core::ADAPTER_CONFIG)
        .exists()
        && out.join(metrics_log::METRICS_FILE).exists()
}

/// A run that stopped before its end (interrupted, or killed) and left checkpoints: `--reuse`
/// resumes it from the newest.
fn interrupted(out: &Path) -> bool {
    !finished(out) && checkpoint::list(out).is_ok_and(|l| !l.is_empty())
}

/// A finished run that `--reuse` would take, or an interrupted one it would resume, must have
/// been trained with the settings the grid would train it with now (its config is in its
/// newest checkpoint): otherwise the table would mix budgets, learning rates or models without
/// a word.
fn check_reusable(cfg: &TrainConfig) -> Result<()> {
    let out = &cfg.output_dir;
    let ckpt = checkpoint::resolve(out).with_context(|| {
        format!(
            "--reuse: {} has an adapter and metrics but no checkpoint to tell what trained them: remove the folder to train the run again",
            out.display()
        )
    })?;
    let saved = checkpoint::read_state(&ckpt)?;
    let differ = checkpoint::reuse_conflicts(&saved.config, cfg)?;
    if !differ.is_empty() {
        anyhow::bail!(
            "--reuse: {} was trained with other settings ({}): {}. Pass the settings it was trained with, remove the folder to train it again, or leave --reuse out to train every run again",
            out.display(),
            ckpt.join(checkpoint::TRAINER_STATE).display(),
            differ.join("; ")
        );
    }
    // The same settings on other data (the task's files edited since): not this grid's result.
    if let Some(recorded) = &saved.train_data_sha256 {
        let mut c = cfg.clone();
        if c.max_seq_len.is_none() {
            c.max_seq_len = saved.config.max_seq_len;
        }
        let task = crate::task::from_config(&c)?;
        let mdir = crate::model::model_dir(&c)?;
        let data = crate::task::load_data(task.as_ref(), &c, &mdir)?;
        if data.train.content_sha256() != *recorded {
            anyhow::bail!(
                "--reuse: {} was trained on other data: the task's training rows differ from the ones its checkpoint records ({}). Remove the folder to train it again, or leave --reuse out to train every run again",
                out.display(),
                ckpt.join(checkpoint::TRAINER_STATE).display()
            );
        }
    }
    Ok(())
}

/// Everything the grid's runs will need, checked before the first one trains (a typo in the
/// last task would otherwise stop the grid after the others have run): no empty or repeated
/// task, ratio or seed; every run's config valid; each task's training and dev data present;
/// with `--reuse`, every finished run trained as it would be now.
fn preflight(a: &GlueArgs, base: &TrainConfig, root: &Path) -> Result<()> {
    fn once<T: PartialEq + std::fmt::Debug>(what: &str, v: &[T]) -> Result<()> {
        if v.is_empty() {
            anyhow::bail!("--{what} is empty");
        }
        if let Some(x) = crate::tune::first_repeat(v) {
            anyhow::bail!("--{what} lists {x:?} twice: {v:?}");
        }
        Ok(())
    }
    if let Some(i) = a.tasks.iter().position(|t| t.trim().is_empty()) {
        anyhow::bail!(
            "--tasks has an empty name at position {}: {:?}",
            i + 1,
            a.tasks
        );
    }
    let o = &a.overrides;
    super::refuse_swept(
        "glue",
        &[
            ("--task", o.task.is_some(), "--tasks"),
            ("--ratio", o.ratio.is_some(), "--ratios"),
            ("--seed", o.seed.is_some(), "--seeds"),
        ],
    )?;
    once("tasks", &a.tasks)?;
    once("ratios", &a.ratios)?;
    once("seeds", &a.seeds)?;
    for task in &a.tasks {
        for &ratio in &a.ratios {
            for &seed in &a.seeds {
                let cfg = run_config(base, root, task, ratio, seed);
                cfg.validate_for_training()
                    .with_context(|| format!("task {task}, ratio {ratio}"))?;
                if a.reuse && (finished(&cfg.output_dir) || interrupted(&cfg.output_dir)) {
                    check_reusable(&cfg)?;
                }
            }
        }
        let mut cfg = base.clone();
        cfg.task = task.clone();
        if matches!(task.as_str(), "causal-lm" | "multiple-choice") {
            anyhow::bail!(
                "task {task}: `glue` compares classifiers and regressors; train a causal LM with `loraplus train`"
            );
        }
        crate::task::from_config(&cfg).with_context(|| format!("task {task}"))?;
        if crate::task::KINDS.contains(&task.as_str()) {
            if cfg.eval_file.is_none() {
                anyhow::bail!(
                    "task {task}: set `eval_file` (--eval-file): every run is scored on it"
                );
            }
            for f in [&cfg.train_file, &cfg.eval_file].into_iter().flatten() {
                if !f.is_file() {
                    anyhow::bail!("task {task}: {} does not exist", f.display());
                }
            }
        } else {
            let t = loraplus_data::Task::from_name(task)?;
            let glue_dir = cfg
                .glue_dir
                .clone()
                .unwrap_or_else(loraplus_data::paths::glue_dir);
            for split in std::iter::once(loraplus_data::Split::Train).chain(t.dev_splits()) {
                let (path, _) = loraplus_data::reader::split_path(&glue_dir, t, split)?;
                if !path.is_file() {
                    anyhow::bail!(
                        "task {task}: its {split} file {} is missing (GLUE data from glue_dir / $GLUE_DIR: {})",
                        path.display(),
                        glue_dir.display()
                    );
                }
            }
        }
    }
    Ok(())
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
pub fn glue(mut a: GlueArgs) -> Result<()> {
    let mut base = match &a.config {
        Some(p) => TrainConfig::from_file(p).map_err(UsageError::wrap)?,
        None => TrainConfig::default(),
    };
    a.overrides.apply(&mut base);
    if a.seeds.is_empty() {
        a.seeds = vec![base.seed];
    }
    crate::trainer::apply_process_settings(&base, true).map_err(UsageError::wrap)?;
    let root = a
        .overrides
        .output_dir
        .clone()
        // Else the config's own output_dir (one it sets), else runs/glue.
        .or_else(|| {
            (base.output_dir != TrainConfig::default().output_dir).then(|| base.output_dir.clone())
        })
        .unwrap_or_else(|| PathBuf::from("runs/glue"));
    preflight(&a, &base, &root).map_err(UsageError::wrap)?;
    let mut runs = Vec::new();
    for task in &a.tasks {
        let mut loss_series = Vec::new();
        let mut dev_series = Vec::new();
        for (ratio_index, &ratio) in a.ratios.iter().enumerate() {
            for &seed in &a.seeds {
                let cfg = run_config(&base, &root, task, ratio, seed);
                let out = cfg.output_dir.clone();
                let metrics = out.join(metrics_log::METRICS_FILE);
                let summary = if a.reuse && finished(&out) {
                    eprintln!(
                        "== {task} ratio {ratio} seed {seed}: reusing {}",
                        out.display()
                    );
                    None
                } else if a.reuse && interrupted(&out) {
                    eprintln!(
                        "== {task} ratio {ratio} seed {seed}: resuming {}",
                        out.display()
                    );
                    let cfg = TrainConfig {
                        overwrite_output_dir: false,
                        ..cfg
                    };
                    let mut t = Trainer::new(cfg, Some(&out))?;
                    Some(t.train()?)
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
