//! `allreduce_hook`: 2 ranks x micro-batch b train a toy LoRA pair exactly as 1 rank x 2b does
//! (LoRA+ AdamW, clipping, 20 steps), because the hook averages gradients before clipping.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_all_ok, run_ranks, SCENARIO};
use loraplus_core::ParamRole;
use loraplus_dist::{allreduce_hook, Backend, DistEnv, ProcessGroup, ProcessGroupOptions};
use loraplus_optim::{LoraPlusAdamW, LoraPlusConfig, Schedule};
use tch::{Device, Kind, Tensor};

const STEPS: usize = 20;
/// Rows per rank (b); the single process takes 2b.
const MICRO_BATCH: i64 = 4;
const IN_FEATURES: i64 = 6;
const OUT_FEATURES: i64 = 5;
const RANK_R: i64 = 3;
/// Clipping that bites on some steps, so that "averaged before clipping" is what is tested.
const MAX_NORM: f64 = 0.5;
const TOLERANCE: f64 = 1e-6;
const SEED: i64 = 7;
const LIMIT: Duration = Duration::from_secs(90);

/// Adapters and data, identical on every rank (seeded).
struct Toy {
    a: Tensor,
    b: Tensor,
    x: Tensor,
    y: Tensor,
}

fn toy() -> Toy {
    tch::manual_seed(SEED);
    let opts = (Kind::Float, Device::Cpu);
    let rows = 2 * MICRO_BATCH;
    Toy {
        a: (Tensor::randn([RANK_R, IN_FEATURES], opts) * 0.3).set_requires_grad(true),
        b: (Tensor::randn([OUT_FEATURES, RANK_R], opts) * 0.3).set_requires_grad(true),
        x: Tensor::randn([rows, IN_FEATURES], opts),
        y: Tensor::randn([rows, OUT_FEATURES], opts),
    }
}

/// Trains on rows `first..first + rows` of the toy batch, with `hook` installed if given, and
/// returns the final (A, B).
fn train(first: i64, rows: i64, pg: Option<Arc<ProcessGroup>>) -> (Tensor, Tensor) {
    let t = toy();
    let cfg = LoraPlusConfig {
        lr: 1e-2,
        ratio: 4.0,
        ..LoraPlusConfig::default()
    };
    let mut opt = LoraPlusAdamW::from_tensors(
        [
            ("lora_A".to_string(), t.a.shallow_clone(), ParamRole::LoraA),
            ("lora_B".to_string(), t.b.shallow_clone(), ParamRole::LoraB),
        ],
        &cfg,
        Schedule::Constant,
    )
    .expect("optimizer");
    if let Some(pg) = pg {
        opt.set_grad_hook(allreduce_hook(pg));
    }
    let x = t.x.narrow(0, first, rows);
    let y = t.y.narrow(0, first, rows);
    for _ in 0..STEPS {
        let pred = x.matmul(&t.a.tr()).matmul(&t.b.tr());
        let loss = (pred - &y).square().mean(Kind::Float);
        loss.backward();
        let _ = opt.clip_grad_norm(MAX_NORM).expect("clip");
        opt.step().expect("step");
        opt.zero_grad().expect("zero_grad");
    }
    (t.a.detach().copy(), t.b.detach().copy())
}

#[test]
fn worker() {
    if std::env::var(SCENARIO).is_err() {
        return;
    }
    tch::set_num_threads(1);
    let env = DistEnv::from_env().expect("launcher variables");
    let pg = ProcessGroup::new(&ProcessGroupOptions::from_env(&env, Backend::Gloo))
        .expect("process group");
    let pg = Arc::new(pg);
    let (a, b) = train(env.rank as i64 * MICRO_BATCH, MICRO_BATCH, Some(pg.clone()));
    if env.rank == 0 {
        let out = std::env::var("TEST_OUT").expect("TEST_OUT");
        Tensor::save_multi(&[("a", &a), ("b", &b)], out).expect("saving the adapters");
    }
    pg.barrier().expect("final barrier");
}

#[test]
fn two_ranks_of_b_train_as_one_rank_of_2b() {
    let dir = std::env::temp_dir().join(format!("loraplus-dist-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("adapters.pt");
    let runs = run_ranks("hook", 2, &[("TEST_OUT", out.display().to_string())], LIMIT);
    assert_all_ok("hook", &runs);
    let saved = Tensor::load_multi(&out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    tch::set_num_threads(1);
    let (a, b) = train(0, 2 * MICRO_BATCH, None);
    let (init_a, init_b) = {
        let t = toy();
        (t.a.detach(), t.b.detach())
    };
    for (name, want, init) in [("a", &a, &init_a), ("b", &b, &init_b)] {
        let got = &saved
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing from rank 0's file"))
            .1;
        let diff = (got - want).abs().max().double_value(&[]);
        let moved = (want - init).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "{name}: training did not move it ({moved})");
        assert!(
            diff <= TOLERANCE,
            "{name}: 2 ranks x {MICRO_BATCH} differ from 1 rank x {} by {diff:e}",
            2 * MICRO_BATCH
        );
        eprintln!("{name}: max |2 ranks - 1 rank| = {diff:e} (moved {moved:.3e})");
    }
}
