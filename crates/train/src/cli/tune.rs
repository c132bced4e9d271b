//! `loraplus tune`: find a good (lr_A, LoRA+ ratio) for a config by successive halving
//! (see [`crate::tune`]), the head's learning rate held fixed. Writes the table of every trial,
//! the chosen config (a file `loraplus train --config` takes) and heatmaps of the metric.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::{Overrides, UsageError};
use crate::config::TrainConfig;
use crate::plots::{heatmap, Cell, HeatmapSpec};
use crate::task;
use crate::trainer::Trainer;
use crate::tune::{successive_halving, table, EarlyRank, TrialScores, TrialStore, TuneGrid};

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Base config (TOML/JSON): task, model, data, batch size, [lora]...; its lr and ratio are
    /// what the search replaces.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Learning rates of the A matrices, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1e-4,3e-4,1e-3,3e-3",
        allow_hyphen_values = true
    )]
    pub lrs: Vec<f64>,
    /// LoRA+ ratios lr_B / lr_A, comma-separated (1 is plain LoRA).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4,8,16,32",
        allow_hyphen_values = true
    )]
    pub ratios: Vec<f64>,
    /// Seeds of every trial (each cell's score is their mean; default: the config's seed,
    /// else 42).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Steps of the first rung (default: max-steps / 4).
    #[arg(long)]
    pub min_steps: Option<usize>,
    /// Keep the best 1/eta of the cells at each rung; they then run eta times longer.
    #[arg(long, default_value_t = 2)]
    pub eta: usize,
    /// What ranks the cells of the rungs before the last: the metric, or the evaluation loss
    /// (it moves while accuracy-like metrics are still flat at the majority class; on MRPC it
    /// ranked a 28-step rung worse, docs/RESULTS.md 3b). The last rung is always ranked by the
    /// metric.
    #[arg(long, value_enum, default_value_t = EarlyRank::Metric)]
    pub early_rank: EarlyRank,
    /// The head's learning rate, the same in every trial (default: the config's head_lr, else
    /// its lr).
    #[arg(long)]
    pub head_lr: Option<f64>,
    /// Flags as for `train`; `--max-steps` is the full budget of the last rung, `--output-dir`
    /// (default: the config's `output_dir`, else runs/tune) gets `trials/`, `trials.jsonl`, the
    /// table, `best.toml` and heatmaps.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// `loraplus tune`.
pub fn tune(a: TuneArgs) -> Result<()> {
    let o = &a.overrides;
    super::refuse_swept(
        "tune",
        &[
            ("--lr", o.lr.is_some(), "--lrs"),
            ("--ratio", o.ratio.is_some(), "--ratios"),
            ("--seed", o.seed.is_some(), "--seeds"),
        ],
    )
    .map_err(UsageError::wrap)?;
    let mut base = match &a.config {
        Some(p) => TrainConfig::from_file(p).map_err(UsageError::wrap)?,
        None => TrainConfig::default(),
    };
    a.overrides.apply(&mut base);
    base.validate_for_training().map_err(UsageError::wrap)?;
    if task::KINDS.contains(&base.task.as_str()) && base.eval_file.is_none() {
        return Err(UsageError::wrap(anyhow::anyhow!(
            "task {:?}: tune scores every trial on the eval set: set `eval_file` (--eval-file)",
            base.task
        )));
    }
    let max_steps = base.max_steps.ok_or_else(|| {
        UsageError::wrap(anyhow::anyhow!(
            "--max-steps (or max_steps in the config) is required: the budget of the last rung"
        ))
    })?;
    let grid = TuneGrid {
        lrs: a.lrs.clone(),
        ratios: a.ratios.clone(),
        seeds: if a.seeds.is_empty() {
            vec![base.seed]
        } else {
            a.seeds.clone()
        },
        max_steps,
        min_steps: a.min_steps.unwrap_or((max_steps / 4).max(1)),
        eta: a.eta,
        early_rank: a.early_rank,
    };
    grid.validate().map_err(UsageError::wrap)?;
    if let Some(h) = a.head_lr {
        // 0 freezes the head, as `head_lr = 0` does in `train`.
        if !(h.is_finite() && h >= 0.0) {
            return Err(UsageError::wrap(anyhow::anyhow!(
                "--head-lr must be a number >= 0, found {h}"
            )));
        }
    }
    crate::trainer::apply_process_settings(&base, true).map_err(UsageError::wrap)?;
    let head_lr = a.head_lr.or(base.optim.head_lr).unwrap_or(base.optim.lr);
    let root = a
        .overrides
        .output_dir
        .clone()
        // Else the config's own output_dir (one it sets), else runs/tune.
        .or_else(|| {
            (base.output_dir != TrainConfig::default().output_dir).then(|| base.output_dir.clone())
        })
        .unwrap_or_else(|| PathBuf::from("runs/tune"));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let greater_is_better = task::from_config(&base)
        .map_err(UsageError::wrap)?
        .greater_is_better();
    check_same_search(&root, &base, head_lr)?;
    let mut store = TrialStore::open(&root.join("trials.jsonl"))?;
    let rungs = grid.rungs();
    let cells = grid.cells().len();
    eprintln!(
        "tune: {} cells x {} seed(s), rungs of {:?} steps (eta {}, rungs before the last ranked by the {}), head lr {head_lr}",
        cells,
        grid.seeds.len(),
        rungs,
        grid.eta,
        grid.early_rank.name()
    );
    let mut n = 0usize;
    let result = successive_halving(&grid, greater_is_better, &mut store, |t, rung| {
        n += 1;
        let mut cfg = base.clone();
        cfg.optim.lr = t.lr;
        cfg.optim.loraplus_ratio = t.ratio;
        cfg.optim.head_lr = Some(head_lr);
        cfg.seed = t.seed;
        cfg.max_steps = Some(t.steps);
        cfg.eval_every = 0;
        cfg.save_every = 0;
        cfg.early_stopping_patience = None;
        cfg.output_dir = root.join("trials").join(t.key());
        // A trial's folder is the search's: an interrupted trial starts over.
        cfg.overwrite_output_dir = true;
        let mut trainer = Trainer::new(cfg, None)?;
        trainer.show_progress = false;
        let s = trainer.train()?;
        let e = s
            .final_eval
            .context("the trial has no evaluation: the task needs an eval set")?;
        let loss = e
            .loss
            .map_or(String::new(), |l| format!(" (eval loss {l:.4})"));
        eprintln!(
            "[{n}] rung {rung}: lr {:e} ratio {} seed {} {} steps -> {:.4}{loss}",
            t.lr, t.ratio, t.seed, t.steps, e.main
        );
        Ok(TrialScores {
            metric: e.main,
            loss: e.loss,
        })
    })?;
    let md = table(&result);
    std::fs::write(root.join("tune_results.md"), &md)?;
    std::fs::write(
        root.join("tune_results.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let mut best = base.clone();
    best.optim.lr = result.best_lr;
    best.optim.loraplus_ratio = result.best_ratio;
    best.optim.head_lr = Some(head_lr);
    best.output_dir = root.join("best");
    // With one seed, the trials' own: training this config reproduces the reported metric.
    let seeds = match grid.seeds.as_slice() {
        [one] => {
            best.seed = *one;
            String::new()
        }
        many => format!(
            " (the mean over seeds {many:?}; this config trains with seed {})",
            best.seed
        ),
    };
    let best_path = root.join("best.toml");
    std::fs::write(
        &best_path,
        format!(
            "# Chosen by `loraplus tune` ({} trials, {:.0}% of the full grid's steps): lr {:e}, ratio {}, metric {:.4}{seeds}\n{}",
            result.trials.len(),
            100.0 * result.cost_fraction,
            result.best_lr,
            result.best_ratio,
            result.best_metric,
            toml::to_string(&best)?
        ),
    )?;
    // Heatmaps: every cell at the first rung, and the cells of the last rung.
    for (rung, name) in [(0usize, "heatmap_rung0"), (rungs.len() - 1, "heatmap_last")] {
        let cells: Vec<Cell> = result
            .scores
            .iter()
            .filter(|s| s.rung == rung)
            .map(|s| Cell {
                x: s.lr.log10(),
                y: s.ratio.log2(),
                value: s.mean,
            })
            .collect();
        let step = (
            min_gap(cells.iter().map(|c| c.x)),
            min_gap(cells.iter().map(|c| c.y)),
        );
        let title = format!("dev metric at {} steps (rung {rung})", rungs[rung]);
        let spec = HeatmapSpec {
            title: &title,
            x_label: "log10 lr_A",
            y_label: "log2 ratio (lr_B / lr_A)",
            cells: &cells,
            step,
            best_is_low: !greater_is_better,
            mark: Some((result.best_lr.log10(), result.best_ratio.log2())),
            baseline: grid
                .ratios
                .contains(&1.0)
                .then_some((0.0, "ratio 1: plain LoRA")),
        };
        if let Err(e) = heatmap(&root.join(name), &spec) {
            tracing::warn!("{name} not written: {e:#}");
        }
    }
    println!("{md}");
    println!(
        "best: lr {:e}, ratio {} ({:.4}); {} trials ({} run now), {:.0}% of the full grid's steps",
        result.best_lr,
        result.best_ratio,
        result.best_metric,
        result.trials.len(),
        result.trials_run,
        100.0 * result.cost_fraction
    );
    println!("config: {}", best_path.display());
    Ok(())
}

/// The smallest gap between distinct values (1 when there is only one value).
fn min_gap(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v.windows(2)
        .map(|w| w[1] - w[0])
        .reduce(f64::min)
        .unwrap_or(1.0)
}

/// The file in a search's folder that names what its trials were run with.
pub const SEARCH_FILE: &str = "search_config.json";

/// What makes two trials with the same (lr, ratio, seed, steps) the same run: the base config
/// with the head's lr as the search sets it, and without what each trial sets or what does not
/// change the numbers (where it writes, how often it logs, how many threads).
fn search_identity(base: &TrainConfig, head_lr: f64) -> Result<serde_json::Value> {
    let mut c = base.clone();
    let plain = TrainConfig::default();
    c.optim.lr = plain.optim.lr;
    c.optim.loraplus_ratio = plain.optim.loraplus_ratio;
    c.optim.head_lr = Some(head_lr);
    c.seed = plain.seed;
    c.max_steps = None;
    c.output_dir = plain.output_dir.clone();
    c.overwrite_output_dir = false;
    c.eval_every = 0;
    c.save_every = 0;
    c.early_stopping_patience = None;
    c.log_every = plain.log_every;
    c.keep_last = plain.keep_last;
    c.threads = plain.threads;
    let mut v = serde_json::to_value(&c)?;
    // The data files' bytes: a file edited in place is another search (its trials are not
    // this data's results).
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for (key, file) in [
        ("train_file", &base.train_file),
        ("eval_file", &base.eval_file),
    ] {
        if let Some(f) = file {
            files.push((key.to_string(), f.clone()));
        }
    }
    // A GLUE task: its train and dev files under the GLUE folder.
    if let Ok(task) = loraplus_data::Task::from_name(&base.task) {
        let spec = task.spec();
        let glue = base
            .glue_dir
            .clone()
            .unwrap_or_else(loraplus_data::paths::glue_dir);
        for f in spec
            .files
            .iter()
            .filter(|f| f.split != loraplus_data::Split::Test)
        {
            let path = glue.join(spec.folder).join(f.file);
            if path.is_file() {
                files.push((format!("{}/{}", spec.folder, f.file), path));
            }
        }
    }
    let mut data = serde_json::Map::new();
    for (key, f) in files {
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        data.insert(key, loraplus_data::sha256_hex(&bytes).into());
    }
    v[DATA_KEY] = data.into();
    Ok(v)
}

/// The key of the data files' sha256 in [`SEARCH_FILE`] (absent in searches written before
/// it was: those are not compared on it).
const DATA_KEY: &str = "data_sha256";

/// A search's folder keeps the trials of one base config: the first search writes
/// [`SEARCH_FILE`]; a later one with another config (another task, model, data, batch, [lora],
/// head lr...) is refused, naming what differs, instead of reusing trials of another search.
fn check_same_search(root: &std::path::Path, base: &TrainConfig, head_lr: f64) -> Result<()> {
    let path = root.join(SEARCH_FILE);
    let now = search_identity(base, head_lr)?;
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut before: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not the JSON a search writes", path.display()))?;
        if before.get(DATA_KEY).is_none() {
            before[DATA_KEY] = now[DATA_KEY].clone();
        }
        let diffs: Vec<String> = crate::config::json_diffs("", &before, &now)
            .into_iter()
            .map(|(k, a, b)| format!("{k}: {a} then, {b} now"))
            .collect();
        if !diffs.is_empty() {
            let shown: Vec<&String> = diffs.iter().take(6).collect();
            return Err(UsageError::wrap(anyhow::anyhow!(
                "{} holds the trials of a search with another config ({}{}): choose another --output-dir, or remove {} to start that search over",
                root.display(),
                shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "),
                if diffs.len() > shown.len() { "; ..." } else { "" },
                root.display()
            )));
        }
    } else {
        if root.join("trials.jsonl").exists() {
            tracing::warn!(
                "{}: trials of a search from before {SEARCH_FILE} was written; they are reused as this config's",
                root.display()
            );
        }
        std::fs::write(&path, serde_json::to_string_pretty(&now)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_folder_refuses_another_config_and_names_the_difference() {
        let dir = tempfile::tempdir().unwrap();
        let mut sst2 = TrainConfig {
            task: "sst2".into(),
            ..TrainConfig::default()
        };
        check_same_search(dir.path(), &sst2, 1e-3).unwrap();
        // What a trial sets, and what does not change the numbers, is not the search's identity.
        sst2.optim.lr = 0.5;
        sst2.seed = 7;
        sst2.max_steps = Some(9);
        sst2.log_every = 1;
        sst2.threads = 3;
        sst2.output_dir = "elsewhere".into();
        check_same_search(dir.path(), &sst2, 1e-3).unwrap();

        let mrpc = TrainConfig {
            task: "mrpc".into(),
            ..sst2.clone()
        };
        let e = check_same_search(dir.path(), &mrpc, 1e-3).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        let msg = format!("{e:#}");
        assert!(msg.contains("task: \"sst2\" then, \"mrpc\" now"), "{msg}");
        assert!(msg.contains("--output-dir"), "{msg}");

        let e = check_same_search(dir.path(), &sst2, 2e-3).unwrap_err();
        assert!(
            format!("{e:#}").contains("optim.head_lr: 0.001 then, 0.002 now"),
            "{e:#}"
        );
        let mut r16 = sst2.clone();
        r16.lora.r = 16;
        let e = check_same_search(dir.path(), &r16, 1e-3).unwrap_err();
        assert!(format!("{e:#}").contains("lora.r: 8 then, 16 now"), "{e:#}");
    }

    /// The same data file edited in place is another search: its trials are not reused.
    #[test]
    fn a_search_folder_refuses_data_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("train.csv");
        std::fs::write(&csv, "text,label\na,pos\nb,neg\n").unwrap();
        let cfg = TrainConfig {
            task: "classification".into(),
            train_file: Some(csv.clone()),
            eval_file: Some(csv.clone()),
            ..TrainConfig::default()
        };
        let root = dir.path().join("search");
        std::fs::create_dir_all(&root).unwrap();
        check_same_search(&root, &cfg, 1e-3).unwrap();
        check_same_search(&root, &cfg, 1e-3).unwrap();
        std::fs::write(&csv, "text,label\na,neg\nb,pos\n").unwrap();
        let e = check_same_search(&root, &cfg, 1e-3).unwrap_err();
        assert!(format!("{e:#}").contains("data_sha256.train_file"), "{e:#}");

        // A GLUE task's files, under its glue_dir.
        let glue = dir.path().join("glue");
        std::fs::create_dir_all(glue.join("SST-2")).unwrap();
        for f in ["train.tsv", "dev.tsv"] {
            std::fs::write(glue.join("SST-2").join(f), "sentence\tlabel\ngood\t1\n").unwrap();
        }
        let sst2 = TrainConfig {
            task: "sst2".into(),
            glue_dir: Some(glue.clone()),
            ..TrainConfig::default()
        };
        let root = dir.path().join("glue-search");
        std::fs::create_dir_all(&root).unwrap();
        check_same_search(&root, &sst2, 1e-3).unwrap();
        std::fs::write(glue.join("SST-2/dev.tsv"), "sentence\tlabel\ngood\t0\n").unwrap();
        let e = check_same_search(&root, &sst2, 1e-3).unwrap_err();
        assert!(format!("{e:#}").contains("SST-2/dev.tsv"), "{e:#}");
    }
}
