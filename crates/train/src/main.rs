//! The `loraplus` command: train, eval, merge, glue, info.
//! Exit codes: 0 success, 2 bad usage or configuration, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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
    /// Fine-tune with LoRA / LoRA+ on a GLUE task.
    Train(TrainArgs),
    /// Evaluate an adapter (a checkpoint or adapter directory) on a task's dev or test split.
    Eval(cli::EvalArgs),
    /// Merge an adapter into the base model and write a HuggingFace model folder.
    Merge(cli::MergeArgs),
    /// LoRA (ratio 1) against LoRA+ on several tasks and seeds, same budget; tables and plots.
    Glue(cli::GlueArgs),
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
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(a) => {
            let mut cfg = match &a.config {
                Some(p) => TrainConfig::from_file(p).map_err(UsageError::wrap)?,
                None => TrainConfig::default(),
            };
            a.overrides.apply(&mut cfg);
            cfg.validate().map_err(UsageError::wrap)?;
            cli::train(cfg, a.resume.as_deref(), !a.no_progress)
        }
        Command::Eval(a) => cli::eval(a),
        Command::Merge(a) => cli::merge(a),
        Command::Glue(a) => cli::glue(a),
        Command::Info => cli::info(),
    }
}

fn main() -> ExitCode {
    cli::init_tracing();
    loraplus_train::backend::tune_cpu_allocator();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
