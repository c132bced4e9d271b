//! The `loraplus` command: train, eval, merge, glue, info.
//! Exit codes: 0 success, 2 bad usage or configuration, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use loraplus_train::checkpoint::{NoCheckpoint, OutputDirInUse, ResumeMismatch};
use loraplus_train::cli::{self, UsageError};
use loraplus_train::config::TrainConfig;

#[derive(Parser)]
#[command(
    name = "loraplus",
    version,
    about = "LoRA and LoRA+ fine-tuning on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune with LoRA / LoRA+: a GLUE task, classification/regression on your files, or a causal LM.
    Train(TrainArgs),
    /// Evaluate an adapter (a checkpoint or adapter directory) on a task's dev or test split.
    Eval(cli::EvalArgs),
    /// Merge an adapter into the base model and write a HuggingFace model folder.
    Merge(cli::MergeArgs),
    /// Generate text with a causal LM (and an adapter): greedy or sampled, KV cache, chat template.
    Generate(cli::GenerateArgs),
    /// LoRA (ratio 1) against LoRA+ on several tasks and seeds, same budget; tables and plots.
    Glue(cli::GlueArgs),
    /// Find a good (lr, LoRA+ ratio) by successive halving over a grid; writes the chosen config.
    Tune(cli::TuneArgs),
    /// libtorch version, CUDA devices, threads, default model and data locations.
    Info,
}

#[derive(Args)]
struct TrainArgs {
    /// Config file (TOML or JSON); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: cli::Overrides,
    /// Continue from a checkpoint directory (or an output directory's newest checkpoint).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start over in an output directory that holds an earlier run's checkpoints (they are
    /// removed); without it such a directory is refused unless --resume continues it.
    #[arg(long)]
    overwrite_output_dir: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Keep glibc's default allocator settings (see `model::tune_cpu_allocator`).
    #[arg(long)]
    default_allocator: bool,
    /// Data parallel on this node: start N ranks of this command (each with its share of the
    /// CPU threads, or its own GPU with --device cuda). `batch_size` stays the global batch.
    /// Across machines, use `torchrun --nnodes M --nproc-per-node N ... --no-python loraplus
    /// train ...` instead.
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Train(a) = &cli.command {
        if a.nproc_per_node == 0 {
            return Err(UsageError::wrap(anyhow::anyhow!(
                "--nproc-per-node must be at least 1, found 0"
            )));
        }
    }
    match cli.command {
        Command::Train(a) if a.nproc_per_node > 1 && !loraplus_dist::DistEnv::is_present() => {
            // A Hub model is fetched once here, not by every rank at once.
            let mut cfg = match &a.config {
                Some(p) => TrainConfig::from_file(p).map_err(UsageError::wrap)?,
                None => TrainConfig::default(),
            };
            a.overrides.apply(&mut cfg);
            // A bad config is refused once here, not by every rank.
            cfg.validate_for_training().map_err(UsageError::wrap)?;
            if cfg.dist_backend == "none" {
                return Err(UsageError::wrap(anyhow::anyhow!(
                    "--nproc-per-node {} starts ranks, but dist_backend is none (train alone):                      drop one of them",
                    a.nproc_per_node
                )));
            }
            cfg.per_rank_batch(a.nproc_per_node)
                .map_err(UsageError::wrap)?;
            loraplus_train::model::model_dir(&cfg)?;
            cli::launch_ranks(a.nproc_per_node)
        }
        Command::Train(a) => {
            let mut cfg = match &a.config {
                Some(p) => TrainConfig::from_file(p).map_err(UsageError::wrap)?,
                None => TrainConfig::default(),
            };
            a.overrides.apply(&mut cfg);
            cfg.overwrite_output_dir |= a.overwrite_output_dir;
            cfg.validate_for_training().map_err(UsageError::wrap)?;
            loraplus_train::apply_process_settings(&cfg, !a.default_allocator)?;
            cli::train(cfg, a.resume.as_deref(), !a.no_progress)
        }
        Command::Eval(a) => cli::eval(a),
        Command::Merge(a) => cli::merge(a),
        Command::Generate(a) => cli::generate(a),
        Command::Glue(a) => cli::glue(a),
        Command::Tune(a) => cli::tune(a),
        Command::Info => cli::info(),
    }
}

/// The command line, every flag that takes a value reading `-1` as that value (`--lr -1` is
/// then refused by name as a negative rate, not as an unknown argument `-1`).
fn command() -> clap::Command {
    Cli::command().mut_subcommands(|sc| {
        sc.mut_args(|a| {
            if a.get_action().takes_values() {
                a.allow_negative_numbers(true)
            } else {
                a
            }
        })
    })
}

fn main() -> ExitCode {
    cli::init_tracing();
    let cli = match command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The run said what it saved; a shell reads 130 as "stopped by an interrupt".
        Err(e) if e.downcast_ref::<cli::Interrupted>().is_some() => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<OutputDirInUse>().is_some()
                || e.downcast_ref::<loraplus_train::checkpoint::UnusableOutputDir>()
                    .is_some()
                || e.downcast_ref::<ResumeMismatch>().is_some()
                || e.downcast_ref::<NoCheckpoint>().is_some()
                || e.downcast_ref::<loraplus_train::task::BadData>().is_some()
                || e.downcast_ref::<loraplus_train::model::UnusableModel>()
                    .is_some()
                || e.downcast_ref::<loraplus_models::BadCheckpoint>().is_some()
                || core_config_refused(&e)
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// What loraplus-core refuses in the user's LoRA settings or adapter files: a
/// `target_modules` that matches no module, a value out of range, a PEFT option it does not
/// implement, a base that cannot be quantized as asked (a group size that does not divide a
/// layer's width, no kernel for the device or dtype), an adapter whose tensors do not fit the
/// model (a missing, extra or misshapen key, NaN, a non-float dtype) or whose file does not
/// parse. The user's input, so a usage error.
fn core_config_refused(e: &anyhow::Error) -> bool {
    use loraplus_core::Error as E;
    e.chain().any(|c| {
        c.downcast_ref::<E>().is_some_and(|ce| {
            matches!(
                ce.root(),
                E::Quantization(_)
                    | E::NoTargetModule(_)
                    | E::BadConfigValue(_)
                    | E::UnsupportedPeftOption { .. }
                    | E::ShapeMismatch { .. }
                    | E::MissingTensor { .. }
                    | E::UnexpectedTensors { .. }
                    | E::NonFinite(_)
                    | E::BadFile { .. }
                    | E::AdapterConfigMismatch { .. }
                    | E::Json { .. }
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
        super::command().debug_assert();
    }

    /// A negative number is the value of the flag before it.
    #[test]
    fn negative_numbers_are_flag_values() {
        let m = super::command()
            .try_get_matches_from(["loraplus", "train", "--lr", "-1", "--threads", "2"])
            .unwrap();
        let (_, sub) = m.subcommand().unwrap();
        assert_eq!(sub.get_one::<f64>("lr"), Some(&-1.0));
        let e = super::command()
            .try_get_matches_from(["loraplus", "train", "--threads", "-1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--threads"), "{e}");
    }
}
