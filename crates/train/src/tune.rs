//! The (lr_A, ratio) finder behind `loraplus tune`: successive halving over a grid of learning
//! rates of the A matrices and LoRA+ ratios (lr_B = ratio x lr_A), every other setting (the
//! head's learning rate included) held fixed. Rung 0 runs every cell for a short budget; each
//! next rung runs the better `1/eta` of the cells for `eta` times the steps, up to the full
//! budget. A cell's score at a rung is its metric averaged over the seeds; a trial that fails
//! (diverges, NaN) is recorded as failed and its cell ranks last, never stopping the search.
//!
//! Which number ranks the cells of a short rung is [`EarlyRank`]: the metric (the default) or
//! the evaluation loss (the training objective on the dev set; the last rung is always ranked
//! by the metric). Accuracy, F1 and MCC are step functions of the logits and stay flat while
//! a classifier still predicts the majority class; the loss moves. Measured on MRPC
//! (docs/RESULTS.md 3b) the loss did not rank a 28-step rung better: it favours the cells that
//! move fastest, which overshoot later. What worked there was a longer first rung.
//! Finished trials are kept in a JSON Lines file and reused, so an interrupted search resumes.
//!
//! The trial itself is a closure: `loraplus tune` trains a [`crate::Trainer`] per trial; the
//! tests use the paper's toy model.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The grid and the budget of a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneGrid {
    /// Learning rates of the A matrices (> 0).
    pub lrs: Vec<f64>,
    /// LoRA+ ratios lr_B / lr_A (> 0; 1 is plain LoRA).
    pub ratios: Vec<f64>,
    /// Seeds each cell runs with at every rung (scores are their mean).
    pub seeds: Vec<u64>,
    /// The full budget: the steps of the last rung.
    pub max_steps: usize,
    /// Steps of the first rung (at least 1; at most `max_steps`).
    pub min_steps: usize,
    /// Keep the best `1/eta` of the cells at each rung, which then run `eta` times longer (>= 2).
    pub eta: usize,
    /// What ranks the cells of the rungs before the last (the last is always ranked by the metric).
    #[serde(default)]
    pub early_rank: EarlyRank,
}

/// What ranks the cells of the rungs before the last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum EarlyRank {
    /// The task's main metric, as at the last rung.
    #[default]
    Metric,
    /// The evaluation loss (lower is better); the metric where a trial has no loss.
    Loss,
}

impl EarlyRank {
    pub fn name(self) -> &'static str {
        match self {
            EarlyRank::Loss => "loss",
            EarlyRank::Metric => "metric",
        }
    }
}

/// What a trial measured at its end: the main metric and, where the task has one, the
/// evaluation loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialScores {
    pub metric: f64,
    pub loss: Option<f64>,
}

impl From<f64> for TrialScores {
    /// A metric alone (no loss).
    fn from(metric: f64) -> TrialScores {
        TrialScores { metric, loss: None }
    }
}

impl TuneGrid {
    /// Check every value; errors say which list and which value.
    pub fn validate(&self) -> Result<()> {
        for (name, list) in [("lrs", &self.lrs), ("ratios", &self.ratios)] {
            if list.is_empty() {
                bail!("--{name}: the list is empty; give at least one value");
            }
            if let Some(v) = list.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                bail!("--{name}: every value must be a positive number, found {v}");
            }
            if let Some(v) = first_repeat(list) {
                bail!("--{name}: {v} is listed twice");
            }
        }
        if self.seeds.is_empty() {
            bail!("--seeds: the list is empty; give at least one seed");
        }
        if let Some(v) = first_repeat(&self.seeds) {
            bail!("--seeds: {v} is listed twice");
        }
        if self.lrs.len() * self.ratios.len() < 2 {
            bail!(
                "the grid has one cell (lr {:?} x ratio {:?}): nothing to search; give more --lrs or --ratios, or train it with `loraplus train`",
                self.lrs,
                self.ratios
            );
        }
        if self.max_steps == 0 || self.min_steps == 0 {
            bail!(
                "the step budget must be at least 1: --min-steps {}, --max-steps {}",
                self.min_steps,
                self.max_steps
            );
        }
        if self.min_steps > self.max_steps {
            bail!(
                "--min-steps ({}) exceeds --max-steps ({})",
                self.min_steps,
                self.max_steps
            );
        }
        if self.eta < 2 {
            bail!("--eta must be at least 2, found {}", self.eta);
        }
        Ok(())
    }

    /// The steps of each rung: `min_steps`, x eta, ..., ending at exactly `max_steps`.
    pub fn rungs(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut s = self.min_steps;
        while s < self.max_steps {
            out.push(s);
            s = s.saturating_mul(self.eta);
        }
        out.push(self.max_steps);
        out
    }

    /// Every cell `(lr, ratio)`, lr-major.
    pub fn cells(&self) -> Vec<(f64, f64)> {
        self.lrs
            .iter()
            .flat_map(|&lr| self.ratios.iter().map(move |&r| (lr, r)))
            .collect()
    }
}

/// The first value of `v` that appears again later in it.
pub(crate) fn first_repeat<T: PartialEq>(v: &[T]) -> Option<&T> {
    v.iter()
        .enumerate()
        .find(|(i, x)| v[..*i].contains(x))
        .map(|(_, x)| x)
}

/// One trial to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    pub lr: f64,
    pub ratio: f64,
    pub seed: u64,
    pub steps: usize,
}

impl Trial {
    /// A key that names it (and its folder): `lr-0.0002_ratio-16_seed-1_steps-250`.
    pub fn key(&self) -> String {
        format!(
            "lr-{}_ratio-{}_seed-{}_steps-{}",
            self.lr, self.ratio, self.seed, self.steps
        )
    }
}

/// What a trial gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The main metric at the end of the trial, and the evaluation loss where there is one.
    Done {
        metric: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
    },
    /// Diverged, NaN, or an error: why.
    Failed { reason: String },
}

/// A finished trial, as the trials file keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub lr: f64,
    pub ratio: f64,
    pub seed: u64,
    pub steps: usize,
    pub rung: usize,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub seconds: f64,
}

/// A cell's score at a rung.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellScore {
    pub lr: f64,
    pub ratio: f64,
    pub rung: usize,
    pub steps: usize,
    /// Mean over the seeds; `None` when a seed failed.
    pub mean: Option<f64>,
    /// Sample standard deviation over the seeds (0 for one seed).
    pub std: f64,
    /// Mean evaluation loss over the seeds; `None` when a seed failed or had none.
    pub loss: Option<f64>,
    /// What ranked the cells of this rung (`loss` or `metric`); the best of the last rung is
    /// always chosen by the metric.
    pub ranked_by: EarlyRank,
}

/// The result of a search.
#[derive(Debug, Clone, Serialize)]
pub struct TuneResult {
    pub best_lr: f64,
    pub best_ratio: f64,
    pub best_metric: f64,
    /// Every cell's score at every rung it reached.
    pub scores: Vec<CellScore>,
    pub trials: Vec<TrialRecord>,
    /// Trials this call ran (0 when every one was reused).
    pub trials_run: usize,
    /// Steps run over the steps of the full grid (every cell and seed at `max_steps`).
    pub cost_fraction: f64,
}

/// The finished trials of a search, in a JSON Lines file (appended as trials finish).
pub struct TrialStore {
    path: Option<PathBuf>,
    done: HashMap<String, TrialRecord>,
}

impl TrialStore {
    /// Nothing kept on disk.
    pub fn in_memory() -> TrialStore {
        TrialStore {
            path: None,
            done: HashMap::new(),
        }
    }

    /// The file `path`, read when it exists.
    pub fn open(path: &Path) -> Result<TrialStore> {
        let mut done = HashMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let r: TrialRecord = serde_json::from_str(line)
                    .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
                let t = Trial {
                    lr: r.lr,
                    ratio: r.ratio,
                    seed: r.seed,
                    steps: r.steps,
                };
                done.insert(t.key(), r);
            }
        }
        Ok(TrialStore {
            path: Some(path.to_path_buf()),
            done,
        })
    }

    fn get(&self, t: &Trial) -> Option<&TrialRecord> {
        self.done.get(&t.key())
    }

    fn put(&mut self, t: &Trial, r: TrialRecord) -> Result<()> {
        if let Some(path) = &self.path {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            writeln!(f, "{}", serde_json::to_string(&r)?)
                .with_context(|| format!("writing {}", path.display()))?;
            f.sync_data()
                .with_context(|| format!("syncing {}", path.display()))?;
        }
        self.done.insert(t.key(), r);
        Ok(())
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, std)
}

/// Run the search: `run` is called for every trial not in `store` (with the rung index for
/// progress); its errors are recorded as failed trials. `greater_is_better` orders the metric.
pub fn successive_halving<S: Into<TrialScores>>(
    grid: &TuneGrid,
    greater_is_better: bool,
    store: &mut TrialStore,
    mut run: impl FnMut(&Trial, usize) -> Result<S>,
) -> Result<TuneResult> {
    grid.validate()?;
    let rungs = grid.rungs();
    let mut alive = grid.cells();
    let mut scores = Vec::new();
    let mut trials = Vec::new();
    let mut trials_run = 0;
    let mut steps_run = 0usize;
    let better = |a: f64, b: f64| if greater_is_better { a > b } else { a < b };
    for (rung, &steps) in rungs.iter().enumerate() {
        let last_rung = rung + 1 == rungs.len();
        let mut rung_scores = Vec::with_capacity(alive.len());
        for &(lr, ratio) in &alive {
            let mut values = Vec::new();
            let mut losses = Vec::new();
            let mut failed = false;
            for &seed in &grid.seeds {
                let t = Trial {
                    lr,
                    ratio,
                    seed,
                    steps,
                };
                let record = match store.get(&t) {
                    Some(r) => r.clone(),
                    None => {
                        let started = std::time::Instant::now();
                        let outcome = match run(&t, rung).map(Into::into) {
                            Ok(TrialScores { metric, loss }) if metric.is_finite() => {
                                Outcome::Done { metric, loss }
                            }
                            Ok(TrialScores { metric, .. }) => Outcome::Failed {
                                reason: format!("the metric is {metric}"),
                            },
                            // A trial that diverges is a result of its learning rates; any
                            // other error (the data, the model, a file) stops the search, as
                            // it would fail every trial (and is not recorded as a result).
                            Err(e) if e.downcast_ref::<crate::trainer::Diverged>().is_some() => {
                                Outcome::Failed {
                                    reason: format!("{e:#}"),
                                }
                            }
                            Err(e) => return Err(e.context(format!("trial {}", t.key()))),
                        };
                        trials_run += 1;
                        steps_run += steps;
                        let r = TrialRecord {
                            lr,
                            ratio,
                            seed,
                            steps,
                            rung,
                            outcome,
                            seconds: started.elapsed().as_secs_f64(),
                        };
                        store.put(&t, r.clone())?;
                        r
                    }
                };
                match &record.outcome {
                    Outcome::Done { metric, loss } => {
                        values.push(*metric);
                        losses.extend(loss.filter(|l| l.is_finite()));
                    }
                    Outcome::Failed { reason } => {
                        tracing::warn!("trial {} failed: {reason}", t.key());
                        failed = true;
                    }
                }
                trials.push(record);
            }
            let (mean, std) = if failed || values.is_empty() {
                (None, 0.0)
            } else {
                let (m, s) = mean_std(&values);
                (Some(m), s)
            };
            let loss = (!failed && !losses.is_empty() && losses.len() == values.len())
                .then(|| mean_std(&losses).0);
            rung_scores.push(CellScore {
                lr,
                ratio,
                rung,
                steps,
                mean,
                std,
                loss,
                ranked_by: EarlyRank::Metric,
            });
        }
        // By the loss only where every cell that did not fail has one.
        let wants_loss = !last_rung && grid.early_rank == EarlyRank::Loss;
        let by_loss = wants_loss
            && rung_scores
                .iter()
                .all(|c| c.mean.is_none() || c.loss.is_some());
        if wants_loss && !by_loss {
            tracing::warn!(
                "rung {rung}: some trials have no evaluation loss; this rung is ranked by the metric"
            );
        }
        let ranked_by = if by_loss {
            EarlyRank::Loss
        } else {
            EarlyRank::Metric
        };
        for c in &mut rung_scores {
            c.ranked_by = ranked_by;
        }
        let key = |c: &CellScore| if by_loss { c.mean.and(c.loss) } else { c.mean };
        let lower_first = by_loss || !greater_is_better;
        // Best first; failed cells last; ties keep grid order (stable sort).
        let mut ranked: Vec<&CellScore> = rung_scores.iter().collect();
        ranked.sort_by(|a, b| match (key(a), key(b)) {
            (Some(x), Some(y)) if lower_first => x.total_cmp(&y),
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            _ => std::cmp::Ordering::Equal,
        });
        let keep = alive.len().div_ceil(grid.eta).max(1);
        let next: Vec<(f64, f64)> = ranked.iter().take(keep).map(|c| (c.lr, c.ratio)).collect();
        scores.extend(rung_scores);
        if last_rung {
            break;
        }
        alive = next;
    }
    let last = *rungs.last().unwrap_or(&grid.max_steps);
    let best = scores
        .iter()
        .filter(|s| s.steps == last && s.mean.is_some())
        .fold(None::<&CellScore>, |b, s| match b {
            Some(b) if !better(s.mean.unwrap_or(f64::NAN), b.mean.unwrap_or(f64::NAN)) => Some(b),
            _ => Some(s),
        })
        .context("every trial of the last rung failed: no setting to recommend (lower the learning rates?)")?;
    let full = grid.cells().len() * grid.seeds.len() * grid.max_steps;
    let planned: usize = scores.iter().map(|s| s.steps * grid.seeds.len()).sum();
    let _ = steps_run;
    Ok(TuneResult {
        best_lr: best.lr,
        best_ratio: best.ratio,
        best_metric: best.mean.unwrap_or(f64::NAN),
        scores: scores.clone(),
        trials,
        trials_run,
        cost_fraction: planned as f64 / full as f64,
    })
}

/// A markdown table of every cell's score at every rung.
pub fn table(result: &TuneResult) -> String {
    let mut md = String::from("| lr_A | ratio | lr_B | rung | steps | metric (mean ± std over seeds) | eval loss | ranked by |\n|---|---|---|---|---|---|---|---|\n");
    for s in &result.scores {
        let m = match s.mean {
            Some(m) => format!("{m:.4} ± {:.4}", s.std),
            None => "failed".into(),
        };
        let loss = s.loss.map_or("-".into(), |l| format!("{l:.4}"));
        let mark = if s.lr == result.best_lr && s.ratio == result.best_ratio && s.mean.is_some() {
            " (best)"
        } else {
            ""
        };
        md.push_str(&format!(
            "| {:e} | {} | {:e} | {} | {} | {m}{mark} | {loss} | {} |\n",
            s.lr,
            s.ratio,
            s.lr * s.ratio,
            s.rung,
            s.steps,
            s.ranked_by.name()
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lrs: &[f64], ratios: &[f64]) -> TuneGrid {
        TuneGrid {
            lrs: lrs.to_vec(),
            ratios: ratios.to_vec(),
            seeds: vec![1, 2],
            max_steps: 40,
            min_steps: 10,
            eta: 2,
            early_rank: EarlyRank::Loss,
        }
    }

    #[test]
    fn rungs_grow_by_eta_and_end_at_the_budget() {
        let g = grid(&[1e-3], &[1.0]);
        assert_eq!(g.rungs(), vec![10, 20, 40]);
        let g = TuneGrid { min_steps: 15, ..g };
        assert_eq!(g.rungs(), vec![15, 30, 40]);
    }

    #[test]
    fn bad_grids_say_which_list() {
        let e = grid(&[], &[1.0]).validate().unwrap_err().to_string();
        assert!(e.contains("--lrs") && e.contains("empty"), "{e}");
        let e = grid(&[1e-3, 0.0], &[1.0])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--lrs") && e.contains("positive") && e.contains('0'),
            "{e}"
        );
        let e = grid(&[1e-3], &[-2.0]).validate().unwrap_err().to_string();
        assert!(e.contains("--ratios") && e.contains("-2"), "{e}");
        let e = grid(&[1e-3, 3e-3], &[4.0, 1.0, 4.0])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ratios: 4 is listed twice"), "{e}");
        let g = TuneGrid {
            seeds: vec![1, 2, 1],
            ..grid(&[1e-3], &[1.0, 4.0])
        };
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("--seeds: 1 is listed twice"), "{e}");
        let e = grid(&[1e-3], &[4.0]).validate().unwrap_err().to_string();
        assert!(e.contains("one cell"), "{e}");
    }

    /// A planted grid: the metric (a loss) of each cell is its planted value plus noise that
    /// shrinks with the steps, so short rungs rank cells roughly and the last rung exactly.
    fn planted(lr: f64, ratio: f64, seed: u64, steps: usize) -> f64 {
        let base = (lr.log10() + 3.0).powi(2) + (ratio.log2() - 3.0).powi(2) * 0.5;
        let noise = ((lr * 1e4 + ratio + seed as f64).sin()) * 2.0 / steps as f64;
        base + noise
    }

    #[test]
    fn halving_keeps_the_best_cell_of_a_planted_grid_and_reuses_trials() {
        let g = grid(
            &[1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trials.jsonl");
        let mut store = TrialStore::open(&path).unwrap();
        let mut calls = 0;
        let r = successive_halving(&g, false, &mut store, |t, _| {
            calls += 1;
            Ok(planted(t.lr, t.ratio, t.seed, t.steps))
        })
        .unwrap();
        assert_eq!((r.best_lr, r.best_ratio), (1e-3, 8.0));
        assert_eq!(r.trials_run, calls);
        // 30 cells x 10 steps + 15 x 20 + 8 x 40, over 30 x 40: 0.77 of the full grid.
        assert!((r.cost_fraction - (300.0 + 300.0 + 320.0) / 1200.0).abs() < 1e-12);
        // Again from the file: nothing runs, same answer.
        let mut store = TrialStore::open(&path).unwrap();
        let again = successive_halving(&g, false, &mut store, |_, _| -> Result<f64> {
            panic!("a finished trial ran again")
        })
        .unwrap();
        assert_eq!(again.trials_run, 0);
        assert_eq!((again.best_lr, again.best_ratio), (1e-3, 8.0));
        assert_eq!(again.best_metric, r.best_metric);
    }

    #[test]
    fn a_diverging_trial_is_recorded_and_its_cell_skipped() {
        let g = grid(&[1e-3, 1e-1], &[1.0, 16.0]);
        let mut store = TrialStore::in_memory();
        let r = successive_halving(&g, true, &mut store, |t, _| {
            if t.lr * t.ratio > 1.0 {
                return Err(crate::trainer::Diverged(
                    "the training loss became non-finite (inf) at step 3".into(),
                )
                .into());
            }
            if t.lr > 0.05 {
                return Ok(f64::NAN);
            }
            Ok(t.ratio)
        })
        .unwrap();
        assert_eq!((r.best_lr, r.best_ratio), (1e-3, 16.0));
        let failed: Vec<&TrialRecord> = r
            .trials
            .iter()
            .filter(|t| matches!(t.outcome, Outcome::Failed { .. }))
            .collect();
        assert!(failed.iter().any(
            |t| matches!(&t.outcome, Outcome::Failed { reason } if reason.contains("non-finite"))
        ));
        assert!(failed
            .iter()
            .any(|t| matches!(&t.outcome, Outcome::Failed { reason } if reason.contains("NaN"))));
        assert!(r.scores.iter().any(|s| s.lr == 1e-1 && s.mean.is_none()));
    }

    /// An error that is not a divergence (bad data, a missing file) stops the search, naming
    /// the trial, and is not stored: the trial runs again once the cause is fixed.
    #[test]
    fn an_error_other_than_divergence_stops_the_search_unrecorded() {
        let g = grid(&[1e-3, 1e-2], &[1.0, 16.0]);
        let mut store = TrialStore::in_memory();
        let e = successive_halving(&g, true, &mut store, |t, _| -> Result<f64> {
            if t.ratio > 1.0 {
                bail!("train.csv: line 3: unknown label \"maybe\"")
            }
            Ok(t.lr)
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("trial") && msg.contains("line 3"), "{msg}");
        let r =
            successive_halving(&g, true, &mut store, |t, _| -> Result<f64> { Ok(t.lr) }).unwrap();
        assert!(r
            .trials
            .iter()
            .all(|t| matches!(t.outcome, Outcome::Done { .. })));
    }

    #[test]
    fn the_finder_on_the_toy_model_matches_the_full_grid() {
        use crate::toy::{ToyConfig, ToyProblem};
        let p = ToyProblem::new(256, &ToyConfig::default(), 0);
        let lrs: Vec<f64> = (0..7).map(|i| 10f64.powf(-4.0 + 0.5 * i as f64)).collect();
        let ratios = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
        let g = TuneGrid {
            lrs: lrs.clone(),
            ratios: ratios.clone(),
            seeds: vec![0, 1],
            max_steps: 80,
            min_steps: 10,
            eta: 3,
            early_rank: EarlyRank::Metric,
        };
        let train = |t: &Trial| p.train(t.lr, t.lr * t.ratio, t.steps, t.seed);
        // The full grid at the full budget.
        let mut full = Vec::new();
        for &lr in &lrs {
            for &ratio in &ratios {
                let mut v = 0.0;
                for &seed in &g.seeds {
                    let t = Trial {
                        lr,
                        ratio,
                        seed,
                        steps: g.max_steps,
                    };
                    v += train(&t).unwrap() / g.seeds.len() as f64;
                }
                full.push(((lr, ratio), v));
            }
        }
        let best = full
            .iter()
            .filter(|c| c.1.is_finite())
            .fold(None::<&((f64, f64), f64)>, |b, c| match b {
                Some(b) if b.1 <= c.1 => Some(b),
                _ => Some(c),
            })
            .unwrap();
        let r =
            successive_halving(&g, false, &mut TrialStore::in_memory(), |t, _| train(t)).unwrap();
        let picked = full
            .iter()
            .find(|c| c.0 == (r.best_lr, r.best_ratio))
            .unwrap()
            .1;
        assert!(
            (r.best_lr, r.best_ratio) == best.0 || picked <= best.1 * 1.1,
            "picked lr {} ratio {} (loss {picked}), the full grid's best is {:?} ({})",
            r.best_lr,
            r.best_ratio,
            best.0,
            best.1
        );
        // 49 cells x 10 steps, 17 x 30, 6 x 80 over 49 x 80.
        assert!(
            (r.cost_fraction - 1480.0 / 3920.0).abs() < 1e-12,
            "{}",
            r.cost_fraction
        );
    }

    /// A classification grid as MRPC's: before the full budget every cell still predicts
    /// the majority class, its metric is the majority score plus a few examples' worth of
    /// noise unrelated to the cell's quality, while the loss already orders the cells; at the
    /// full budget the metric is the cell's quality. `quality` peaks at lr 1e-3, ratio 1.
    fn flat_early(t: &Trial, max_steps: usize) -> TrialScores {
        let quality = 0.85 - (t.lr.log10() + 3.0).powi(2) * 0.02 - t.ratio.log2() * 0.01;
        if t.steps < max_steps {
            // The noise favours large ratios, the opposite of the quality.
            let noise = 0.002 * t.ratio.log2() + 0.001 * (t.lr * 1e4).sin();
            TrialScores {
                metric: 0.748 + noise,
                loss: Some(0.7 - 0.2 * quality * t.steps as f64 / max_steps as f64),
            }
        } else {
            TrialScores {
                metric: quality,
                loss: Some(0.7 - 0.2 * quality),
            }
        }
    }

    #[test]
    fn short_rungs_ranked_by_the_loss_keep_the_best_cell_where_the_metric_is_flat() {
        let g = grid(&[1e-4, 3e-4, 1e-3, 3e-3], &[1.0, 4.0, 16.0, 32.0]);
        let by_loss = successive_halving(&g, true, &mut TrialStore::in_memory(), |t, _| {
            Ok(flat_early(t, g.max_steps))
        })
        .unwrap();
        assert_eq!((by_loss.best_lr, by_loss.best_ratio), (1e-3, 1.0));
        assert!((by_loss.best_metric - 0.85).abs() < 1e-12);
        for s in &by_loss.scores {
            let want = if s.steps < g.max_steps {
                EarlyRank::Loss
            } else {
                EarlyRank::Metric
            };
            assert_eq!(s.ranked_by, want, "{s:?}");
            assert!(s.loss.is_some(), "{s:?}");
        }
        // Ranked by the flat metric, the first rung keeps the noise's favourites and the
        // best cell never reaches the full budget.
        let g = TuneGrid {
            early_rank: EarlyRank::Metric,
            ..g
        };
        let by_metric = successive_halving(&g, true, &mut TrialStore::in_memory(), |t, _| {
            Ok(flat_early(t, g.max_steps))
        })
        .unwrap();
        assert!(by_metric.best_ratio >= 16.0, "{by_metric:?}");
        assert!(by_metric.best_metric <= by_loss.best_metric - 0.04 + 1e-12);
        assert!(by_metric
            .scores
            .iter()
            .all(|s| s.ranked_by == EarlyRank::Metric));
        // The table says what ranked each rung and shows the loss.
        let md = table(&by_loss);
        assert!(md
            .lines()
            .next()
            .unwrap()
            .contains("| eval loss | ranked by |"));
        assert!(md
            .lines()
            .any(|l| l.contains("| 0 | 10 |") && l.ends_with("| loss |")));
        assert!(md
            .lines()
            .any(|l| l.contains("(best)") && l.ends_with("| metric |")));
    }

    #[test]
    fn a_rung_with_a_trial_without_loss_is_ranked_by_the_metric() {
        // A store written before losses were kept: its trials have none.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trials.jsonl");
        std::fs::write(
            &path,
            "{\"lr\":0.001,\"ratio\":1.0,\"seed\":1,\"steps\":10,\"rung\":0,\"status\":\"done\",\"metric\":0.5,\"seconds\":1.0}\n",
        )
        .unwrap();
        let mut store = TrialStore::open(&path).unwrap();
        let g = grid(&[1e-3, 1e-2], &[1.0]);
        let g = TuneGrid {
            seeds: vec![1],
            ..g
        };
        let r = successive_halving(&g, true, &mut store, |t, _| {
            Ok(TrialScores {
                metric: 0.6,
                loss: Some(t.lr),
            })
        })
        .unwrap();
        // Rung 0 falls back to the metric: 0.6 (lr 1e-2) beats the stored 0.5 (lr 1e-3),
        // where the loss would have kept lr 1e-3.
        assert_eq!(r.best_lr, 1e-2);
        assert!(r
            .scores
            .iter()
            .filter(|s| s.rung == 0)
            .all(|s| s.ranked_by == EarlyRank::Metric));
        assert_eq!(r.trials_run, 1 + 1 + 1);
        // New records keep their loss; the old one reads back without.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().nth(1).unwrap().contains("\"loss\":0.01"),
            "{text}"
        );
        let store = TrialStore::open(&path).unwrap();
        assert_eq!(store.done.len(), 4);
    }
}
