//! Checkpoints: one directory per save, written into a temporary directory and renamed, so a
//! crash (even `kill -9`) mid-write leaves the previous checkpoint whole.
//!
//! ```text
//! <output_dir>/checkpoints/step-000120/
//!     adapter/              adapter_model.safetensors + adapter_config.json (PEFT format)
//!     optimizer/            the optimizer's state (moments, step, groups, schedule)
//!     trainer_state.json    step, data position, best metric, the run's config
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use loraplus_data::Position;

pub const TRAINER_STATE: &str = "trainer_state.json";
pub const ADAPTER_DIR: &str = "adapter";
pub const OPTIMIZER_DIR: &str = "optimizer";

/// What the trainer needs besides the tensors to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Data position after the last step.
    pub position: Position,
    /// Best main dev metric so far, and the step it was reached at.
    pub best_metric: Option<f64>,
    pub best_step: Option<usize>,
    /// Evaluations since the best one (early stopping).
    pub evals_since_best: usize,
    /// The first step at which the target metric was reached.
    pub target_reached_at: Option<usize>,
    /// The steps since the last logged one, whose mean loss the next log line reports.
    #[serde(default, skip_serializing_if = "LossWindow::is_empty")]
    pub loss_window: LossWindow,
    /// sha256 of the tokenized training data (`TokenizedDataset::content_sha256`): a resumed
    /// run refuses other data, where the saved position would continue in other rows. Absent
    /// in checkpoints written before it was recorded (not compared then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_data_sha256: Option<String>,
    pub config: TrainConfig,
}

/// The training loss summed over the steps since the last log line (the f32 the run
/// accumulates, exactly), and how many: a resumed run's first log line averages the same
/// steps as an uninterrupted run's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossWindow {
    pub sum: f64,
    pub steps: usize,
}

impl LossWindow {
    pub fn is_empty(&self) -> bool {
        self.steps == 0
    }
}

/// `<output_dir>/checkpoints`.
pub fn checkpoints_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("checkpoints")
}

fn step_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// Write a checkpoint atomically. `write_tensors` fills the temporary directory (adapter and
/// optimizer state); then the state file is written and the directory renamed into place.
pub fn save(
    output_dir: &Path,
    state: &TrainerState,
    write_tensors: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = checkpoints_dir(output_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let final_dir = root.join(step_name(state.step));
    let tmp = root.join(format!(
        ".tmp-{}-{}",
        step_name(state.step),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ok();
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write_tensors(&tmp)?;
    let json = serde_json::to_string_pretty(state)?;
    std::fs::write(tmp.join(TRAINER_STATE), json)
        .with_context(|| format!("writing {}", tmp.display()))?;
    if let Ok(f) = std::fs::File::open(&tmp) {
        f.sync_all().ok();
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)
            .with_context(|| format!("replacing {}", final_dir.display()))?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
    Ok(final_dir)
}

/// Complete checkpoints under `output_dir`, oldest first (temporary directories are skipped).
pub fn list(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = checkpoints_dir(output_dir);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if e.path().join(TRAINER_STATE).exists() {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Keep the newest `keep_last` checkpoints and the one at `keep_step` (the best); remove the
/// rest, and leftovers of interrupted writes.
pub fn prune(output_dir: &Path, keep_last: usize, keep_step: Option<usize>) -> Result<()> {
    let all = list(output_dir)?;
    let n = all.len();
    for (i, (step, path)) in all.into_iter().enumerate() {
        if i + keep_last < n && Some(step) != keep_step {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(checkpoints_dir(output_dir)) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                std::fs::remove_dir_all(e.path()).ok();
            }
        }
    }
    Ok(())
}

/// The output directory of a run resumed from `resumed` holds that state's files, and nothing
/// of steps after it:
/// - resumed from an older checkpoint than the newest in `output_dir`, the run abandons the
///   steps after it: their checkpoints are removed (`--resume <output_dir>` would take the
///   newest, and pruning, which keeps the highest steps, would remove this run's instead);
/// - resumed from another run's folder (which holds nothing else: see
///   [`prepare_resume_elsewhere`]), that run's best adapter comes along.
///
/// In both cases `best_adapter` becomes the resumed state's best (copied from the best step's
/// checkpoint beside `resumed`; none when there is none) and the final adapter is removed until
/// this run writes its own. Returns the abandoned steps; a plain resume touches nothing.
pub fn abandon_after(
    output_dir: &Path,
    resumed: &Path,
    state: &TrainerState,
) -> Result<Vec<usize>> {
    let here = in_output_dir(resumed, output_dir);
    let later: Vec<(usize, PathBuf)> = if here {
        list(output_dir)?
            .into_iter()
            .filter(|(s, _)| *s > state.step)
            .collect()
    } else {
        Vec::new()
    };
    if here && later.is_empty() {
        return Ok(Vec::new());
    }
    for (_, path) in &later {
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::create_dir_all(output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    let best = output_dir.join(crate::trainer::BEST_ADAPTER_DIR);
    let kept = state
        .best_step
        .zip(resumed.parent())
        .map(|(s, root)| root.join(step_name(s)).join(ADAPTER_DIR))
        .filter(|d| d.is_dir());
    remove_if_present(&best)?;
    if let Some(from) = kept {
        copy_files(&from, &best)?;
    }
    remove_if_present(&output_dir.join(crate::trainer::FINAL_ADAPTER_DIR))?;
    Ok(later.into_iter().map(|(s, _)| s).collect())
}

/// Whether the checkpoint `checkpoint` is one of `output_dir`'s.
pub fn in_output_dir(checkpoint: &Path, output_dir: &Path) -> bool {
    match (
        checkpoint.parent().map(std::fs::canonicalize),
        std::fs::canonicalize(checkpoints_dir(output_dir)),
    ) {
        (Some(Ok(a)), Ok(b)) => a == b,
        _ => false,
    }
}

/// A run resumed from another folder's checkpoint into `output_dir`: a folder holding an
/// earlier run's checkpoints or metrics is refused ([`OutputDirInUse`]: the two runs would mix,
/// and a later `--resume` would find the other run's newest checkpoint), or, with `overwrite`,
/// cleared of them.
pub fn prepare_resume_elsewhere(output_dir: &Path, overwrite: bool) -> Result<()> {
    let metrics = output_dir.join(crate::metrics_log::METRICS_FILE);
    let found = list(output_dir)?;
    if overwrite {
        prepare_fresh(output_dir, true)?;
        if metrics.exists() {
            std::fs::remove_file(&metrics)
                .with_context(|| format!("removing {}", metrics.display()))?;
        }
        return Ok(());
    }
    let newest = match found.last() {
        Some((_, newest)) => Some(newest.clone()),
        None => metrics.exists().then(|| metrics.clone()),
    };
    match newest {
        Some(newest) => Err(OutputDirInUse {
            output_dir: output_dir.to_path_buf(),
            newest,
        }
        .into()),
        None => Ok(()),
    }
}

fn remove_if_present(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Copy the files of `from` (an adapter directory: no subdirectories) into a new `to`, through
/// a temporary directory renamed into place.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_file_name(format!(
        ".tmp-{}-{}",
        to.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    remove_if_present(&tmp)?;
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let entries = std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("reading {}", from.display()))?;
        if e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(e.path(), tmp.join(e.file_name())).with_context(|| {
                format!("copying {} into {}", e.path().display(), tmp.display())
            })?;
        }
    }
    std::fs::rename(&tmp, to)
        .with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    Ok(())
}

/// A fresh run (no `--resume`) asked to write into an output directory that holds an earlier
/// run's checkpoints: they would be mixed with the new run's (pruning keeps the highest step
/// numbers, so the old ones would outlive the new ones, and `--resume` would find them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{d} holds checkpoints of an earlier run (newest: {n}): resume it with --resume {d}, start over with --overwrite-output-dir (overwrite_output_dir = true: removes them), or choose another --output-dir",
    d = .output_dir.display(),
    n = .newest.display()
)]
pub struct OutputDirInUse {
    pub output_dir: PathBuf,
    /// The newest checkpoint there.
    pub newest: PathBuf,
}

/// The output directory cannot be created or written (a path under a file, no permission): the
/// user's setting (the `loraplus` binary exits 2), said before anything loads.
#[derive(Debug, thiserror::Error)]
#[error("output_dir (--output-dir) {}: cannot be written: {reason}", .output_dir.display())]
pub struct UnusableOutputDir {
    pub output_dir: PathBuf,
    pub reason: String,
}

/// Check that `output_dir` can be made and written, without making it: a file can be written in
/// it, or in its nearest existing ancestor ([`UnusableOutputDir`]).
pub fn check_output_dir(output_dir: &Path) -> Result<()> {
    let unusable = |reason: String| UnusableOutputDir {
        output_dir: output_dir.to_path_buf(),
        reason,
    };
    // A relative path with no existing part is made in the working folder.
    let existing = output_dir
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(unusable(format!("{} is a file, not a folder", existing.display())).into());
    }
    let probe = existing.join(format!(".loraplus-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| unusable(format!("{}: {e}", existing.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Before a fresh run: refuse an output directory with checkpoints ([`OutputDirInUse`]), or,
/// with `overwrite`, remove what an earlier run left there for a later step to find (its
/// checkpoints, its best and final adapters; the metrics file is truncated when opened).
pub fn prepare_fresh(output_dir: &Path, overwrite: bool) -> Result<()> {
    let found = list(output_dir)?;
    if overwrite {
        for dir in [
            checkpoints_dir(output_dir),
            output_dir.join(crate::trainer::BEST_ADAPTER_DIR),
            output_dir.join(crate::trainer::FINAL_ADAPTER_DIR),
        ] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        if let Some((step, _)) = found.last() {
            tracing::info!(
                "{}: removed an earlier run's checkpoints (newest at step {step})",
                output_dir.display()
            );
        }
        return Ok(());
    }
    match found.last() {
        Some((_, newest)) => Err(OutputDirInUse {
            output_dir: output_dir.to_path_buf(),
            newest: newest.clone(),
        }
        .into()),
        None => Ok(()),
    }
}

/// The settings a resumed run must share with its checkpoint: what the data stream (its
/// order and the saved position in it), the model and the adapters are made of. Everything else
/// (the optimizer's settings and schedule, the step budget, evaluation, logging, the device)
/// may change on resume and takes this run's value.
pub const RESUME_FIXED: &[&str] = &[
    "task",
    "train_file",
    "text_column",
    "text_pair_column",
    "label_column",
    "labels",
    "format",
    "packing",
    "assistant_only_loss",
    "completion_only_loss",
    "too_long",
    "skip_malformed",
    "model",
    "revision",
    "seed",
    "dtype",
    "quantize",
    "quant_group_size",
    "max_seq_len",
    "batch_size",
    "grad_accum",
    "train_limit",
    "bucket_multiplier",
    "lora",
];

/// A `--resume` whose config differs from the checkpoint's where it must not (see
/// [`RESUME_FIXED`]), or that has nothing left to train.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "cannot resume from {}: {}. Resume with the checkpoint's settings (its config is in {}), or start a new run",
    .checkpoint.display(),
    .fields.join("; "),
    .checkpoint.join(TRAINER_STATE).display()
)]
pub struct ResumeMismatch {
    pub checkpoint: PathBuf,
    /// One line per difference: `batch_size: 32 in the checkpoint, 16 now`.
    pub fields: Vec<String>,
}

/// The [`RESUME_FIXED`] settings that differ between the checkpoint's config and this run's.
/// Paths of files name them the same when they are the same file: `./data.jsonl`,
/// `data.jsonl` and `../here/data.jsonl`, `models/llama/` and `models/llama`.
pub fn resume_conflicts(saved: &TrainConfig, now: &TrainConfig) -> Result<Vec<String>> {
    let mut out: Vec<String> = conflicts(saved, now, |k| RESUME_FIXED.contains(&k))?
        .into_iter()
        .map(|(k, x, y)| format!("{k}: {x} in the checkpoint, {y} now"))
        .collect();
    // Its value may change, but not whether the head has a group of its own: the saved
    // optimizer state is laid out by group.
    let (x, y) = (saved.optim.head_lr, now.optim.head_lr);
    if x.is_some() != y.is_some() {
        let show = |v: Option<f64>| v.map_or("unset".to_string(), |v| v.to_string());
        out.push(format!(
            "optim.head_lr: {} in the checkpoint, {} now (setting or unsetting it regroups the optimizer's state; its value may change)",
            show(x),
            show(y)
        ));
    }
    Ok(out)
}

/// Settings that do not change what a run learns or reports: where its files go and how the
/// work is spread over threads, processes and devices (a run moved from one machine to
/// another), the GLUE folder (the same data moved), and how often the loss is logged.
pub const REUSE_IGNORED: &[&str] = &[
    "output_dir",
    "overwrite_output_dir",
    "glue_dir",
    "device",
    "threads",
    "dist_backend",
    "gradient_checkpointing",
    "save_every",
    "keep_last",
    "log_every",
];

/// Where a finished run's config (`saved`, from its checkpoint) differs from the one that
/// would train it now (`now`), outside [`REUSE_IGNORED`]: `loraplus glue --reuse` takes its
/// results only when there is nothing. Settings `now` leaves to the run (`max_seq_len`, the
/// classes of `labels`) are compared only when given.
pub fn reuse_conflicts(saved: &TrainConfig, now: &TrainConfig) -> Result<Vec<String>> {
    let resolved_by_run = |k: &str| {
        (k == "max_seq_len" && now.max_seq_len.is_none()) || (k == "labels" && now.labels.is_none())
    };
    Ok(conflicts(saved, now, |k| {
        !REUSE_IGNORED.contains(&k) && !resolved_by_run(k)
    })?
    .into_iter()
    .map(|(k, x, y)| format!("{k}: {x} then, {y} now"))
    .collect())
}

/// The top-level settings named by `compare` that differ between `saved` and `now`, nested
/// keys spelled out (`lora.r`); paths of files compared as files.
fn conflicts(
    saved: &TrainConfig,
    now: &TrainConfig,
    compare: impl Fn(&str) -> bool,
) -> Result<Vec<(String, serde_json::Value, serde_json::Value)>> {
    let (a, b) = (serde_json::to_value(saved)?, serde_json::to_value(now)?);
    let same_path = |k: &str| {
        let (Some(x), Some(y)) = (a[k].as_str(), b[k].as_str()) else {
            return false;
        };
        let lexical = |p: &str| {
            Path::new(p)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect::<PathBuf>()
        };
        let canonical = |p: &str| std::fs::canonicalize(p).ok();
        lexical(x) == lexical(y) || canonical(x).is_some_and(|c| Some(c) == canonical(y))
    };
    let mut keys: Vec<&String> = match (&a, &b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            x.keys().chain(y.keys()).collect()
        }
        _ => Vec::new(),
    };
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter(|k| compare(k))
        // Checkpoints from before discovered labels were recorded have none.
        .filter(|k| !(*k == "labels" && a[*k].is_null()))
        .filter(|k| !(matches!(k.as_str(), "train_file" | "eval_file" | "model") && same_path(k)))
        .flat_map(|k| crate::config::json_diffs(k, &a[k], &b[k]))
        .collect())
}

/// Beside a classification adapter: the task and its class names in id order, so that `eval`
/// and `merge` number the classes as training did (an eval file alone may hold fewer classes,
/// or list them in another order).
pub const LABELS_FILE: &str = "label_names.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelNames {
    pub task: String,
    pub labels: Vec<String>,
}

/// Write [`LABELS_FILE`] into `adapter_dir` for a classification run on the user's files.
pub fn write_label_names(adapter_dir: &Path, config: &TrainConfig) -> Result<()> {
    if let (true, Some(labels)) = (config.task == "classification", &config.labels) {
        let names = LabelNames {
            task: config.task.clone(),
            labels: labels.clone(),
        };
        let path = adapter_dir.join(LABELS_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(&names)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// [`LABELS_FILE`] of `adapter_dir`, when there is one.
pub fn read_label_names(adapter_dir: &Path) -> Result<Option<LabelNames>> {
    let path = adapter_dir.join(LABELS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"task\": ..., \"labels\": [...]}}",
            path.display()
        )
    })?))
}

/// Resolve `--resume PATH`: a checkpoint directory, or an output directory (its newest
/// checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(TRAINER_STATE).exists() {
        return Ok(path.to_path_buf());
    }
    let problem = if !path.exists() {
        "does not exist".to_string()
    } else if !path.is_dir() {
        "is a file, not a checkpoint or output directory".to_string()
    } else {
        match list(path)?.pop() {
            Some((_, p)) => return Ok(p),
            None => format!(
                "is neither a checkpoint (no {TRAINER_STATE}) nor an output directory with checkpoints"
            ),
        }
    };
    Err(anyhow::Error::new(NoCheckpoint(format!(
        "--resume {} {problem}",
        path.display()
    ))))
}

/// `--resume` names no checkpoint (the `loraplus` binary exits 2: the user's input).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoCheckpoint(pub String);

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(TRAINER_STATE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same file named two ways is the same setting; another file is not.
    #[test]
    fn resume_compares_paths_as_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.jsonl");
        std::fs::write(&data, "{}").unwrap();
        let other = dir.path().join("other.jsonl");
        std::fs::write(&other, "{}").unwrap();
        let with = |train: &str, model: &str| TrainConfig {
            train_file: Some(PathBuf::from(train)),
            model: Some(PathBuf::from(model)),
            ..TrainConfig::default()
        };
        let d = data.to_str().unwrap();
        let dotted = format!("{}/./data.jsonl", dir.path().display());
        let up = format!(
            "{}/../{}/data.jsonl",
            dir.path().display(),
            dir.path().file_name().unwrap().to_str().unwrap()
        );
        let saved = with(d, "models/llama");
        for same in [with(&dotted, "./models/llama/"), with(&up, "models/llama")] {
            assert!(resume_conflicts(&saved, &same).unwrap().is_empty());
        }
        let differ =
            resume_conflicts(&saved, &with(other.to_str().unwrap(), "models/qwen")).unwrap();
        assert_eq!(differ.len(), 2, "{differ:?}");
    }

    fn state(step: usize) -> TrainerState {
        TrainerState {
            step,
            position: Position {
                epoch: 0,
                index: step,
            },
            best_metric: None,
            best_step: None,
            evals_since_best: 0,
            target_reached_at: None,
            loss_window: LossWindow::default(),
            train_data_sha256: None,
            config: TrainConfig::default(),
        }
    }

    #[test]
    fn save_list_prune_resolve() {
        let dir = tempfile::tempdir().unwrap();
        for s in [10, 20, 30, 40] {
            save(dir.path(), &state(s), |d| {
                Ok(std::fs::write(d.join("x"), b"1")?)
            })
            .unwrap();
        }
        prune(dir.path(), 2, Some(10)).unwrap();
        let steps: Vec<_> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, vec![10, 30, 40]);
        let latest = resolve(dir.path()).unwrap();
        assert_eq!(read_state(&latest).unwrap().step, 40);
    }

    #[test]
    fn a_failed_write_leaves_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &state(5), |_| Ok(())).unwrap();
        let err = save(dir.path(), &state(6), |_| anyhow::bail!("disk full"));
        assert!(err.is_err());
        let latest = resolve(dir.path()).unwrap();
        assert_eq!(read_state(&latest).unwrap().step, 5);
    }
}
