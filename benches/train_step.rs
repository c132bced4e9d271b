//! Criterion: one full LoRA+ training step of MiniLM (forward, backward, clip, LoRA+ AdamW
//! step, zero grad), the step `benches/run.sh` sets beside transformers + PEFT. Batch 8 x 32
//! tokens by default; `LORAPLUS_BENCH_LARGE=1` adds 32 x 128 (seconds per step on 2 cores).
//!
//! ```text
//! cargo bench -p loraplus --bench train_step
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loraplus::models::{default_model_dir, Head, LoadOptions, ModelConfig, TaskModel};
use loraplus::optim::{LoraPlusAdamW, LoraPlusConfig, Schedule};
use loraplus::tch::{self, Device, Kind, Tensor};

/// The setting of `crates/train/examples/train_step_bench.rs`.
const RANK: usize = 8;
const ALPHA: f64 = 16.0;
const LR: f64 = 2e-4;
const RATIO: f64 = 16.0;
const MAX_GRAD_NORM: f64 = 1.0;

fn bench(c: &mut Criterion) {
    tch::set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()) as i32);
    let dir = default_model_dir();
    if !dir.join("config.json").exists() {
        eprintln!(
            "train_step: no model at {} (run `make setup` or set LORAPLUS_MODEL_DIR); skipped",
            dir.display()
        );
        return;
    }
    // The models crate's recommended BERT config: query/value, classifier and pooler saved.
    let head = Head::SequenceClassification { num_labels: 2 };
    let mut lc = ModelConfig::from_file(dir.join("config.json"))
        .expect("reading config.json")
        .recommended_lora_config(head, RANK, ALPHA);
    lc.lora_dropout = 0.0;
    let opts = LoadOptions {
        task: head,
        lora: Some(lc),
        seed: 0,
        ..Default::default()
    };
    let (model, lora) = TaskModel::load(&dir, &opts).expect("loading the model");
    let cfg = LoraPlusConfig {
        lr: LR,
        ratio: RATIO,
        ..Default::default()
    };
    let mut opt =
        LoraPlusAdamW::new(lora.trainable_params(), &cfg, Schedule::Constant).expect("optimizer");

    let mut cases = vec![(8i64, 32i64)];
    if std::env::var_os("LORAPLUS_BENCH_LARGE").is_some() {
        cases.push((32, 128));
    }
    let mut g = c.benchmark_group("train_step_minilm");
    g.sample_size(10);
    for (batch, seq) in cases {
        tch::manual_seed(0);
        let cpu = (Kind::Int64, Device::Cpu);
        let ids = Tensor::randint_low(1000, 20000, [batch, seq], cpu);
        let mask = Tensor::ones([batch, seq], cpu);
        let labels = Tensor::randint(2, [batch], cpu);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(
            BenchmarkId::from_parameter(format!("{batch}x{seq}")),
            |bn| {
                bn.iter(|| {
                    let out = model
                        .forward_backward(&ids, &mask, None, &labels, true, 1.0)
                        .expect("step");
                    let _norm = opt.clip_grad_norm(MAX_GRAD_NORM).expect("clip");
                    opt.step().expect("step");
                    opt.zero_grad().expect("zero_grad");
                    out.loss
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
