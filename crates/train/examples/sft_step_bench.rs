//! The SFT (causal-LM) training step of loraplus, timed on the batches `benches/sft_make.py`
//! wrote: the Rust side of `benches/sft.sh`, the counterpart of `benches/sft_step_ref.py`
//! (transformers + PEFT) on the same batches.
//!
//! A step: forward with the LM head on every position, the causal-LM loss (mean over target
//! tokens), backward, clip the gradient norm to 1, LoRA+ AdamW step (lr 2e-4, ratio 16), zero
//! grad. LoRA r 8, alpha 16, dropout 0 on the recommended Llama targets (q_proj, v_proj).
//! Padded batches pass their attention mask; packed batches pass position ids (attention kept
//! inside each document) and an all-ones mask.
//!
//! ```text
//! cargo run --release -p loraplus-train --example sft_step_bench -- DIR padded|packed [--steps N] [--warmup 2] [--threads N] [--device cpu|cuda] [--dtype f32|bf16]
//! ```
//! Prints one line of key=value fields, the format the Python side prints too.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use loraplus_models::{Head, LoadOptions, ModelInputs, TaskModel};
use loraplus_optim::{LoraPlusAdamW, LoraPlusConfig, Schedule};
use tch::{Kind, Tensor};

struct Batch {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
    positions: Option<Tensor>,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: sft_step_bench DIR padded|packed [--steps N] [--warmup N] [--threads N]");
    }
    let dir = PathBuf::from(&args[0]);
    let layout = args[1].clone();
    if layout != "padded" && layout != "packed" {
        bail!("layout must be padded or packed, found {layout:?}");
    }
    let mut steps = 0usize;
    let mut warmup = 2usize;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    let mut device = tch::Device::Cpu;
    let mut dtype = "f32".to_string();
    let mut it = args[2..].iter();
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--steps" => steps = v.parse()?,
            "--warmup" => warmup = v.parse()?,
            "--threads" => threads = v.parse()?,
            "--device" => device = loraplus_train::config::parse_device(v)?,
            "--dtype" => dtype = v.clone(),
            other => bail!("unknown flag {other}"),
        }
    }
    tch::set_num_threads(threads);
    loraplus_train::model::tune_cpu_allocator();
    tch::manual_seed(0);
    let data: std::collections::HashMap<String, Tensor> =
        loraplus_core::read_safetensors(&dir.join(format!("{layout}.safetensors")))?
            .into_iter()
            .collect();
    let n = data.keys().filter(|k| k.starts_with("input_ids.")).count();
    let get = |k: String| -> Result<Tensor> {
        data.get(&k)
            .map(|t| t.to_device(device))
            .with_context(|| format!("{layout}.safetensors has no {k}"))
    };
    let mut batches = Vec::with_capacity(n);
    for j in 0..n {
        let ids = get(format!("input_ids.{j}"))?;
        let (mask, positions) = if layout == "padded" {
            (get(format!("attention_mask.{j}"))?, None)
        } else {
            (ids.ones_like(), Some(get(format!("position_ids.{j}"))?))
        };
        batches.push(Batch {
            labels: get(format!("labels.{j}"))?,
            ids,
            mask,
            positions,
        });
    }
    let mdir = dir.join("model");
    let mc = loraplus_models::ModelConfig::from_file(mdir.join("config.json"))?;
    let mut lc = mc.recommended_lora_config(Head::CausalLm, 8, 16.0);
    lc.lora_dropout = 0.0;
    let opts = LoadOptions {
        task: Head::CausalLm,
        lora: Some(lc),
        device,
        dtype: loraplus_train::model::kind_of(&dtype)?,
        ..LoadOptions::default()
    };
    let (model, lora) = TaskModel::load(&mdir, &opts)?;
    let oc = LoraPlusConfig {
        lr: 2e-4,
        ratio: 16.0,
        ..Default::default()
    };
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &oc, Schedule::Constant)?;
    let mut step = |b: &Batch| -> Result<f64> {
        let inputs = ModelInputs {
            input_ids: &b.ids,
            attention_mask: &b.mask,
            token_type_ids: None,
            position_ids: b.positions.as_ref(),
        };
        let out = model.forward_backward_inputs(&inputs, &b.labels, true, 1.0)?;
        let _norm = opt.clip_grad_norm(1.0)?;
        opt.step()?;
        opt.zero_grad()?;
        Ok(out.loss.double_value(&[]))
    };
    for j in 0..warmup {
        step(&batches[j % n])?;
    }
    let steps = if steps == 0 { n } else { steps };
    let (mut real, mut total) = (0i64, 0i64);
    let mut loss = 0.0;
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let t0 = Instant::now();
    for j in 0..steps {
        let b = &batches[j % n];
        total += b.ids.numel() as i64;
        // The pad id 0 is never a document token.
        real += b.ids.ne(0).sum(Kind::Int64).int64_value(&[]);
        loss = step(b)?;
    }
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "impl=loraplus layout={layout} steps={steps} tokens={real} slots={total} padding={:.4} seconds={secs:.3} tokens_per_s={:.1} last_loss={loss:.4} peak_rss_mib={:.0} threads={threads} device={device:?} dtype={dtype}",
        1.0 - real as f64 / total as f64,
        real as f64 / secs,
        peak_rss_mib()
    );
    Ok(())
}
