//! Criterion benchmark of `LoraPlusAdamW::step` on the CPU: the MiniLM q,v r=8 set and the
//! Llama-7B-shaped r=16 set (about 40M elements), with the fused host pass and with tensor
//! ops. The comparison with PyTorch is `side_by_side.sh`.
//!
//! `cargo bench -p loraplus-optim --bench step`

use criterion::{criterion_group, criterion_main, Criterion};
use loraplus_optim::{shapes, LoraPlusAdamW, LoraPlusConfig, Schedule, UpdateKernel};
use tch::Device;

fn optimizer(set: &str, kernel: UpdateKernel) -> LoraPlusAdamW {
    tch::manual_seed(0);
    let params = shapes::random_params(&shapes::by_name(set).expect("known set"), Device::Cpu);
    let cfg = LoraPlusConfig {
        lr: 1e-4,
        ratio: 16.0,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = LoraPlusAdamW::from_tensors(params, &cfg, Schedule::Constant).expect("optimizer");
    opt.set_kernel(kernel);
    opt.step().expect("first step"); // adopts the gradients
    opt
}

fn bench_step(c: &mut Criterion) {
    let threads: i32 = std::env::var("LORAPLUS_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let mut g = c.benchmark_group("lora_plus_adamw_step");
    for (kernel, label) in [
        (UpdateKernel::Auto, "host"),
        (UpdateKernel::TensorOps, "ops"),
    ] {
        let mut opt = optimizer("minilm", kernel);
        g.bench_function(format!("minilm_qv_r8/{label}"), |b| {
            b.iter(|| opt.step().expect("step"))
        });
    }
    g.sample_size(10);
    let mut opt = optimizer("llama7b", UpdateKernel::Auto);
    g.bench_function("llama7b_r16/host", |b| b.iter(|| opt.step().expect("step")));
    g.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
