//! Criterion: one `LoraLinear` (MiniLM's 384x384 query projection, r = 8) forward, and forward
//! plus backward, against the plain linear layer it wraps, at the two token counts of
//! `benches/run.sh` (8x32 and 32x128 tokens).
//!
//! ```text
//! cargo bench -p loraplus --bench lora_linear
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loraplus::core::{LoraBuilder, LoraConfig, LoraLinear, WeightLayout};
use loraplus::tch::{self, Device, Kind, Tensor};

/// MiniLM-L6-H384's hidden size and the LoRA+ paper's GLUE rank.
const HIDDEN: i64 = 384;
const RANK: usize = 8;
const ALPHA: f64 = 16.0;
/// (batch, seq) cases, as in `benches/run.sh`.
const CASES: [(i64, i64); 2] = [(8, 32), (32, 128)];

fn layers() -> (LoraLinear, LoraLinear) {
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let w = Tensor::randn([HIDDEN, HIDDEN], opts) * 0.02;
    let b = Tensor::zeros([HIDDEN], opts);
    let mut cfg = LoraConfig::new(RANK, ALPHA, &["query"]);
    cfg.lora_dropout = 0.0;
    let mut builder = LoraBuilder::new(cfg).expect("LoRA config");
    let name = "encoder.layer.0.attention.self.query";
    let lora = builder
        .linear(name, w.copy(), Some(b.copy()), WeightLayout::OutIn)
        .expect("LoRA layer");
    // B = 0 at initialisation leaves A without gradient; a non-zero B is the general case.
    if let Some(ad) = &lora.adapter {
        tch::no_grad(|| {
            let _ = ad.b.shallow_clone().normal_(0.0, 0.02);
        });
    }
    let plain = LoraLinear::plain(name, w, Some(b), WeightLayout::OutIn);
    (lora, plain)
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()) as i32);
    let (lora, plain) = layers();
    let mut g = c.benchmark_group("lora_linear");
    g.sample_size(20);
    for (batch, seq) in CASES {
        let case = format!("{batch}x{seq}");
        g.throughput(Throughput::Elements((batch * seq) as u64));
        let x = Tensor::randn([batch, seq, HIDDEN], (Kind::Float, Device::Cpu));
        g.bench_with_input(BenchmarkId::new("plain_forward", &case), &x, |bn, x| {
            bn.iter(|| tch::no_grad(|| plain.forward(x)))
        });
        g.bench_with_input(BenchmarkId::new("lora_forward", &case), &x, |bn, x| {
            bn.iter(|| tch::no_grad(|| lora.forward(x)))
        });
        // Forward and backward of a layer inside a model: the input needs its gradient too.
        let xg = x.copy().set_requires_grad(true);
        g.bench_with_input(
            BenchmarkId::new("plain_forward_backward", &case),
            &xg,
            |bn, x| {
                bn.iter(|| {
                    plain.forward_t(x, true).sum(Kind::Float).backward();
                    let _ = x.grad().zero_();
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("lora_forward_backward", &case),
            &xg,
            |bn, x| {
                let ad = lora.adapter.as_ref().expect("adapter");
                bn.iter(|| {
                    lora.forward_t(x, true).sum(Kind::Float).backward();
                    let _ = x.grad().zero_();
                    let _ = ad.a.grad().zero_();
                    let _ = ad.b.grad().zero_();
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
