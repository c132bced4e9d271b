//! One full LoRA+ training step of the default model (MiniLM), timed: the Rust side of
//! `benches/run.sh`, which runs `benches/step_ref.py` (transformers + PEFT) on the same inputs.
//!
//! A step is what the trainer does per batch: forward, loss, backward, clip the gradient norm
//! to 1, LoRA+ AdamW step, zero the gradients. LoRA r = 8, alpha = 16, dropout 0 on `query`
//! and `value`; the pooler and classifier train as `modules_to_save` (as PEFT's
//! `SEQ_CLS` task does with `modules_to_save`). The model's own dropout (0.1) is on, as in
//! training. Inputs are fixed random token batches with right padding (lengths seq/2..seq).
//!
//! ```text
//! cargo run --release -p loraplus-train --example train_step_bench -- --batch 32 --seq 128
//! cargo run --release -p loraplus-train --example train_step_bench -- --peak
//! ```
//!
//! Flags: `--batch N`, `--seq N`, `--steps N`, `--warmup N`, `--threads N` (default: the
//! machine's cores), `--ratio R`, `--model DIR`, `--peak` (time a large f32 matmul instead: the
//! machine's measured peak for the MFU), `--peak-size N`, `--breakdown` (also time the
//! forward, the backward and the optimizer separately), `--default-allocator` (leave glibc's
//! malloc settings alone instead of `backend::tune_cpu_allocator`). Prints one line of `key=value` fields,
//! the format `benches/step_ref.py` prints too.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use loraplus_models::{default_model_dir, BertConfig, Head, LoadOptions, ModelConfig, TaskModel};
use loraplus_optim::{LoraPlusAdamW, LoraPlusConfig, Schedule};
use tch::{Device, Kind, Tensor};

/// The bench's LoRA setting (the LoRA+ paper's GLUE recipe has r = 8, alpha = 16).
const RANK: usize = 8;
const ALPHA: f64 = 16.0;
/// Learning rate of the A matrices (the CPU preset's `lr`).
const LR: f64 = 2e-4;
/// The trainer's default `max_grad_norm`.
const MAX_GRAD_NORM: f64 = 1.0;

struct Args {
    batch: i64,
    seq: i64,
    steps: usize,
    warmup: usize,
    threads: i32,
    ratio: f64,
    model: PathBuf,
    peak: bool,
    peak_size: i64,
    breakdown: bool,
    default_allocator: bool,
}

fn parse() -> Result<Args> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    let mut a = Args {
        batch: 32,
        seq: 128,
        steps: 10,
        warmup: 2,
        threads: cores,
        ratio: 16.0,
        model: default_model_dir(),
        peak: false,
        peak_size: 2048,
        breakdown: false,
        default_allocator: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--peak" || flag == "--breakdown" || flag == "--default-allocator" {
            a.peak |= flag == "--peak";
            a.breakdown |= flag == "--breakdown";
            a.default_allocator |= flag == "--default-allocator";
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{flag} {value}: {e}");
        match flag.as_str() {
            "--batch" => a.batch = value.parse().map_err(|e| bad(&e))?,
            "--seq" => a.seq = value.parse().map_err(|e| bad(&e))?,
            "--steps" => a.steps = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = value.parse().map_err(|e| bad(&e))?,
            "--threads" => a.threads = value.parse().map_err(|e| bad(&e))?,
            "--ratio" => a.ratio = value.parse().map_err(|e| bad(&e))?,
            "--model" => a.model = PathBuf::from(value),
            "--peak-size" => a.peak_size = value.parse().map_err(|e| bad(&e))?,
            other => bail!(
                "unknown flag {other} (known: --batch --seq --steps --warmup --threads --ratio --model --peak --peak-size --breakdown --default-allocator)"
            ),
        }
    }
    if a.batch < 1 || a.seq < 2 || a.steps < 1 || a.threads < 1 {
        bail!("--batch, --steps and --threads must be >= 1, --seq >= 2");
    }
    Ok(a)
}

/// Peak resident set size of this process in MiB (`VmHWM` in `/proc/self/status`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Matrix-multiply FLOPs (2·m·n·k per product) of one LoRA training step of a BERT
/// sequence classifier with adapters on `query` and `value`, forward and backward, when each
/// layer but the last computes `tokens` positions and the last computes `last` (keys and
/// values for `tokens`, the rest for `last`). The dense step PEFT runs is
/// `tokens = last = batch·seq`; loraplus skips padding and runs the last layer for the first
/// token only (`TaskModel::positions_computed`). Attention runs on the padded `[batch, seq]`
/// layout either way. The frozen weights need no weight gradient, so their backward is one
/// input-gradient product each (and none in layer 0 for query, key and value, whose input,
/// the embeddings, is frozen): the step is about 2x the forward, not the 3x of full
/// fine-tuning. Elementwise work, softmax and norms are not counted.
///
/// Per layer, with n positions in, m out (m = n but in the last layer), q attention query
/// rows (batch·seq, or m in the last layer), H hidden, I intermediate, T seq, r rank:
/// - forward: linears 2H·(2nH + 2mH + 2mI) (key, value; query, output; FFN); attention QK^T
///   and PV 4q·T·H; adapters 4H·r·(m + n) (query and value: x A^T, then B);
/// - backward: linears' input gradients as the forward (minus query, key and value in layer
///   0); attention twice the forward (dS, dV, dQ, dK; no dK in layer 0); adapters twice the
///   forward (dB, d(xA^T), dA, dx; no dx in layer 0);
/// - head: pooler HxH and classifier HxL on the first token, forward 2·batch·H·(H + L),
///   backward twice that (weight and input gradients).
fn step_flops(
    c: &BertConfig,
    batch: i64,
    seq: i64,
    tokens: i64,
    last: i64,
    r: i64,
    labels: i64,
) -> f64 {
    let (h, i, layers) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.num_hidden_layers,
    );
    let (b, t, r) = (batch as f64, seq as f64, r as f64);
    let mut total = 0.0;
    for layer in 0..layers {
        let n = tokens as f64;
        let (m, q) = if layer + 1 == layers {
            (last as f64, (last as f64).min(b * t))
        } else {
            (n, b * t)
        };
        let lin = 2.0 * h * (2.0 * n * h + 2.0 * m * h + 2.0 * m * i);
        let attn = 4.0 * q * t * h;
        let lora = 4.0 * h * r * (m + n);
        total += lin + attn + lora; // forward
        total += lin + 2.0 * attn + 2.0 * lora; // backward
        if layer == 0 {
            total -= 2.0 * h * h * (2.0 * n + m) + 2.0 * q * t * h + 2.0 * h * r * (m + n);
        }
    }
    let head_fwd = 2.0 * b * h * (h + labels as f64);
    total + 3.0 * head_fwd
}

/// Best GFLOP/s of an f32 `size`³ matmul on this machine, with the current thread count.
fn matmul_peak(size: i64) -> f64 {
    let opts = (Kind::Float, Device::Cpu);
    let a = Tensor::randn([size, size], opts);
    let b = Tensor::randn([size, size], opts);
    let mut out = Tensor::empty([size, size], opts);
    let flops = 2.0 * (size as f64).powi(3);
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t = Instant::now();
        out = a.mm_out(&out, &b);
        best = best.min(t.elapsed().as_secs_f64());
    }
    drop(out);
    flops / best / 1e9
}

fn main() -> Result<()> {
    let a = parse()?;
    tch::set_num_threads(a.threads);
    // As the trainer and the `loraplus` binary do (transformers + PEFT runs with the default).
    let tuned = !a.default_allocator && loraplus_train::backend::tune_cpu_allocator();
    if a.peak {
        println!(
            "impl=loraplus matmul={} threads={} peak_gflops={:.2}",
            a.peak_size,
            a.threads,
            matmul_peak(a.peak_size)
        );
        return Ok(());
    }
    let mc = ModelConfig::from_file(a.model.join("config.json"))?;
    let ModelConfig::Bert(bert) = &mc else {
        bail!(
            "{}: this bench times a BERT classifier, the model is {}",
            a.model.display(),
            mc.model_type()
        );
    };
    // The models crate's recommended BERT config: query/value, classifier and pooler saved.
    let head = Head::SequenceClassification { num_labels: 2 };
    let mut lc = ModelConfig::from_file(a.model.join("config.json"))?
        .recommended_lora_config(head, RANK, ALPHA);
    lc.lora_dropout = 0.0;
    let opts = LoadOptions {
        task: head,
        lora: Some(lc),
        seed: 0,
        ..Default::default()
    };
    let (model, lora) = TaskModel::load(&a.model, &opts)?;
    let cfg = LoraPlusConfig {
        lr: LR,
        ratio: a.ratio,
        ..Default::default()
    };
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &cfg, Schedule::Constant)?;

    // The same generator calls as step_ref.py: identical batches (one libtorch).
    tch::manual_seed(0);
    let cpu = (Kind::Int64, Device::Cpu);
    let ids = Tensor::randint_low(1000, 20000, [a.batch, a.seq], cpu);
    let lengths = Tensor::randint_low(a.seq / 2, a.seq + 1, [a.batch, 1], cpu);
    let mask = Tensor::arange(a.seq, cpu)
        .unsqueeze(0)
        .lt_tensor(&lengths)
        .to_kind(Kind::Int64);
    let ids = ids * &mask;
    let labels = Tensor::randint(2, [a.batch], cpu);
    let rss_loaded = peak_rss_mib();

    let mut times = Vec::with_capacity(a.steps);
    // Per step, with --breakdown: (forward + loss, backward, clip + step + zero_grad).
    let mut phases: Vec<[f64; 3]> = Vec::with_capacity(a.steps);
    let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for i in 0..a.warmup + a.steps {
        let t = Instant::now();
        let mut phase = [0.0; 3];
        if a.breakdown {
            // The same work as forward_backward, cut in two.
            let logits = model.forward_t(&ids, &mask, None, true)?;
            let l = model.loss(&logits, &labels)?;
            phase[0] = t.elapsed().as_secs_f64();
            l.f_backward()?;
            phase[1] = t.elapsed().as_secs_f64() - phase[0];
            loss = l.detach();
        } else {
            loss = model
                .forward_backward(&ids, &mask, None, &labels, true, 1.0)?
                .loss;
        }
        let before_opt = t.elapsed().as_secs_f64();
        let _norm = opt.clip_grad_norm(MAX_GRAD_NORM)?;
        opt.step()?;
        opt.zero_grad()?;
        phase[2] = t.elapsed().as_secs_f64() - before_opt;
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64());
            phases.push(phase);
        }
    }
    let last_loss = loss.double_value(&[]);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let dense = a.batch * a.seq;
    let flops = step_flops(bert, a.batch, a.seq, dense, dense, RANK as i64, 2);
    let (tokens, last) = model.positions_computed(&ids, &mask)?;
    let executed = step_flops(bert, a.batch, a.seq, tokens, last, RANK as i64, 2);
    let breakdown = if a.breakdown {
        let med = |k: usize| {
            let mut v: Vec<f64> = phases.iter().map(|p| p[k]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] * 1e3
        };
        format!(
            " forward_ms={:.2} backward_ms={:.2} optimizer_ms={:.3}",
            med(0),
            med(1),
            med(2)
        )
    } else {
        String::new()
    };
    println!(
        "impl=loraplus batch={} seq={} threads={} steps={} median_ms={:.2} min_ms={:.2} samples_per_s={:.3} step_gflop={:.3} executed_gflop={:.3} achieved_gflops={:.2} rss_loaded_mib={:.1} peak_rss_mib={:.1} last_loss={:.4} tuned_allocator={tuned}{breakdown}",
        a.batch,
        a.seq,
        a.threads,
        a.steps,
        median * 1e3,
        times[0] * 1e3,
        a.batch as f64 / median,
        flops / 1e9,
        executed / 1e9,
        executed / median / 1e9,
        rss_loaded,
        peak_rss_mib(),
        last_loss
    );
    Ok(())
}
