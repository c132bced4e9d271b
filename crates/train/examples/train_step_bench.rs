//! One full LoRA+ training step of a sequence classifier (by default MiniLM), timed: the Rust
//! side of `benches/run.sh` (CPU) and `benches/gpu_bench.sh` (CUDA, bf16), which run
//! `benches/step_ref.py` (transformers + PEFT) on the same inputs.
//!
//! A step is what the trainer does per batch: forward, loss, backward, clip the gradient norm
//! to 1, LoRA+ AdamW step, zero the gradients. LoRA r = 8, alpha = 16, dropout 0 on the models
//! crate's recommended modules (`query`/`value`; GPT-2 `c_attn`; Llama `q_proj`/`v_proj`);
//! the heads train as `modules_to_save` (as PEFT's `SEQ_CLS` task does). The model's own
//! dropout is on, as in training. Inputs are fixed random token batches with right padding
//! (lengths seq/2..seq, padding = the config's `pad_token_id`).
//!
//! ```text
//! cargo run --release -p loraplus-train --example train_step_bench -- --batch 32 --seq 128
//! cargo run --release -p loraplus-train --example train_step_bench -- --peak
//! ```
//!
//! Flags: `--batch N`, `--seq N`, `--steps N`, `--warmup N`, `--threads N` (default: the
//! machine's cores), `--ratio R`, `--model DIR`, `--device cpu|cuda`, `--dtype f32|bf16|f16`,
//! `--peak` (time a large matmul in that dtype on that device instead: the measured peak for
//! the MFU), `--peak-size N`, `--breakdown` (also time the forward, the backward and the
//! optimizer separately), `--default-allocator` (leave glibc's malloc settings alone instead
//! of `model::tune_cpu_allocator`), `--quantize int8|int4` and `--quant-group-size N` (the
//! frozen base linears stored quantized, issue #14; the line then also gives the base's bytes
//! as stored and in full precision). Prints one line of `key=value` fields, the format
//! `benches/step_ref.py` prints too.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use loraplus_models::{
    default_model_dir, BertConfig, Gpt2Config, Head, LlamaConfig, LoadOptions, ModelConfig,
    RobertaConfig, TaskModel,
};
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
    device: Device,
    dtype: Kind,
    quantize: Option<String>,
    quant_group_size: Option<i64>,
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
        device: Device::Cpu,
        dtype: Kind::Float,
        quantize: None,
        quant_group_size: None,
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
            "--quantize" => a.quantize = Some(value),
            "--quant-group-size" => a.quant_group_size = Some(value.parse().map_err(|e| bad(&e))?),
            "--device" => {
                a.device = match value.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    _ => bail!("--device {value}: expected cpu or cuda"),
                }
            }
            "--dtype" => {
                a.dtype = match value.as_str() {
                    "f32" => Kind::Float,
                    "bf16" => Kind::BFloat16,
                    "f16" => Kind::Half,
                    _ => bail!("--dtype {value}: expected f32, bf16 or f16"),
                }
            }
            other => bail!(
                "unknown flag {other} (known: --batch --seq --steps --warmup --threads --ratio --model --peak --peak-size --breakdown --default-allocator --device --dtype --quantize --quant-group-size)"
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

/// The matrix products of one layer, for [`step_flops`].
struct Shape {
    layers: i64,
    hidden: i64,
    /// Query and output projection width (heads × head_dim).
    attn: i64,
    /// Key and value width each (kv heads × head_dim).
    kv: i64,
    /// GPT-2's `c_attn` computes query, key and value for every row, even in the last layer.
    qkv_every_row: bool,
    /// Feed-forward products `(in, out)` per row.
    ffn: Vec<(i64, i64)>,
    /// Adapted products `(in, out, every_row)`: `every_row` when the layer computes it for every
    /// row (value, `c_attn`), not only the returned ones (query).
    adapters: Vec<(i64, i64, bool)>,
    /// Head products `(in, out)` on one row per sequence.
    head: Vec<(i64, i64)>,
}

impl Shape {
    /// The layer products of `mc` with the adapters of its recommended LoRA config.
    fn of(mc: &ModelConfig, labels: i64) -> Result<Self> {
        let bert = mc
            .get::<BertConfig>()
            .or_else(|| mc.get::<RobertaConfig>().map(|r| &r.0));
        match (bert, mc.get::<Gpt2Config>(), mc.get::<LlamaConfig>()) {
            (Some(c), _, _) => {
                let (h, i) = (c.hidden_size, c.intermediate_size);
                Ok(Shape {
                    layers: c.num_hidden_layers,
                    hidden: h,
                    attn: h,
                    kv: h,
                    qkv_every_row: false,
                    ffn: vec![(h, i), (i, h)],
                    adapters: vec![(h, h, false), (h, h, true)],
                    head: vec![(h, h), (h, labels)],
                })
            }
            (_, Some(c), _) => {
                let (e, i) = (c.n_embd, c.inner_dim());
                Ok(Shape {
                    layers: c.n_layer,
                    hidden: e,
                    attn: e,
                    kv: e,
                    qkv_every_row: true,
                    ffn: vec![(e, i), (i, e)],
                    adapters: vec![(e, 3 * e, true)],
                    head: vec![(e, labels)],
                })
            }
            (_, _, Some(c)) => {
                let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim());
                Ok(Shape {
                    layers: c.num_hidden_layers,
                    hidden: h,
                    attn: c.num_attention_heads * d,
                    kv: c.num_kv_heads() * d,
                    qkv_every_row: false,
                    ffn: vec![(h, i), (h, i), (i, h)],
                    adapters: vec![
                        (h, c.num_attention_heads * d, false),
                        (h, c.num_kv_heads() * d, true),
                    ],
                    head: vec![(h, labels)],
                })
            }
            _ => bail!(
                "train_step_bench counts the FLOPs of bert, roberta, gpt2 and llama, not {}",
                mc.model_type()
            ),
        }
    }
}

/// Matrix-multiply FLOPs (2·m·n·k per product) of one LoRA training step of a sequence
/// classifier, forward and backward, when each layer but the last computes `tokens` positions
/// and the last computes `last` (keys and values for `tokens`, the rest for `last`). The dense
/// step PEFT runs is `tokens = last = batch·seq`; loraplus skips padding and runs the last
/// layer for the position the head reads only (`TaskModel::positions_computed`). Attention
/// runs on the padded `[batch, seq]` layout either way. The frozen weights need no weight
/// gradient, so their backward is one input-gradient product each (and none in layer 0 for
/// the query, key and value projections, whose input comes from the frozen embeddings): the
/// step is about 2x the forward, not the 3x of full fine-tuning. Elementwise work, softmax
/// and norms are not counted.
///
/// Per layer, with n rows in, m rows out (m = n but in the last layer), q attention query rows
/// (batch·seq, or m in the last layer), T seq:
/// - forward: key and value 2n·H·2kv; query 2m·H·attn (2n for GPT-2's fused `c_attn`);
///   output 2m·attn·H; feed-forward 2m·in·out each; attention QK^T and PV 4q·T·attn; each
///   adapter 2·rows·r·(in + out) (x A^T, then B);
/// - backward: the linears' input gradients as the forward (none for query, key and value in
///   layer 0); attention twice the forward (dS, dV, dQ, dK; no dK in layer 0); adapters twice
///   the forward (dB, d(xA^T), dA, dx; no dx in layer 0);
/// - head: its products on one row per sequence, forward once, backward twice (weight and
///   input gradients).
fn step_flops(s: &Shape, batch: i64, seq: i64, tokens: i64, last: i64, r: i64) -> f64 {
    let f = |v: i64| v as f64;
    let (h, b, t, r) = (f(s.hidden), f(batch), f(seq), f(r));
    let mut total = 0.0;
    for layer in 0..s.layers {
        let n = f(tokens);
        let (m, q) = if layer + 1 == s.layers {
            (f(last), f(last).min(b * t))
        } else {
            (n, b * t)
        };
        let q_rows = if s.qkv_every_row { n } else { m };
        let qkv = 2.0 * h * (2.0 * n * f(s.kv) + q_rows * f(s.attn));
        let rest = 2.0 * m * f(s.attn) * h
            + s.ffn
                .iter()
                .map(|(i, o)| 2.0 * m * f(*i) * f(*o))
                .sum::<f64>();
        let attn = 4.0 * q * t * f(s.attn);
        let lora: f64 = s
            .adapters
            .iter()
            .map(|(i, o, every)| 2.0 * if *every { n } else { m } * r * f(i + o))
            .sum();
        total += qkv + rest + attn + lora; // forward
        total += rest + 2.0 * attn + 2.0 * lora; // backward
        if layer == 0 {
            // No dK in layer 0; no dx for the adapters (their input is frozen).
            let dx: f64 = s
                .adapters
                .iter()
                .map(|(i, o, every)| 2.0 * if *every { n } else { m } * r * f(*i.min(o)))
                .sum();
            total -= 2.0 * q * t * f(s.attn) + dx;
        } else {
            total += qkv;
        }
    }
    let head: f64 = s.head.iter().map(|(i, o)| 2.0 * b * f(*i) * f(*o)).sum();
    total + 3.0 * head
}

/// Best GFLOP/s of a `size`³ matmul in `kind` on `device`, with the current thread count.
fn matmul_peak(size: i64, device: Device, kind: Kind) -> f64 {
    let opts = (kind, device);
    let a = Tensor::randn([size, size], opts);
    let b = Tensor::randn([size, size], opts);
    let mut out = Tensor::empty([size, size], opts);
    let flops = 2.0 * (size as f64).powi(3);
    let mut best = f64::MAX;
    for _ in 0..6 {
        sync(device);
        let t = Instant::now();
        out = a.mm_out(&out, &b);
        sync(device);
        best = best.min(t.elapsed().as_secs_f64());
    }
    drop(out);
    flops / best / 1e9
}

/// Wait for the device's queued work (CUDA runs asynchronously).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> Result<()> {
    let a = parse()?;
    tch::set_num_threads(a.threads);
    // As the trainer and the `loraplus` binary do (transformers + PEFT runs with the default).
    let tuned = !a.default_allocator && loraplus_train::model::tune_cpu_allocator();
    if a.peak {
        println!(
            "impl=loraplus matmul={} threads={} device={:?} dtype={:?} peak_gflops={:.2}",
            a.peak_size,
            a.threads,
            a.device,
            a.dtype,
            matmul_peak(a.peak_size, a.device, a.dtype)
        );
        return Ok(());
    }
    let mc = ModelConfig::from_file(a.model.join("config.json"))?;
    // The models crate's recommended config: query/value (c_attn for GPT-2), heads saved.
    let head = Head::SequenceClassification { num_labels: 2 };
    let mut lc = mc.recommended_lora_config(head, RANK, ALPHA);
    lc.lora_dropout = 0.0;
    let opts = LoadOptions {
        task: head,
        lora: Some(lc),
        seed: 0,
        dtype: a.dtype,
        device: a.device,
        quantize: match &a.quantize {
            Some(q) => Some(loraplus_core::QuantScheme::parse(q, a.quant_group_size)?),
            None => None,
        },
        ..Default::default()
    };
    let (model, lora) = TaskModel::load(&a.model, &opts)?;
    let bytes = lora.base_bytes();
    let mib = |b: i64| b as f64 / (1 << 20) as f64;
    let quant = format!(
        " quantize={} base_mib={:.1} base_full_mib={:.1} linear_weights_mib={:.1} linear_weights_full_mib={:.1}",
        a.quantize.as_deref().unwrap_or("none"),
        mib(bytes.stored),
        mib(bytes.full),
        mib(bytes.quantizable_stored),
        mib(bytes.quantizable_full)
    );
    let cfg = LoraPlusConfig {
        lr: LR,
        ratio: a.ratio,
        ..Default::default()
    };
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &cfg, Schedule::Constant)?;

    // The same generator calls as step_ref.py: identical batches (one libtorch). Padding
    // carries the config's pad token (where the decoders' heads look for the last token).
    tch::manual_seed(0);
    let cpu = (Kind::Int64, Device::Cpu);
    let ids = Tensor::randint_low(1000, 20000, [a.batch, a.seq], cpu);
    let lengths = Tensor::randint_low(a.seq / 2, a.seq + 1, [a.batch, 1], cpu);
    let mask = Tensor::arange(a.seq, cpu)
        .unsqueeze(0)
        .lt_tensor(&lengths)
        .to_kind(Kind::Int64);
    let pad = mc.pad_token_id().unwrap_or(0);
    let padding: Tensor = mask.ones_like() - &mask;
    let ids = (ids * &mask + padding * pad).to_device(a.device);
    let mask = mask.to_device(a.device);
    let labels = Tensor::randint(2, [a.batch], cpu).to_device(a.device);
    let rss_loaded = peak_rss_mib();

    let mut times = Vec::with_capacity(a.steps);
    // Per step, with --breakdown: (forward + loss, backward, clip + step + zero_grad).
    let mut phases: Vec<[f64; 3]> = Vec::with_capacity(a.steps);
    let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for i in 0..a.warmup + a.steps {
        sync(a.device);
        let t = Instant::now();
        let mut phase = [0.0; 3];
        if a.breakdown {
            // The same work as forward_backward, cut in two.
            let logits = model.forward_t(&ids, &mask, None, true)?;
            let l = model.loss(&logits, &labels)?;
            sync(a.device);
            phase[0] = t.elapsed().as_secs_f64();
            l.f_backward()?;
            sync(a.device);
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
        sync(a.device);
        phase[2] = t.elapsed().as_secs_f64() - before_opt;
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64());
            phases.push(phase);
        }
    }
    let last_loss = loss.double_value(&[]);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let shape = Shape::of(&mc, 2)?;
    let dense = a.batch * a.seq;
    let flops = step_flops(&shape, a.batch, a.seq, dense, dense, RANK as i64);
    let (tokens, last) = model.positions_computed(&ids, &mask)?;
    let executed = step_flops(&shape, a.batch, a.seq, tokens, last, RANK as i64);
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
        "impl=loraplus model={} device={:?} dtype={:?} batch={} seq={} threads={} steps={} median_ms={:.2} min_ms={:.2} samples_per_s={:.3} step_gflop={:.3} executed_gflop={:.3} achieved_gflops={:.2} rss_loaded_mib={:.1} peak_rss_mib={:.1} last_loss={:.4} tuned_allocator={tuned}{breakdown}{quant}",
        mc.model_type(),
        a.device,
        a.dtype,
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
