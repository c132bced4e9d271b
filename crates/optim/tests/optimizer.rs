//! The optimizer's contract with the model and the trainer: parameters stay the model's
//! tensors, gradients accumulate into flat buffers that zeroing never reallocates, micro-batch
//! accumulation averages, groups and learning rates are as configured, low-precision
//! parameters keep f32 state, and bad input is refused with the value named.

mod common;

use std::collections::HashMap;

use common::*;
use loraplus_core::{LoraBuilder, ParamRole, TrainableParam};
use loraplus_optim::{LoraPlusAdamW, LoraPlusConfig, ParamGroup, Schedule, UpdateKernel, Warmup};
use loraplus_testing::cuda_present;
use tch::{Device, Kind, Tensor};

fn every_group() -> ModelSpec {
    ModelSpec {
        targets: vec!["emb", "l1", "l2"],
        bias_all: true,
        head: true,
    }
}

fn toy(spec: &ModelSpec, seed: i64) -> (Toy, loraplus_core::LoraModel, HashMap<String, Tensor>) {
    tch::manual_seed(seed);
    let base: HashMap<String, Tensor> = Toy::random_base().into_iter().collect();
    let (t, l) = Toy::build(&base, spec);
    (t, l, base)
}

fn batch(seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let b = random_batches(1);
    (b[0].1.shallow_clone(), b[1].1.shallow_clone())
}

/// The refusal's variant (`loraplus_optim::Error`, found under any context) and message:
/// `"BadConfig: lr = ..."`; `"untyped: ..."` for an error of another type.
fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    let e = r.unwrap_err();
    let kind = match e.downcast_ref::<loraplus_optim::Error>() {
        Some(k) => format!("{k:?}").split('(').next().unwrap_or("").to_string(),
        None => "untyped".into(),
    };
    format!("{kind}: {e:#}")
}

/// Does `t`'s memory lie inside `buf`'s?
fn inside(t: &Tensor, buf: &Tensor) -> bool {
    let (p, b) = (t.data_ptr() as usize, buf.data_ptr() as usize);
    let bytes = |x: &Tensor| x.numel() * x.kind().elt_size_in_bytes();
    p >= b && p + bytes(t) <= b + bytes(buf)
}

#[test]
fn parameters_stay_the_models_tensors() {
    let (toy, lora, base) = toy(&every_group(), 1);
    let (ids, y) = batch(2);
    let mut opt = LoraPlusAdamW::new(
        lora.trainable_params(),
        &LoraPlusConfig::default(),
        Schedule::Constant,
    )
    .unwrap();
    let flat = opt.param_buffers()[0].shallow_clone();
    let before = toy.forward(&ids).detach().copy();
    let a_before = toy.l1.adapter.as_ref().unwrap().a.detach().copy();
    for _ in 0..3 {
        toy.loss(&ids, &y).backward();
        opt.step().unwrap();
        opt.zero_grad().unwrap();
    }
    // The layer's own handle is the registry's tensor, a view of the flat buffer, and moved.
    let a = &toy.l1.adapter.as_ref().unwrap().a;
    assert!(
        inside(a, &flat),
        "l1.lora_A is not a view of the flat buffer"
    );
    assert!(a.requires_grad(), "l1.lora_A lost requires_grad");
    assert!(
        max_abs_diff(&a.detach(), &a_before) > 1e-4,
        "the layer does not see the update"
    );
    for p in lora.trainable_params() {
        assert!(
            inside(&p.tensor, &flat),
            "{} is not a view of the flat buffer",
            p.name
        );
    }
    // The forward pass computes with the updated tensors: a fresh model given the same values
    // gives the same output.
    let after = toy.forward(&ids).detach();
    assert!(max_abs_diff(&after, &before) > 1e-4);
    let (fresh, _fresh_lora) = copy_of(&base, &every_group(), &lora);
    assert_eq!(max_abs_diff(&fresh.forward(&ids), &after), 0.0);
}

/// A second model with the same base weights and the trainable values of `lora` (the global
/// RNG is shared with tests running in parallel, so seeds cannot make two models equal).
fn copy_of(
    base: &HashMap<String, Tensor>,
    spec: &ModelSpec,
    lora: &loraplus_core::LoraModel,
) -> (Toy, loraplus_core::LoraModel) {
    let (t, l) = Toy::build(base, spec);
    set_trainable(&l, &trainable_values(lora).into_iter().collect());
    (t, l)
}

#[test]
fn gradients_accumulate_in_place_and_zeroing_does_not_reallocate() {
    let (toy, lora, _) = toy(&every_group(), 3);
    let (ids, y) = batch(4);
    let mut opt = LoraPlusAdamW::new(
        lora.trainable_params(),
        &LoraPlusConfig::default(),
        Schedule::Constant,
    )
    .unwrap();
    let buf = opt.grad_buffers()[0].shallow_clone();
    let buf_ptr = buf.data_ptr();
    toy.loss(&ids, &y).backward();
    let first: Vec<Tensor> = lora
        .trainable_params()
        .iter()
        .map(|p| p.tensor.grad().copy())
        .collect();
    opt.step().unwrap(); // adopts the gradients autograd allocated
    let ptrs: Vec<usize> = lora
        .trainable_params()
        .iter()
        .map(|p| p.tensor.grad().data_ptr() as usize)
        .collect();
    for p in lora.trainable_params() {
        assert!(
            inside(&p.tensor.grad(), &buf),
            "{}.grad is not a view of the flat buffer",
            p.name
        );
    }
    for (p, g) in lora.trainable_params().iter().zip(&first) {
        assert_eq!(
            max_abs_diff(&p.tensor.grad(), g),
            0.0,
            "{}: adoption changed the gradient",
            p.name
        );
    }
    for round in 0..3 {
        opt.zero_grad().unwrap();
        assert_eq!(
            buf.abs().sum(Kind::Float).double_value(&[]),
            0.0,
            "zero_grad left values"
        );
        toy.loss(&ids, &y).backward();
        toy.loss(&ids, &y).backward(); // a second backward adds into the same memory
        assert!(buf.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        opt.step().unwrap();
        assert_eq!(
            opt.grad_buffers()[0].data_ptr(),
            buf_ptr,
            "round {round}: the flat buffer moved"
        );
        for (p, ptr) in lora.trainable_params().iter().zip(&ptrs) {
            assert_eq!(
                p.tensor.grad().data_ptr() as usize,
                *ptr,
                "round {round}: {}.grad was reallocated",
                p.name
            );
        }
    }
}

#[test]
fn micro_batches_average_to_the_full_batch() {
    let spec = every_group();
    let (toy_full, lora_full, base) = toy(&spec, 5);
    let (toy_acc, lora_acc) = copy_of(&base, &spec, &lora_full);
    let (ids, y) = batch(6);
    let cfg = LoraPlusConfig {
        lr: 1e-2,
        lr_embedding: 1e-3,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut full =
        LoraPlusAdamW::new(lora_full.trainable_params(), &cfg, Schedule::Constant).unwrap();
    let mut acc =
        LoraPlusAdamW::new(lora_acc.trainable_params(), &cfg, Schedule::Constant).unwrap();
    for _ in 0..3 {
        full.backward(&toy_full.loss(&ids, &y)).unwrap();
        full.sync_grads().unwrap();
        let half = BATCH / 2;
        for k in 0..2 {
            let (i, t) = (ids.narrow(0, k * half, half), y.narrow(0, k * half, half));
            acc.backward(&toy_acc.loss(&i, &t)).unwrap();
        }
        acc.sync_grads().unwrap();
        for (a, b) in lora_acc
            .trainable_params()
            .iter()
            .zip(lora_full.trainable_params())
        {
            let diff = max_abs_diff(&a.tensor.grad(), &b.tensor.grad());
            assert!(
                diff < 1e-6,
                "{}: accumulated gradient off by {diff:e}",
                a.name
            );
        }
        full.step().unwrap();
        acc.step().unwrap();
        full.zero_grad().unwrap();
        acc.zero_grad().unwrap();
    }
    for (a, b) in lora_acc
        .trainable_params()
        .iter()
        .zip(lora_full.trainable_params())
    {
        let diff = max_abs_diff(&a.tensor.detach(), &b.tensor.detach());
        assert!(
            diff < 1e-5,
            "{}: accumulated training off by {diff:e}",
            a.name
        );
    }
}

#[test]
fn summary_lists_every_group_and_the_ratio_holds_under_the_schedule() {
    let (_, lora, _) = toy(&every_group(), 7);
    let cfg = LoraPlusConfig {
        lr: 2e-4,
        ratio: 16.0,
        lr_embedding: 1e-6,
        weight_decay: 0.01,
        ..Default::default()
    };
    let schedule = Schedule::linear(Warmup::Steps(4), 20);
    let opt = LoraPlusAdamW::new(lora.trainable_params(), &cfg, schedule).unwrap();
    let s = opt.summary();
    let names = |g: ParamGroup| -> Vec<String> {
        s.group(g)
            .map(|x| x.tensors.iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        names(ParamGroup::A),
        ["l1.lora_A.weight", "l2.lora_A.weight", "head.weight"]
    );
    assert_eq!(
        names(ParamGroup::Embedding),
        ["emb.lora_embedding_A", "emb.lora_embedding_B"]
    );
    assert_eq!(
        names(ParamGroup::B),
        ["l1.lora_B.weight", "l2.lora_B.weight"]
    );
    assert_eq!(
        names(ParamGroup::BNoDecay),
        ["l1.bias", "l2.bias", "ln.bias", "head.bias"]
    );
    let total: i64 = lora
        .trainable_params()
        .iter()
        .map(|p| p.tensor.numel() as i64)
        .sum();
    assert_eq!(s.numel(), total);
    let b = s.group(ParamGroup::B).unwrap();
    assert_eq!((b.base_lr, b.weight_decay), (2e-4 * 16.0, 0.01));
    assert_eq!(s.group(ParamGroup::BNoDecay).unwrap().weight_decay, 0.0);
    assert_eq!(s.group(ParamGroup::Embedding).unwrap().base_lr, 1e-6);
    assert_eq!(b.numel, (HIDDEN + DIM) * R as i64);
    // Warmup starts at 0; every group scales by the same factor.
    assert_eq!(opt.lr_of(ParamGroup::A), Some(0.0));
    assert_eq!(opt.lr_of(ParamGroup::Head), None);
    let text = s.to_string();
    assert!(
        text.contains("groupB_no_decay") && text.contains("embedding"),
        "{text}"
    );

    let mut opt = opt;
    for step in 1..=20u64 {
        opt.step().unwrap(); // no gradients: updates with zeros, the schedule still advances
        let (a, b) = (
            opt.lr_of(ParamGroup::A).unwrap(),
            opt.lr_of(ParamGroup::B).unwrap(),
        );
        assert_eq!(a, 2e-4 * schedule.factor(step));
        if a > 0.0 {
            assert!((b / a - 16.0).abs() < 1e-12, "step {step}: ratio {}", b / a);
        }
    }
}

#[test]
fn head_lr_makes_two_head_groups() {
    let (_, lora, _) = toy(&every_group(), 8);
    let cfg = LoraPlusConfig {
        head_lr: Some(5e-5),
        weight_decay: 0.1,
        ..Default::default()
    };
    let opt = LoraPlusAdamW::new(lora.trainable_params(), &cfg, Schedule::Constant).unwrap();
    let s = opt.summary();
    let head = s.group(ParamGroup::Head).unwrap();
    assert_eq!(head.tensors[0].name, "head.weight");
    assert_eq!((head.base_lr, head.weight_decay), (5e-5, 0.1));
    let head_nd = s.group(ParamGroup::HeadNoDecay).unwrap();
    assert_eq!(head_nd.tensors[0].name, "head.bias");
    assert_eq!((head_nd.base_lr, head_nd.weight_decay), (5e-5, 0.0));
    assert!(s
        .group(ParamGroup::A)
        .unwrap()
        .tensors
        .iter()
        .all(|t| t.name != "head.weight"));
}

/// bf16 adapters: moments and master weights in f32, parameters the rounding of the master,
/// and the tensor-op path agrees with the host pass (same state, both kernels).
#[test]
fn bf16_parameters_keep_f32_state() {
    tch::manual_seed(9);
    let mut cfg = every_group().lora_config();
    cfg.bias = loraplus_core::BiasMode::None;
    cfg.modules_to_save = None;
    let f = (Kind::Float, Device::Cpu);
    let w = Tensor::randn([HIDDEN, DIM], f).to_kind(Kind::BFloat16);
    let x = Tensor::randn([4, DIM], f).to_kind(Kind::BFloat16);
    let mut init: Option<HashMap<String, Tensor>> = None;
    let mut results = Vec::new();
    for kernel in [UpdateKernel::Auto, UpdateKernel::TensorOps] {
        let mut b = LoraBuilder::new(cfg.clone())
            .unwrap()
            .with_adapter_kind(Kind::BFloat16)
            .unwrap();
        let l1 = b
            .linear("l1", w.copy(), None, loraplus_core::WeightLayout::OutIn)
            .unwrap();
        let lora = b.finish().unwrap();
        match &init {
            None => init = Some(trainable_values(&lora).into_iter().collect()),
            Some(v) => set_trainable(&lora, v),
        }
        let opt_cfg = LoraPlusConfig {
            lr: 1e-2,
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt =
            LoraPlusAdamW::new(lora.trainable_params(), &opt_cfg, Schedule::Constant).unwrap();
        opt.set_kernel(kernel);
        for _ in 0..5 {
            l1.forward_t(&x, true)
                .to_kind(Kind::Float)
                .pow_tensor_scalar(2)
                .mean(Kind::Float)
                .backward();
            opt.step().unwrap();
            opt.zero_grad().unwrap();
        }
        let state = opt.state_dict().unwrap();
        for (k, t) in &state.tensors {
            assert_eq!(t.kind(), Kind::Float, "{k} is not f32");
        }
        let master = &state
            .tensors
            .iter()
            .find(|(k, _)| k == "groupA.bf16.master")
            .unwrap()
            .1;
        let a = &lora.trainable_params()[0];
        assert_eq!(a.tensor.kind(), Kind::BFloat16);
        assert!(
            a.tensor
                .detach()
                .reshape([-1])
                .equal(&master.to_kind(Kind::BFloat16)),
            "the bf16 parameter is not the rounding of its master copy"
        );
        results.push(master.copy());
    }
    let diff = max_abs_diff(&results[0], &results[1]);
    assert!(
        diff < 1e-6,
        "host pass and tensor ops differ by {diff:e} on bf16 parameters"
    );
}

/// Every device this machine has trains the same: the optimizer state lives on the
/// parameters' device and the result matches the CPU's. On the CPU the fused host pass (the
/// default kernel there) is checked against the tensor-op kernel that CUDA runs; with a GPU,
/// CUDA is checked against both. Without one the CUDA run is skipped, and says so, unless
/// `LORAPLUS_REQUIRE_CUDA=1` (set by `gpu-check/run.sh`) makes that a failure.
#[test]
fn trains_alike_on_every_device() {
    let mut runs = vec![
        (Device::Cpu, UpdateKernel::Auto),
        (Device::Cpu, UpdateKernel::TensorOps),
    ];
    if cuda_present() {
        runs.push((Device::Cuda(0), UpdateKernel::Auto));
    }
    let spec = every_group();
    let (_, lora0, base) = toy(&spec, 12);
    let init: HashMap<String, Tensor> = trainable_values(&lora0).into_iter().collect();
    let (ids, y) = batch(13);
    let cfg = LoraPlusConfig {
        lr: 1e-2,
        lr_embedding: 1e-3,
        weight_decay: 0.01,
        amsgrad: true,
        ..Default::default()
    };
    let mut results: Vec<HashMap<String, Tensor>> = Vec::new();
    for &(device, kernel) in &runs {
        let (toy, lora) = Toy::build_on(&base, &spec, device);
        set_trainable(&lora, &init);
        let mut opt = LoraPlusAdamW::new(
            lora.trainable_params(),
            &cfg,
            Schedule::cosine(Warmup::Steps(1), 6),
        )
        .unwrap();
        opt.set_kernel(kernel);
        assert_eq!(opt.device(), device);
        let (ids, y) = (ids.to_device(device), y.to_device(device));
        for _ in 0..6 {
            toy.loss(&ids, &y).backward();
            let norm = opt.clip_grad_norm(1.0).unwrap();
            assert_eq!(norm.device(), device);
            opt.step().unwrap();
            opt.zero_grad().unwrap();
        }
        for b in opt.grad_buffers().into_iter().chain(opt.param_buffers()) {
            assert_eq!(b.device(), device);
        }
        let state = opt.state_dict().unwrap();
        assert_eq!(state.tensors.len(), 3 * opt.summary().groups.len());
        results.push(
            trainable_values(&lora)
                .into_iter()
                .map(|(k, v)| (k, v.to_device(Device::Cpu)))
                .collect(),
        );
    }
    let moved = results[0]
        .iter()
        .map(|(k, v)| max_abs_diff(v, &init[k]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "training moved nothing ({moved:e})");
    for (run, r) in runs.iter().zip(&results).skip(1) {
        assert_eq!(r.len(), results[0].len());
        for (k, v) in r {
            let diff = max_abs_diff(v, &results[0][k]);
            assert!(
                diff < 1e-5,
                "{run:?}: {k} differs from the CPU's host pass by {diff:e}"
            );
        }
    }
}

#[test]
fn bad_input_is_refused_with_the_value_named() {
    let (_, lora, _) = toy(&every_group(), 10);
    let params = lora.trainable_params();
    let d = LoraPlusConfig::default();
    let new = |cfg: LoraPlusConfig| LoraPlusAdamW::new(params, &cfg, Schedule::Constant);
    assert!(err_of(new(LoraPlusConfig { lr: -1e-3, ..d })).starts_with("BadConfig: lr = -0.001"));
    assert!(err_of(new(LoraPlusConfig { lr: f64::NAN, ..d })).starts_with("BadConfig: lr = NaN"));
    assert!(err_of(new(LoraPlusConfig { ratio: 0.0, ..d })).starts_with("BadConfig: ratio = 0"));
    assert!(err_of(new(LoraPlusConfig { ratio: -2.0, ..d })).starts_with("BadConfig: ratio = -2"));
    assert!(err_of(new(LoraPlusConfig {
        betas: (0.9, 1.0),
        ..d
    }))
    .starts_with("BadConfig: betas.1 (beta2) = 1"));
    assert!(err_of(new(LoraPlusConfig {
        betas: (-0.1, 0.9),
        ..d
    }))
    .starts_with("BadConfig: betas.0 (beta1) = -0.1"));
    let e = err_of(LoraPlusAdamW::new(&[], &d, Schedule::Constant));
    assert!(e.starts_with("BadParams") && e.contains("empty"), "{e}");
    let e = err_of(LoraPlusAdamW::new(
        params,
        &d,
        Schedule::linear(Warmup::Steps(2), 0),
    ));
    assert!(
        e.starts_with("BadConfig") && e.contains("total_steps"),
        "{e}"
    );

    let frozen = TrainableParam {
        name: "frozen.weight".into(),
        tensor: Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        role: ParamRole::Other,
    };
    let e = err_of(LoraPlusAdamW::new(&[frozen], &d, Schedule::Constant));
    assert!(
        e.starts_with("BadParams: frozen.weight") && e.contains("require grad"),
        "{e}"
    );
    let ints = TrainableParam {
        name: "ids".into(),
        tensor: Tensor::zeros([2], (Kind::Int64, Device::Cpu)),
        role: ParamRole::Other,
    };
    let e = err_of(LoraPlusAdamW::new(&[ints], &d, Schedule::Constant));
    assert!(
        e.starts_with("BadParams: ids") && e.contains("Int64"),
        "{e}"
    );
    let t = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let twice = [
        TrainableParam {
            name: "x".into(),
            tensor: t.shallow_clone(),
            role: ParamRole::Bias,
        },
        TrainableParam {
            name: "y".into(),
            tensor: t,
            role: ParamRole::Bias,
        },
    ];
    let e = err_of(LoraPlusAdamW::new(&twice, &d, Schedule::Constant));
    assert!(e.starts_with("BadParams") && e.contains("twice"), "{e}");

    let mut opt = LoraPlusAdamW::new(params, &d, Schedule::Constant).unwrap();
    for bad in [f64::NAN, -1.0] {
        let e = err_of(opt.clip_grad_norm(bad));
        assert!(e.starts_with("BadConfig: max_norm"), "{e}");
    }
}

/// A bf16 LoRA layer `l1` and its registry.
fn bf16_layer(w: &Tensor) -> (loraplus_core::LoraLinear, loraplus_core::LoraModel) {
    let cfg = ModelSpec {
        targets: vec!["l1"],
        bias_all: false,
        head: false,
    }
    .lora_config();
    let mut b = LoraBuilder::new(cfg)
        .unwrap()
        .with_adapter_kind(Kind::BFloat16)
        .unwrap();
    let l1 = b
        .linear("l1", w.copy(), None, loraplus_core::WeightLayout::OutIn)
        .unwrap();
    (l1, b.finish().unwrap())
}

fn master_of(opt: &LoraPlusAdamW, key: &str) -> Tensor {
    let state = opt.state_dict().unwrap();
    state.tensors.into_iter().find(|(k, _)| k == key).unwrap().1
}

/// Weights written into bf16 parameters after the optimizer exists (a weight load) reach the
/// f32 master copy; writing back the values the parameters already have (loading the adapter
/// of a resumed run) keeps the master's extra precision.
#[test]
fn bf16_weights_written_after_construction_reach_the_master() {
    let f = (Kind::Float, Device::Cpu);
    let w = Tensor::randn([HIDDEN, DIM], f).to_kind(Kind::BFloat16);
    let x = Tensor::randn([4, DIM], f).to_kind(Kind::BFloat16);
    let cfg = LoraPlusConfig {
        lr: 1e-3,
        ..Default::default()
    };
    let (l1, lora) = bf16_layer(&w);
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &cfg, Schedule::Constant).unwrap();
    for _ in 0..3 {
        l1.forward_t(&x, true)
            .to_kind(Kind::Float)
            .pow_tensor_scalar(2)
            .mean(Kind::Float)
            .backward();
        opt.step().unwrap();
        opt.zero_grad().unwrap();
    }
    let saved = opt.state_dict().unwrap();
    let values: HashMap<String, Tensor> = trainable_values(&lora).into_iter().collect();
    let master = master_of(&opt, "groupA.bf16.master");
    assert!(
        !master.equal(&master.to_kind(Kind::BFloat16).to_kind(Kind::Float)),
        "the master copy holds no more than bf16 precision: the test proves nothing"
    );

    // Resume order: state first, then the adapter weights.
    let (_l, lora2) = bf16_layer(&w);
    let mut opt2 = LoraPlusAdamW::new(lora2.trainable_params(), &cfg, Schedule::Constant).unwrap();
    opt2.load_state_dict(&saved).unwrap();
    set_trainable(&lora2, &values);
    opt2.zero_grad().unwrap(); // runs the check
    assert!(
        master_of(&opt2, "groupA.bf16.master").equal(&master),
        "the master lost precision"
    );

    // New weights, then a step at lr 0: the parameters keep the new weights.
    let zero_lr = LoraPlusConfig { lr: 0.0, ..cfg };
    let (_l, lora3) = bf16_layer(&w);
    let mut opt3 =
        LoraPlusAdamW::new(lora3.trainable_params(), &zero_lr, Schedule::Constant).unwrap();
    set_trainable(&lora3, &values);
    opt3.step().unwrap();
    for p in lora3.trainable_params() {
        assert!(
            p.tensor.detach().equal(&values[&p.name]),
            "{}: a weight written after construction was reverted by the step",
            p.name
        );
    }
}

/// The gradient hook runs once per step on each flat gradient buffer, before clipping sees the
/// gradients (where a data-parallel all-reduce goes).
#[test]
fn grad_hook_runs_once_per_step_before_clipping() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let spec = every_group();
    let (toy, lora, base) = toy(&spec, 14);
    let (toy2, lora2) = copy_of(&base, &spec, &lora);
    let (ids, y) = batch(15);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let mut opt = LoraPlusAdamW::new(
        lora.trainable_params(),
        &LoraPlusConfig::default(),
        Schedule::Constant,
    )
    .unwrap();
    // "Two ranks with the same gradients": the all-reduced sum is twice the local gradient.
    opt.set_grad_hook(Box::new(move |g: &Tensor| {
        seen.fetch_add(1, Ordering::SeqCst);
        let _ = g.shallow_clone().f_mul_scalar_(2.0)?;
        Ok(())
    }));
    let mut plain = LoraPlusAdamW::new(
        lora2.trainable_params(),
        &LoraPlusConfig::default(),
        Schedule::Constant,
    )
    .unwrap();
    for step in 1..=2 {
        toy.loss(&ids, &y).backward();
        toy2.loss(&ids, &y).backward();
        let n = opt.clip_grad_norm(1e9).unwrap().double_value(&[]);
        let n2 = plain.clip_grad_norm(1e9).unwrap().double_value(&[]);
        assert!(
            (n - 2.0 * n2).abs() <= 1e-6 * n,
            "step {step}: norm {n} is not twice {n2}"
        );
        opt.step().unwrap();
        plain.step().unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            step,
            "the hook ran more than once per step"
        );
        opt.zero_grad().unwrap();
        plain.zero_grad().unwrap();
    }
}
