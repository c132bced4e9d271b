//! Time `LoraPlusAdamW::step` on a LoRA parameter set of reference shapes, for
//! `benches/side_by_side.sh` (which runs `benches/torch_step.py` on the same shapes).
//!
//! ```text
//! cargo run --release -p loraplus-optim --example step_bench -- --set llama7b --threads 2
//! ```
//!
//! Flags: `--set minilm|llama7b`, `--steps N`, `--warmup N`, `--threads N`,
//! `--kernel auto|ops`. Prints one line: `rust <set> <kernel> <ms per step> ms/step ...`.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use loraplus_optim::{shapes, LoraPlusAdamW, LoraPlusConfig, Schedule, UpdateKernel};
use tch::Device;

struct Args {
    set: String,
    steps: usize,
    warmup: usize,
    threads: i32,
    kernel: UpdateKernel,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        set: "minilm".into(),
        steps: 50,
        warmup: 5,
        threads: 2,
        kernel: UpdateKernel::Auto,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--set" => a.set = value()?,
            "--steps" => a.steps = value()?.parse()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--threads" => a.threads = value()?.parse()?,
            "--kernel" => {
                a.kernel = match value()?.as_str() {
                    "auto" => UpdateKernel::Auto,
                    "ops" => UpdateKernel::TensorOps,
                    other => bail!("--kernel {other}: expected auto or ops"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse()?;
    tch::set_num_threads(args.threads);
    let set = shapes::by_name(&args.set)
        .with_context(|| format!("--set {}: expected minilm or llama7b", args.set))?;
    tch::manual_seed(0);
    let params = shapes::random_params(&set, Device::Cpu);
    let cfg = LoraPlusConfig {
        lr: 1e-4,
        ratio: 16.0,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = LoraPlusAdamW::from_tensors(params, &cfg, Schedule::Constant)?;
    opt.set_kernel(args.kernel);
    for _ in 0..args.warmup.max(1) {
        opt.step()?;
    }
    let mut times = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let t = Instant::now();
        opt.step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let kernel = match args.kernel {
        UpdateKernel::Auto => "auto",
        UpdateKernel::TensorOps => "ops",
    };
    println!(
        "rust {} {kernel} {median:.4} ms/step (mean {mean:.4}, min {:.4}; {} tensors, {} elements, {} threads)",
        args.set,
        times[0],
        2 * set.len(),
        shapes::numel(&set),
        args.threads
    );
    Ok(())
}
