//! Time a LoRA training step (forward + backward) of the default model, to set beside
//! `tests/reference/step_time.py` (PyTorch + PEFT on the same libtorch).
//!
//! usage: cargo run --release -p loraplus-models --example step_time -- [batch] [seq_len] [steps] [threads] [checkpointing 0|1]
//!
//! Prints the median and fastest step, and the process's peak resident memory (VmHWM).

use std::time::Instant;

use anyhow::Result;
use loraplus_core::LoraConfig;
use loraplus_models::{default_model_dir, Head, LoadOptions, TaskModel};
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let args: Vec<i64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let (batch, seq, steps) = (
        args.first().copied().unwrap_or(32),
        args.get(1).copied().unwrap_or(64),
        args.get(2).copied().unwrap_or(20),
    );
    if let Some(&threads) = args.get(3) {
        tch::set_num_threads(threads as i32);
    }
    let mut cfg = LoraConfig::new(8, 16.0, &["query", "value"]);
    cfg.lora_dropout = 0.1;
    cfg.modules_to_save = Some(vec!["classifier".into(), "pooler.dense".into()]);
    let opts = LoadOptions {
        task: Head::SequenceClassification { num_labels: 2 },
        lora: Some(cfg),
        checkpointing: args.get(4).is_some_and(|&c| c != 0),
        ..Default::default()
    };
    let (model, lora) = TaskModel::load(&default_model_dir(), &opts)?;
    tch::manual_seed(0);
    let ids = Tensor::randint_low(1000, 20000, [batch, seq], (Kind::Int64, Device::Cpu));
    // Lengths from seq/2 to seq, right padding.
    let lengths = Tensor::randint_low(seq / 2, seq + 1, [batch, 1], (Kind::Int64, Device::Cpu));
    let mask = Tensor::arange(seq, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .lt_tensor(&lengths)
        .to_kind(Kind::Int64);
    let ids = ids * &mask;
    let labels = Tensor::randint(2, [batch], (Kind::Int64, Device::Cpu));
    let mut times = Vec::new();
    for i in 0..steps + 3 {
        let t0 = Instant::now();
        let out = model.forward_backward(&ids, &mask, None, &labels, true, 1.0)?;
        for p in lora.trainable_params() {
            p.tensor.shallow_clone().zero_grad();
        }
        drop(out);
        if i >= 3 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "loraplus MiniLM LoRA step (batch {batch}, seq {seq}, {} threads, checkpointing {}): median {:.1} ms, min {:.1} ms; {peak}",
        tch::get_num_threads(),
        model.checkpointing(),
        median * 1e3,
        times[0] * 1e3
    );
    Ok(())
}
