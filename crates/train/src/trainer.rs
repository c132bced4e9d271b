//! The `Trainer`: model + LoRA adapter + LoRA+ optimizer + a task's data, and the training loop:
//! gradient accumulation, clipping, schedule, evaluation, best checkpoint, early stopping,
//! exact resume, interruption, and callbacks for library users.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use loraplus_core::LoraModel;
use loraplus_data::{
    DataLoader, LoaderConfig, MetricReport, PaddingSide, Position, Split, TokenizedDataset,
};

use crate::model::{self, Model, Optimizer};
use crate::parallel::DataParallel;
use crate::task::{self, TrainTask};

use crate::checkpoint::{self, TrainerState, ADAPTER_DIR, OPTIMIZER_DIR};
use crate::config::{parse_device, TrainConfig};
use crate::metrics_log::{EvalRecord, MetricsLog, TrainRecord};

/// The training loss became non-finite: the run stopped (the message says where its last good
/// state is). A learning rate too high for the model, not a fault of the input files.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Diverged(pub String);

/// `<output_dir>/best_adapter`: the adapter of the best evaluation so far (PEFT format).
pub const BEST_ADAPTER_DIR: &str = "best_adapter";
/// `<output_dir>/adapter`: the adapter at the end of the run.
pub const FINAL_ADAPTER_DIR: &str = "adapter";

/// What a callback may ask of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop after this step: the run writes a checkpoint and its adapter, as at its end
    /// (a stop asked at an evaluation keeps that evaluation as the final one).
    Stop,
}

/// Hooks for library users: logging, custom stopping. Under data parallelism every rank calls
/// its callbacks with the same records, so a callback that decides from them stops every rank
/// at the same step; one that decides from anything else (a clock, a file) must decide alike on
/// every rank (the interrupt flag is the way to stop from outside: the ranks agree on it).
pub trait Callback {
    /// After every `log_every`-th step (and the last), with the mean loss since the last one.
    fn on_log(&mut self, _record: &TrainRecord) -> Control {
        Control::Continue
    }
    /// After every evaluation (every `eval_every` steps, and the final one).
    fn on_eval(&mut self, _record: &EvalRecord) -> Control {
        Control::Continue
    }
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Optimizer steps done, resumed ones included.
    pub steps: usize,
    /// Why the loop ended: the step budget, early stopping, a callback, an interrupt.
    pub stopped_because: String,
    /// The last evaluation (none without evaluation data).
    pub final_eval: Option<EvalRecord>,
    /// The best main dev metric and the step it was reached at (`best_adapter/` holds it).
    pub best_metric: Option<f64>,
    pub best_step: Option<usize>,
    /// The first step at which `target_metric` was reached.
    pub target_reached_at: Option<usize>,
    /// The final adapter (PEFT format).
    pub adapter_dir: PathBuf,
    pub output_dir: PathBuf,
    /// Wall time of [`Trainer::train`] (this process's part of a resumed run).
    pub train_seconds: f64,
}

/// A configured run: built by [`Trainer::new`], run by [`Trainer::train`].
///
/// `new` reads the data, loads the model with its adapters and builds the optimizer from the
/// config; changing `config` afterwards changes nothing of that (the step budget included):
/// build a new `Trainer`. It reads the data-parallel environment (`RANK`, `WORLD_SIZE`, ... as
/// torchrun sets them; [`crate::parallel::DataParallel::from_env`]): with them set, the run
/// joins that process group. It seeds libtorch's global generator (see the README's library
/// section): runs compared number for number belong in separate processes.
pub struct Trainer {
    /// The run's config, as resolved by `new` (absolute file paths, `max_seq_len`, classes).
    pub config: TrainConfig,
    /// What is trained: the task's data, head, loss and metrics.
    pub task: Box<dyn TrainTask>,
    pub device: Device,
    /// The model with its adapters injected.
    pub model: Model,
    /// The adapters and trained modules of `model` (save, merge, parameter groups).
    pub lora: LoraModel,
    /// LoRA+ AdamW over `lora`'s parameters.
    pub optimizer: Optimizer,
    train_loader: DataLoader,
    dev: Vec<(Split, Arc<TokenizedDataset>)>,
    pad_id: u32,
    padding_side: PaddingSide,
    state: TrainerState,
    total_steps: usize,
    /// `None` on ranks other than 0 of a data-parallel run (only rank 0 writes).
    log: Option<MetricsLog>,
    /// This rank's place in a data-parallel run (see [`crate::parallel`]).
    pub parallel: Option<DataParallel>,
    interrupt: Arc<AtomicBool>,
    callbacks: Vec<Box<dyn Callback>>,
    /// Draw the terminal progress bar (with the `progress` feature); default true.
    pub show_progress: bool,
}

/// Process-wide settings a run's config asks for, which a library does not make on its own: the
/// libtorch CPU thread count (`threads`), TF32 on CUDA (`tf32`: sets
/// `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE` before CUDA starts, so call this before anything touches
/// CUDA) and, with `allocator`, [`model::tune_cpu_allocator`]. The `loraplus` binary calls it;
/// a library user calls it when they want these.
pub fn apply_process_settings(config: &TrainConfig, allocator: bool) -> Result<()> {
    let device = parse_device(&config.device)?;
    if let Device::Cuda(_) = device {
        if config.tf32 && std::env::var_os("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE").is_none() {
            // Read once by libtorch when the CUDA context starts: set it before.
            std::env::set_var("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1");
        }
    }
    if config.threads > 0 {
        tch::set_num_threads(config.threads as i32);
    }
    if allocator && device == Device::Cpu && !model::tune_cpu_allocator() {
        tracing::debug!("the allocator settings were not applied (not glibc)");
    }
    Ok(())
}

impl Trainer {
    /// Build everything a run needs; `resume` continues from a checkpoint (or an output
    /// directory's newest checkpoint).
    pub fn new(mut config: TrainConfig, resume: Option<&Path>) -> Result<Trainer> {
        config.validate_for_training()?;
        // The run records its files as absolute paths: its checkpoints and adapter name the
        // same files from any folder (eval, merge, a resume started elsewhere).
        for p in [&mut config.train_file, &mut config.eval_file] {
            if let Some(abs) = p.as_ref().and_then(|f| std::fs::canonicalize(f).ok()) {
                *p = Some(abs);
            }
        }
        if let Some(abs) = config
            .model
            .as_ref()
            .filter(|m| m.is_dir())
            .and_then(|m| std::fs::canonicalize(m).ok())
        {
            config.model = Some(abs);
        }
        // Classes read from the training file are recorded (checkpoints, label_names.json), so
        // that evaluation numbers them as training did.
        if config.task == "classification" && config.labels.is_none() {
            if let Some(f) = config.train_file.as_ref().or(config.eval_file.as_ref()) {
                config.labels = Some(
                    task::sequence::discover_labels(
                        f,
                        &config.label_column,
                        task::sequence::read_options(&config),
                    )
                    .map_err(task::bad_data)?,
                );
            }
        }
        let mut task = task::from_config(&config).map_err(task::bad_data)?;
        let mut device = parse_device(&config.device)?;
        let parallel =
            DataParallel::from_env(device, &config.dist_backend, loraplus_dist::DEFAULT_TIMEOUT)?;
        if let (Some(dp), Device::Cuda(_)) = (&parallel, device) {
            // One GPU per rank on a node; more ranks than GPUs share them (Gloo only: NCCL
            // refuses two ranks on one GPU).
            let gpus = tch::Cuda::device_count().max(1) as usize;
            device = Device::Cuda(dp.local_rank % gpus);
            if dp.local_rank >= gpus {
                tracing::warn!(
                    "local rank {} shares {device:?} with local rank {} ({gpus} GPU(s) on this node)",
                    dp.local_rank,
                    dp.local_rank % gpus
                );
            }
        }
        // The output folder of a fresh run, or the checkpoint of a resumed one, is checked
        // before data and model load.
        let main = parallel.as_ref().is_none_or(DataParallel::is_main);
        if main {
            checkpoint::check_output_dir(&config.output_dir)?;
        }
        let resumed = match resume {
            None => {
                if main {
                    checkpoint::prepare_fresh(&config.output_dir, config.overwrite_output_dir)?;
                }
                None
            }
            Some(path) => {
                let dir = checkpoint::resolve(path)?;
                if main && !checkpoint::in_output_dir(&dir, &config.output_dir) {
                    checkpoint::prepare_resume_elsewhere(
                        &config.output_dir,
                        config.overwrite_output_dir,
                    )?;
                } else if config.overwrite_output_dir && main {
                    tracing::warn!(
                        "overwrite_output_dir is ignored with --resume: the run continues, keeping what {} holds",
                        config.output_dir.display()
                    );
                }
                let saved = checkpoint::read_state(&dir)?;
                if config.max_seq_len.is_none() {
                    // The default the checkpoint's run resolved.
                    config.max_seq_len = saved.config.max_seq_len;
                }
                match (&saved.config.format, &config.format) {
                    // The checkpoint's explicit format, or detection: the same rows either way.
                    (Some(f), None) => config.format = Some(f.clone()),
                    (None, Some(f)) => {
                        let detected = match &config.train_file {
                            Some(file) if config.task == "causal-lm" => {
                                loraplus_data::lm::detect_jsonl_format(file)
                                    .map_err(task::bad_data)?
                            }
                            _ => None,
                        };
                        if detected.is_some_and(|d| d.name() == f) {
                            config.format = None;
                        }
                    }
                    _ => {}
                }
                let differ = checkpoint::resume_conflicts(&saved.config, &config)?;
                if !differ.is_empty() {
                    return Err(checkpoint::ResumeMismatch {
                        checkpoint: dir,
                        fields: differ,
                    }
                    .into());
                }
                Some((dir, saved))
            }
        };
        if let Some(dp) = &parallel {
            let per_rank = config.per_rank_batch(dp.world)?;
            tracing::info!(
                "data parallel: rank {} of {}; global batch {} = {} per rank x {} ranks x {} accumulation steps",
                dp.rank,
                dp.world,
                config.batch_size,
                per_rank,
                dp.world,
                config.grad_accum
            );
        }
        let mdir = model::model_dir(&config)?;
        let max_seq_len = model::resolve_max_seq_len(&config, &mdir)?;
        if config.max_seq_len != Some(max_seq_len) {
            config.max_seq_len = Some(max_seq_len);
            task = task::from_config(&config).map_err(task::bad_data)?;
        }

        // Data: training examples (optionally a seeded subset), evaluation set(s).
        let data = task::load_data(task.as_ref(), &config, &mdir)?;
        let (train, dev, pad_id) = (data.train, data.evals, data.pad_id);
        task::check_eval_sizes(&config, &dev)?;
        let padding_side = data.padding_side;
        let loader_cfg = LoaderConfig {
            bucket_multiplier: config.bucket_multiplier,
            padding_side,
            // Data parallel: every micro-batch splits into the ranks (DistributedSampler's
            // drop_last).
            drop_last: parallel.is_some(),
            ..LoaderConfig::train(config.micro_batch(), config.seed)
        };
        if let Some(dp) = &parallel {
            // Every micro-batch is split over the ranks, so an incomplete last one is left out.
            let (n, b) = (train.len(), config.micro_batch());
            if n < b {
                return Err(task::bad_data(anyhow::anyhow!(
                    "data parallel over {} ranks: {n} training examples make no full batch of {b} (batch_size / grad_accum); every batch is split over the ranks, and an incomplete one is left out (DistributedSampler's drop_last): lower batch_size or give more examples",
                    dp.world
                )));
            }
            if n % b != 0 && dp.is_main() {
                tracing::warn!(
                    "data parallel: {} of the {n} training examples make no full batch of {b} in each epoch and are left out of it (which ones changes with the epoch's order); a single process trains on them, so the two runs differ",
                    n % b
                );
            }
        }
        let train_loader = DataLoader::new(train, pad_id, loader_cfg)?;
        let train_data_sha256 = train_loader.data().content_sha256();
        if let Some((dir, saved)) = &resumed {
            if saved
                .train_data_sha256
                .as_ref()
                .is_some_and(|s| *s != train_data_sha256)
            {
                return Err(checkpoint::ResumeMismatch {
                    checkpoint: dir.clone(),
                    fields: vec![String::from(
                        "the training data are not the checkpoint's run's (the file's contents, or the tokenizer, changed): the saved position would continue in other rows",
                    )],
                }
                .into());
            }
        }
        let micro_per_epoch = train_loader.batches_per_epoch();
        let steps_per_epoch = micro_per_epoch.div_ceil(config.grad_accum).max(1);
        let total_steps = match config.max_steps {
            Some(s) => s,
            None => ((config.epochs * steps_per_epoch as f64).ceil() as usize).max(1),
        };

        // Model and adapters, seeded.
        tch::manual_seed(config.seed as i64);
        let (model, lora) = model::load_model(&config, task.head(), &mdir, device)?;
        let mut sets = vec![("training data", train_loader.data().as_ref())];
        sets.extend(dev.iter().map(|(_, d)| ("evaluation data", d.as_ref())));
        model::check_token_ids(&model, pad_id, &sets)?;
        if let Some(w) = config.optim.warmup_steps.filter(|&w| w >= total_steps) {
            tracing::warn!(
                "optim.warmup_steps {w} >= the run's {total_steps} steps: the learning rate never reaches optim.lr"
            );
        }
        let optimizer = model::build_optimizer(&config, &lora, total_steps)?;

        let mut state = TrainerState {
            step: 0,
            position: Position::default(),
            best_metric: None,
            best_step: None,
            evals_since_best: 0,
            target_reached_at: None,
            loss_window: checkpoint::LossWindow::default(),
            train_data_sha256: Some(train_data_sha256.clone()),
            config: config.clone(),
        };
        let mut optimizer = optimizer;
        if let Some((dir, saved)) = resumed {
            // At the budget exactly, the run only evaluates and writes its adapter; past it,
            // this run asks for fewer steps than were trained.
            if saved.step > total_steps {
                return Err(checkpoint::ResumeMismatch {
                    checkpoint: dir,
                    fields: vec![format!(
                        "the checkpoint is at step {}, past this run's end at step {total_steps} (max_steps / epochs)",
                        saved.step
                    )],
                }
                .into());
            }
            lora.load_adapter(&dir.join(ADAPTER_DIR))?;
            if let Some(changed) = optimizer.load_keeping_settings(&dir.join(OPTIMIZER_DIR))? {
                tracing::info!(
                    "resume: this run's optimizer settings replace the checkpoint's: {changed}"
                );
            }
            state = TrainerState {
                config: config.clone(),
                train_data_sha256: Some(train_data_sha256),
                ..saved
            };
            tracing::info!("resumed from {} at step {}", dir.display(), state.step);
            if main {
                let gone = checkpoint::abandon_after(&config.output_dir, &dir, &state)?;
                if !gone.is_empty() {
                    tracing::warn!(
                        "resumed from step {} of {}: removed the later checkpoints of the abandoned steps ({}) and their best and final adapters",
                        state.step,
                        config.output_dir.display(),
                        gone.iter().map(|s| format!("step {s}")).collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        if let Some(dp) = &parallel {
            dp.broadcast_params(&lora)?;
            dp.attach(&mut optimizer);
        }
        let log = match (main, resume) {
            (false, _) => None,
            (true, None) => Some(MetricsLog::open(&config.output_dir, false)?),
            (true, Some(_)) => Some(MetricsLog::resume(
                &config.output_dir,
                state.step,
                state.step == total_steps,
            )?),
        };
        Ok(Trainer {
            config,
            task,
            device,
            model,
            lora,
            optimizer,
            train_loader,
            dev,
            pad_id,
            padding_side,
            state,
            total_steps,
            log,
            parallel,
            interrupt: Arc::new(AtomicBool::new(false)),
            callbacks: Vec::new(),
            show_progress: true,
        })
    }

    pub fn add_callback(&mut self, cb: Box<dyn Callback>) {
        self.callbacks.push(cb);
    }

    /// A flag that, once set (e.g. by a SIGINT handler), makes the loop checkpoint and stop.
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Evaluate on every dev split; the report of the first is the one selection uses. Under
    /// data parallelism every rank must call it (each scores its shard; all get every report).
    pub fn evaluate(&self) -> Result<Vec<(Split, MetricReport)>> {
        let mut out = Vec::new();
        for (split, data) in &self.dev {
            out.push((
                *split,
                self.task.evaluate(
                    &self.model,
                    data,
                    (self.pad_id, self.padding_side),
                    &self.config,
                    self.device,
                    self.parallel.as_ref(),
                )?,
            ));
        }
        Ok(out)
    }

    /// Whether this process writes files: always, but for ranks other than 0 of a
    /// data-parallel run.
    pub fn is_main(&self) -> bool {
        self.parallel.as_ref().is_none_or(DataParallel::is_main)
    }

    /// The loss window goes into the next checkpoint (read off the device only then).
    fn keep_window(&mut self, loss: &Tensor, steps: usize) {
        self.state.loss_window = checkpoint::LossWindow {
            sum: if steps == 0 {
                0.0
            } else {
                loss.double_value(&[])
            },
            steps,
        };
    }

    fn save_checkpoint(&self) -> Result<PathBuf> {
        let dir = if self.is_main() {
            let lora = &self.lora;
            let opt = &self.optimizer;
            let dir = checkpoint::save(&self.config.output_dir, &self.state, |tmp| {
                lora.save_pretrained(&tmp.join(ADAPTER_DIR))?;
                checkpoint::write_label_names(&tmp.join(ADAPTER_DIR), &self.config)?;
                opt.save(&tmp.join(OPTIMIZER_DIR))
            })?;
            checkpoint::prune(
                &self.config.output_dir,
                self.config.keep_last,
                self.state.best_step,
            )?;
            dir
        } else {
            checkpoint::checkpoints_dir(&self.config.output_dir)
                .join(format!("step-{:06}", self.state.step))
        };
        if let Some(dp) = &self.parallel {
            dp.barrier().context("waiting for rank 0's checkpoint")?;
        }
        Ok(dir)
    }

    /// Rank 0 writes `lora` to `dir` (PEFT format); the other ranks wait for it.
    fn save_adapter(&self, dir: &Path) -> Result<()> {
        if self.is_main() {
            self.lora.save_pretrained(dir)?;
            checkpoint::write_label_names(dir, &self.config)?;
        }
        if let Some(dp) = &self.parallel {
            dp.barrier().context("waiting for rank 0's adapter")?;
        }
        Ok(())
    }

    /// Run to the end (or until stopped); returns what happened.
    pub fn train(&mut self) -> Result<RunSummary> {
        let started = Instant::now();
        let cfg = self.config.clone();
        let accum = cfg.grad_accum;
        let bar = crate::progress::bar(self.total_steps, self.state.step, self.show_progress);
        let mut stopped_because = String::from("reached the step budget");
        // A resumed run continues the window its checkpoint saved.
        let mut window_loss =
            Tensor::from(self.state.loss_window.sum as f32).to_device(self.device);
        let mut window_steps = self.state.loss_window.steps;
        let mut window_samples = 0usize;
        let mut window_start = Instant::now();
        let mut last_eval: Option<EvalRecord> = None;
        let check_each_step = self.device == Device::Cpu;
        // f16 weights: dynamic loss scaling (bf16 and f32 need none).
        let mut scaler =
            (cfg.dtype == "f16").then(|| crate::loss_scale::LossScaler::new(self.device));

        let start = self.train_loader.normalize(self.state.position)?;
        let mut epoch = start.epoch;
        let mut batches = self.train_loader.prefetch(start)?;
        // Data parallel: the ranks agree on stopping through the per-step all-reduce.
        let mut stop_agreed = false;
        'outer: while self.state.step < self.total_steps {
            let stop = match self.parallel {
                Some(_) => stop_agreed,
                None => self.interrupt.load(Ordering::Relaxed),
            };
            if stop {
                stopped_because = "interrupted (checkpoint written)".into();
                break;
            }
            // Dropout draws depend only on (seed, step): resume is exact.
            tch::manual_seed(
                (cfg.seed as i64)
                    .wrapping_mul(1_000_003)
                    .wrapping_add(self.state.step as i64),
            );
            let mut step_loss = Tensor::zeros([], (Kind::Float, self.device));
            let mut next_position = self.state.position;
            // The step's micro-batches first: each one's loss is weighted by its share of the
            // step's items (examples, or target tokens for a causal LM), as transformers'
            // Trainer does with `num_items_in_batch`, so that accumulation and data
            // parallelism give the gradient of the whole step's mean loss.
            let mut micro = Vec::with_capacity(accum);
            while micro.len() < accum {
                let batch = match batches.next() {
                    Some(b) => b?,
                    // The epoch's last step takes what is left of it (fewer micro-batches), as
                    // transformers' Trainer does: a step never spans two epochs.
                    None if !micro.is_empty() => break,
                    None => {
                        // The epoch is over: the next one starts (its order depends on (seed, epoch)).
                        epoch += 1;
                        batches = self.train_loader.prefetch(Position::start_of(epoch))?;
                        match batches.next() {
                            Some(b) => b?,
                            None => break 'outer,
                        }
                    }
                };
                next_position = batch.next_position();
                window_samples += batch.size();
                micro.push(batch);
            }
            // Items of each micro-batch, counted once (on the CPU batch: no device read).
            let counts: Vec<f64> = micro.iter().map(crate::parallel::items).collect();
            let step_items: f64 = counts.iter().sum();
            for (batch, all) in micro.into_iter().zip(counts) {
                // This rank's rows and its share of the step's loss.
                let (batch, mine, ranks) = match &self.parallel {
                    Some(dp) => {
                        let (local, mine) = dp.shard(&batch)?;
                        (local, mine, dp.world as f64)
                    }
                    None => (batch, all, 1.0),
                };
                let share = mine / step_items;
                if share.is_nan() || share <= 0.0 {
                    // Nothing to learn in these rows (and a mean over nothing is NaN): their
                    // gradient contribution is zero.
                    continue;
                }
                // Gradients are averaged over the ranks: scale each by ranks x share (and, in
                // f16, by the loss scale, which `unscale` divides out before the step).
                let loss_scale = scaler.as_ref().map_or(1.0, |sc| sc.scale());
                let loss = model::train_micro_step(
                    &self.model,
                    &batch,
                    self.device,
                    ranks * share * loss_scale,
                )?;
                step_loss += loss * share;
            }
            if let Some(dp) = &self.parallel {
                let asked = f64::from(u8::from(self.interrupt.load(Ordering::Relaxed)));
                let v = dp.sum(&[step_loss.double_value(&[]), asked])?;
                step_loss = Tensor::from(v[0] as f32).to_device(self.device);
                stop_agreed |= v[1] > 0.0;
            }
            if let Some(sc) = scaler.as_mut() {
                let finite = self.optimizer.unscale(sc)?;
                sc.update(finite);
                if !finite {
                    // Overflow at this scale: skip the update, keep the data moving.
                    self.optimizer.zero_grad()?;
                    tracing::debug!("f16 overflow: step skipped, loss scale now {}", sc.scale());
                    self.state.step += 1;
                    self.state.position = next_position;
                    bar.set_position(self.state.step as u64);
                    continue;
                }
            }
            if check_each_step {
                let v = step_loss.double_value(&[]);
                if !v.is_finite() {
                    self.optimizer.zero_grad()?;
                    self.keep_window(&window_loss, window_steps);
                    let dir = self.save_checkpoint()?;
                    return Err(Diverged(format!(
                        "the training loss became non-finite ({v}) at step {}; the last good state is saved in {}: resume from it (--resume {}) with a lower lr or loraplus_ratio, or a smaller max_grad_norm",
                        self.state.step + 1,
                        dir.display(),
                        dir.display()
                    ))
                    .into());
                }
            }
            let grad_norm = self.optimizer.clip_and_step(cfg.optim.max_grad_norm)?;
            self.state.step += 1;
            self.state.position = next_position;
            window_loss += &step_loss;
            window_steps += 1;
            bar.set_position(self.state.step as u64);

            let step = self.state.step;
            if step.is_multiple_of(cfg.log_every) || step == self.total_steps {
                // The only host read of the loss: once per log interval.
                let loss = window_loss.double_value(&[]) / window_steps as f64;
                if !loss.is_finite() {
                    // The optimizer has already stepped on the non-finite gradients (the loss is
                    // read once per log interval off the CPU): this state is not saved, so the
                    // newest checkpoint stays the last good one.
                    let advice = match checkpoint::list(&cfg.output_dir)?.pop() {
                        Some((s, d)) => format!(
                            "the newest checkpoint, from step {s}, is in {}: resume from it (--resume {}) with a lower lr or loraplus_ratio",
                            d.display(),
                            d.display()
                        ),
                        None => String::from(
                            "no checkpoint was written before it (save_every): start over with a lower lr or loraplus_ratio",
                        ),
                    };
                    return Err(Diverged(format!(
                        "the training loss became non-finite between steps {} and {step}; {advice}",
                        step + 1 - window_steps,
                    ))
                    .into());
                }
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let (lr_a, lr_b) = self.optimizer.lrs();
                let rec = TrainRecord {
                    step,
                    epoch: next_position.epoch,
                    loss,
                    lr_a,
                    lr_b,
                    grad_norm: grad_norm.map(|g| g.double_value(&[])),
                    samples_per_s: window_samples as f64 / secs,
                    elapsed_s: started.elapsed().as_secs_f64(),
                };
                bar.set_message(format!(
                    "loss {loss:.4} | lr A {lr_a:.2e} B {lr_b:.2e} | {:.1} samples/s",
                    rec.samples_per_s
                ));
                if let Some(log) = self.log.as_mut() {
                    log.train(&rec)?;
                }
                let mut stop = false;
                for cb in &mut self.callbacks {
                    stop |= cb.on_log(&rec) == Control::Stop;
                }
                window_loss = Tensor::zeros([], (Kind::Float, self.device));
                window_steps = 0;
                window_samples = 0;
                window_start = Instant::now();
                if stop {
                    stopped_because = "stopped by a callback".into();
                    break;
                }
            }
            let eval_now = !self.dev.is_empty()
                && cfg.eval_every > 0
                && step.is_multiple_of(cfg.eval_every)
                && step < self.total_steps;
            if eval_now {
                let rec = self.eval_and_track(started)?;
                let mut stop = false;
                for cb in &mut self.callbacks {
                    stop |= cb.on_eval(&rec) == Control::Stop;
                }
                last_eval = Some(rec);
                if self.state.best_step == Some(step) {
                    self.keep_window(&window_loss, window_steps);
                    self.save_checkpoint()?;
                    self.save_adapter(&self.config.output_dir.join(BEST_ADAPTER_DIR))?;
                }
                if let Some(p) = cfg.early_stopping_patience {
                    if self.state.evals_since_best >= p {
                        stopped_because =
                            format!("early stopping: no improvement in {p} evaluations");
                        break;
                    }
                }
                if stop {
                    stopped_because = "stopped by a callback".into();
                    break;
                }
            }
            if cfg.save_every > 0 && step.is_multiple_of(cfg.save_every) && step < self.total_steps
            {
                self.keep_window(&window_loss, window_steps);
                self.save_checkpoint()?;
            }
        }
        drop(batches);
        bar.finish_and_clear();
        let interrupted = match self.parallel {
            Some(_) => stop_agreed,
            None => self.interrupt.load(Ordering::Relaxed),
        };
        // Stopped right after an evaluation (early stopping, a callback): that one is final.
        let evaluated_here = last_eval
            .as_ref()
            .is_some_and(|e| e.step == self.state.step);
        let final_eval = if interrupted || self.dev.is_empty() || evaluated_here {
            last_eval
        } else {
            let rec = self.eval_and_track(started)?;
            for cb in &mut self.callbacks {
                cb.on_eval(&rec);
            }
            Some(rec)
        };
        self.keep_window(&window_loss, window_steps);
        let ckpt = self.save_checkpoint()?;
        if self.state.best_step == Some(self.state.step) {
            self.save_adapter(&self.config.output_dir.join(BEST_ADAPTER_DIR))?;
        }
        let adapter_dir = self.config.output_dir.join(FINAL_ADAPTER_DIR);
        self.save_adapter(&adapter_dir)?;
        if let Some(dp) = &self.parallel {
            let total = started.elapsed().as_secs_f64();
            let comm = dp.comm_seconds();
            tracing::info!(
                "rank {}: communication: {:.1}% of {total:.1} s in the gradient all-reduce ({comm:.2} s)",
                dp.rank,
                100.0 * comm / total.max(1e-9)
            );
        }
        Ok(RunSummary {
            steps: self.state.step,
            stopped_because,
            final_eval,
            best_metric: self.state.best_metric,
            best_step: self.state.best_step,
            target_reached_at: self.state.target_reached_at,
            adapter_dir,
            output_dir: ckpt
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            train_seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn eval_and_track(&mut self, started: Instant) -> Result<EvalRecord> {
        // Data parallel: every rank scores its shard and gets the whole set's reports, so that
        // every rank tracks the best step and early stopping alike.
        let reports = self.evaluate()?;
        let main = reports.first().map(|(_, r)| r.main).unwrap_or(f64::NAN);
        let step = self.state.step;
        let higher = self.task.greater_is_better();
        let better = |new: f64, old: f64| if higher { new > old } else { new < old };
        // A non-finite metric (a diverged model) is never the best.
        if main.is_finite() && self.state.best_metric.is_none_or(|b| better(main, b)) {
            self.state.best_metric = Some(main);
            self.state.best_step = Some(step);
            self.state.evals_since_best = 0;
        } else {
            self.state.evals_since_best += 1;
        }
        if let (Some(t), None) = (self.config.target_metric, self.state.target_reached_at) {
            if (higher && main >= t) || (!higher && main <= t) {
                self.state.target_reached_at = Some(step);
            }
        }
        let rec = EvalRecord::new(step, &reports, started.elapsed().as_secs_f64());
        if let Some(log) = self.log.as_mut() {
            log.eval(&rec)?;
        }
        tracing::info!("step {step}: {}", rec.describe());
        Ok(rec)
    }
}
