//! Merge/unmerge, injection into an `nn::Path` model, freezing and summaries, dtypes, and the
//! errors a user can meet: wrong shapes, missing keys, NaN weights, bad config files.

use std::path::Path;

use loraplus_core::{
    read_adapter_config, BiasMode, InitLoraWeights, LoraBuilder, LoraConfig, LoraLinear, LoraModel,
    ParamRole, WeightLayout, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use tch::{nn, Device, Kind, Tensor};

fn random_config(r: usize, alpha: f64, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        init_lora_weights: InitLoraWeights::Random,
        ..LoraConfig::new(r, alpha, targets)
    }
}

/// Two linear layers built through a VarStore, as a user's tch model would be.
fn mlp(cfg: LoraConfig) -> (nn::VarStore, LoraLinear, LoraLinear, LoraModel) {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut b = LoraBuilder::new(cfg).unwrap();
    let fc1 = b
        .linear_in(&(&root / "encoder" / "fc1"), 10, 20, true)
        .unwrap();
    let fc2 = b
        .linear_in(&(&root / "encoder" / "fc2"), 20, 6, true)
        .unwrap();
    let lora = b.finish().unwrap();
    (vs, fc1, fc2, lora)
}

fn run(fc1: &LoraLinear, fc2: &LoraLinear, x: &Tensor) -> Tensor {
    fc2.forward(&fc1.forward(x).relu())
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let num = (a - b).abs().max().double_value(&[]);
    let den = b.abs().max().double_value(&[]).max(1e-12);
    num / den
}

#[test]
fn injection_by_name_freezes_the_base_and_counts_like_peft() {
    let (vs, fc1, fc2, lora) = mlp(random_config(4, 8.0, &["fc1"]));
    assert_eq!(lora.adapted_modules(), vec!["encoder.fc1".to_string()]);
    assert!(fc1.adapter.is_some() && fc2.adapter.is_none());
    for (name, t) in vs.variables() {
        assert!(!t.requires_grad(), "{name} should be frozen");
    }
    let names: Vec<_> = lora
        .trainable_params()
        .iter()
        .map(|p| (p.name.as_str(), p.role))
        .collect();
    assert_eq!(
        names,
        vec![
            ("encoder.fc1.lora_A.weight", ParamRole::LoraA),
            ("encoder.fc1.lora_B.weight", ParamRole::LoraB)
        ]
    );
    let s = lora.summary();
    assert_eq!(s.trainable, 4 * 10 + 20 * 4);
    assert_eq!(s.all, 10 * 20 + 20 + 20 * 6 + 6 + s.trainable);
    assert!(s
        .to_string()
        .starts_with("trainable params: 120 || all params: 466 || trainable%: 25.75"));
}

#[test]
fn any_number_of_leading_dimensions() {
    let (_vs, fc1, _fc2, _lora) = mlp(random_config(2, 2.0, &["fc1"]));
    let x = Tensor::randn([2, 3, 4, 10], (Kind::Float, Device::Cpu));
    let y = fc1.forward(&x);
    assert_eq!(y.size(), vec![2, 3, 4, 20]);
    let flat = fc1.forward(&x.reshape([24, 10])).reshape([2, 3, 4, 20]);
    assert!(rel_diff(&y, &flat) < 1e-6);
}

#[test]
fn dropout_only_in_training_mode() {
    let mut cfg = random_config(4, 8.0, &["fc1"]);
    cfg.lora_dropout = 0.5;
    let (_vs, fc1, _fc2, _lora) = mlp(cfg);
    let x = Tensor::randn([8, 10], (Kind::Float, Device::Cpu));
    let eval1 = fc1.forward_t(&x, false);
    let eval2 = fc1.forward_t(&x, false);
    assert!(eval1.equal(&eval2));
    let train = fc1.forward_t(&x, true);
    assert!(
        rel_diff(&train, &eval1) > 1e-3,
        "dropout had no effect in training mode"
    );
    // The base path never sees dropout: with B = 0 training equals eval exactly.
    let mut cfg = LoraConfig::new(4, 8.0, &["fc1"]);
    cfg.lora_dropout = 0.5;
    let (_vs, fc1, _fc2, _lora) = mlp(cfg);
    assert!(fc1.forward_t(&x, true).equal(&fc1.forward_t(&x, false)));
}

#[test]
fn default_init_is_a_no_op_and_kaiming_bounded() {
    let (_vs, fc1, _fc2, lora) = mlp(LoraConfig::new(8, 16.0, &["fc1", "fc2"]));
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    assert!(fc1.forward(&x).equal(&fc1.base_forward(&x)));
    let a = &fc1.adapter.as_ref().unwrap().a;
    let bound = 1.0 / 10f64.sqrt();
    assert!(a.abs().max().double_value(&[]) <= bound);
    assert!(a.abs().max().double_value(&[]) > bound * 0.5);
    assert_eq!(lora.trainable_params().len(), 4);
    let gauss = LoraConfig {
        init_lora_weights: InitLoraWeights::Gaussian,
        ..LoraConfig::new(8, 16.0, &["fc1"])
    };
    let (_vs, fc1, _fc2, _lora) = mlp(gauss);
    let ad = fc1.adapter.as_ref().unwrap();
    assert_eq!(ad.b.abs().sum(Kind::Float).double_value(&[]), 0.0);
    let std = ad.a.std(true).double_value(&[]);
    assert!(
        (std - 1.0 / 8.0).abs() < 0.05,
        "gaussian init std {std}, expected 1/r"
    );
}

#[test]
fn merge_unmerge_round_trip() {
    let (_vs, fc1, fc2, lora) = mlp(random_config(4, 12.0, &["fc1", "fc2"]));
    let x = Tensor::randn([7, 10], (Kind::Float, Device::Cpu));
    let before = run(&fc1, &fc2, &x);
    let w_before = fc1.weight.copy();
    lora.merge(true).unwrap();
    assert!(fc1.is_merged() && fc2.is_merged());
    assert!(
        rel_diff(&fc1.weight, &w_before) > 1e-3,
        "merge did not change the base weight"
    );
    let merged = run(&fc1, &fc2, &x);
    assert!(rel_diff(&merged, &before) < 1e-5, "merged forward differs");
    lora.merge(true).unwrap(); // merging twice is a no-op
    assert!(rel_diff(&run(&fc1, &fc2, &x), &before) < 1e-5);
    lora.unmerge().unwrap();
    assert!(!fc1.is_merged());
    assert!(
        rel_diff(&fc1.weight, &w_before) < 1e-6,
        "unmerge did not restore the weight"
    );
    assert!(rel_diff(&run(&fc1, &fc2, &x), &before) < 1e-6);
}

#[test]
fn merge_with_fan_in_fan_out() {
    let mut cfg = random_config(3, 6.0, &["fc1"]);
    cfg.fan_in_fan_out = true;
    let (_vs, fc1, fc2, lora) = mlp(cfg);
    assert_eq!(fc1.layout, WeightLayout::InOut);
    assert_eq!(fc1.weight.size(), vec![10, 20]);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let before = run(&fc1, &fc2, &x);
    lora.merge(false).unwrap();
    assert!(rel_diff(&run(&fc1, &fc2, &x), &before) < 1e-5);
}

#[test]
fn safe_merge_refuses_non_finite_weights() {
    let (_vs, fc1, _fc2, lora) = mlp(random_config(4, 8.0, &["fc1"]));
    let w_before = fc1.weight.copy();
    tch::no_grad(|| {
        let b = &fc1.adapter.as_ref().unwrap().b;
        let _ = b.shallow_clone().fill_(f64::NAN);
    });
    let err = lora.merge(true).unwrap_err().to_string();
    assert!(
        err.contains("encoder.fc1") && err.contains("non-finite"),
        "{err}"
    );
    assert!(!fc1.is_merged());
    assert!(
        fc1.weight.equal(&w_before),
        "a refused merge must leave the weight alone"
    );

    // A refusal at the second layer unmerges the first again: all or nothing.
    let (_vs, fc1, fc2, lora) = mlp(random_config(4, 8.0, &["fc1", "fc2"]));
    let w1 = fc1.weight.copy();
    tch::no_grad(|| {
        let b = &fc2.adapter.as_ref().unwrap().b;
        let _ = b.shallow_clone().fill_(f64::INFINITY);
    });
    assert!(lora.merge(true).is_err());
    assert!(!fc1.is_merged() && !fc2.is_merged() && !lora.is_merged());
    let d = (&fc1.weight - &w1).abs().max().double_value(&[]);
    assert!(d < 1e-6, "fc1 left merged by {d}");
}

#[test]
fn bf16_base_with_f32_adapters() {
    tch::manual_seed(3);
    let w = Tensor::randn([12, 8], (Kind::Float, Device::Cpu));
    let mut b = LoraBuilder::new(random_config(2, 4.0, &["lin"])).unwrap();
    let lin16 = b
        .linear("lin", w.to_kind(Kind::BFloat16), None, WeightLayout::OutIn)
        .unwrap();
    let lora = b.finish().unwrap();
    let ad = lin16.adapter.as_ref().unwrap();
    assert_eq!(ad.a.kind(), Kind::Float);
    let x = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
    let y = lin16.forward(&x.to_kind(Kind::BFloat16));
    assert_eq!(y.kind(), Kind::BFloat16);
    let reference = x.linear::<&Tensor>(&w, None)
        + x.linear::<&Tensor>(&ad.a, None)
            .linear::<&Tensor>(&ad.b, None)
            * 2.0;
    let diff = (y.to_kind(Kind::Float) - &reference)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 0.1, "bf16 forward off by {diff}");
    y.to_kind(Kind::Float).sum(Kind::Float).backward();
    assert_eq!(ad.a.grad().kind(), Kind::Float);
    lora.merge(true).unwrap();
    assert_eq!(lin16.weight.kind(), Kind::BFloat16);
}

#[test]
fn bias_modes_pick_the_right_biases() {
    let mut cfg = LoraConfig::new(2, 2.0, &["fc1"]);
    cfg.bias = BiasMode::LoraOnly;
    let (_vs, _fc1, _fc2, lora) = mlp(cfg.clone());
    let biases: Vec<_> = lora
        .trainable_params()
        .iter()
        .filter(|p| p.role == ParamRole::Bias)
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(biases, vec!["encoder.fc1.bias"]);
    cfg.bias = BiasMode::All;
    let (_vs, _fc1, fc2, lora) = mlp(cfg.clone());
    assert_eq!(
        lora.trainable_params()
            .iter()
            .filter(|p| p.role == ParamRole::Bias)
            .count(),
        2
    );
    assert!(fc2.bias.as_ref().unwrap().requires_grad());
    cfg.bias = BiasMode::None;
    cfg.modules_to_save = Some(vec!["fc2".into()]);
    let (_vs, _fc1, _fc2, lora) = mlp(cfg);
    let heads: Vec<_> = lora
        .trainable_params()
        .iter()
        .filter(|p| p.role == ParamRole::Head)
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(heads, vec!["encoder.fc2.weight", "encoder.fc2.bias"]);
    // A parent module selects every layer under it, as in PEFT, and a layer inside it takes no
    // adapter: here that leaves nothing to adapt, which PEFT refuses too.
    let mut cfg = LoraConfig::new(2, 2.0, &["fc1"]);
    cfg.modules_to_save = Some(vec!["encoder".into()]);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut b = LoraBuilder::new(cfg).unwrap();
    b.linear_in(&(vs.root() / "encoder" / "fc1"), 4, 4, true)
        .unwrap();
    let err = b.finish().unwrap_err().to_string();
    assert!(
        err.contains("matches no module") && err.contains("modules_to_save"),
        "{err}"
    );
}

#[test]
fn a_pattern_that_matches_nothing_lists_the_modules_and_an_unmatched_module_to_save_is_ignored() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut b = LoraBuilder::new(LoraConfig::new(4, 8.0, &["query"])).unwrap();
    b.linear_in(&(vs.root() / "fc1"), 4, 4, false).unwrap();
    b.linear_in(&(vs.root() / "fc2"), 4, 4, false).unwrap();
    let err = b.finish().unwrap_err().to_string();
    assert!(
        err.contains("matches no module") && err.contains("fc1, fc2"),
        "{err}"
    );

    let mut cfg = LoraConfig::new(4, 8.0, &["fc1"]);
    cfg.modules_to_save = Some(vec!["classifier".into()]);
    let mut b = LoraBuilder::new(cfg).unwrap();
    b.linear_in(&(vs.root() / "fc1"), 4, 4, false).unwrap();
    // PEFT ignores a modules_to_save entry that matches nothing (its SEQ_CLS task always
    // lists both `classifier` and `score`): so does loraplus, with a warning.
    let lora = b.finish().unwrap();
    assert!(lora
        .trainable_params()
        .iter()
        .all(|p| p.role != ParamRole::Head));
}

fn saved_adapter(dir: &Path) -> (LoraLinear, LoraLinear, LoraModel) {
    let (_vs, fc1, fc2, lora) = mlp(random_config(4, 8.0, &["fc1", "fc2"]));
    lora.save_pretrained(dir).unwrap();
    (fc1, fc2, lora)
}

#[test]
fn save_then_load_restores_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let (fc1, fc2, _lora) = saved_adapter(dir.path());
    assert!(dir.path().join(ADAPTER_WEIGHTS).exists() && dir.path().join(ADAPTER_CONFIG).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let want = run(&fc1, &fc2, &x);
    tch::manual_seed(99); // different random adapters
    let cfg = read_adapter_config(dir.path()).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut b = LoraBuilder::new(cfg).unwrap();
    let g1 = b
        .linear_in(&(vs.root() / "encoder" / "fc1"), 10, 20, true)
        .unwrap();
    let g2 = b
        .linear_in(&(vs.root() / "encoder" / "fc2"), 20, 6, true)
        .unwrap();
    let lora = b.finish().unwrap();
    // Same base weights as the first model, so only the adapters differ before loading.
    tch::no_grad(|| {
        g1.weight.shallow_clone().copy_(&fc1.weight);
        g1.bias
            .as_ref()
            .unwrap()
            .shallow_clone()
            .copy_(fc1.bias.as_ref().unwrap());
        g2.weight.shallow_clone().copy_(&fc2.weight);
        g2.bias
            .as_ref()
            .unwrap()
            .shallow_clone()
            .copy_(fc2.bias.as_ref().unwrap());
    });
    assert!(rel_diff(&run(&g1, &g2, &x), &want) > 1e-3);
    lora.load_adapter(dir.path()).unwrap();
    assert!(run(&g1, &g2, &x).equal(&want));
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join(ADAPTER_WEIGHTS);
    let mut tensors = loraplus_core::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    loraplus_core::write_safetensors(&path, &tensors, &Default::default()).unwrap();
}

#[test]
fn wrong_shape_missing_key_nan_and_extra_key_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_fc1, _fc2, lora) = saved_adapter(dir.path());
    let key = "base_model.model.encoder.fc1.lora_A.weight";

    rewrite_weights(dir.path(), |t| {
        t.iter_mut().find(|(k, _)| k == key).unwrap().1 =
            Tensor::zeros([4, 9], (Kind::Float, Device::Cpu));
    });
    let err = lora.load_adapter(dir.path()).unwrap_err().chain();
    assert!(
        err.contains(key)
            && err.contains("[4, 9]")
            && err.contains("expected [4, 10]")
            && err.contains("in_features=10"),
        "{err}"
    );

    saved_adapter(dir.path());
    rewrite_weights(dir.path(), |t| t.retain(|(k, _)| k != key));
    let err = lora.load_adapter(dir.path()).unwrap_err().chain();
    assert!(err.contains("missing tensor") && err.contains(key), "{err}");

    saved_adapter(dir.path());
    rewrite_weights(dir.path(), |t| {
        let _ = t[0].1.fill_(f64::NAN);
    });
    let err = lora.load_adapter(dir.path()).unwrap_err().chain();
    assert!(err.contains("NaN"), "{err}");

    saved_adapter(dir.path());
    rewrite_weights(dir.path(), |t| {
        t.push((
            "base_model.model.encoder.fc9.lora_A.weight".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ))
    });
    let err = lora.load_adapter(dir.path()).unwrap_err().chain();
    assert!(
        err.contains("fc9") && err.contains("match no trainable parameter"),
        "{err}"
    );

    std::fs::write(dir.path().join(ADAPTER_WEIGHTS), b"not a safetensors file").unwrap();
    let err = lora.load_adapter(dir.path()).unwrap_err().chain();
    assert!(err.contains("not a valid safetensors file"), "{err}");

    // PEFT's safe_serialization=False: a pickle, named as such.
    std::fs::rename(
        dir.path().join(ADAPTER_WEIGHTS),
        dir.path().join("adapter_model.bin"),
    )
    .unwrap();
    let err = lora.load_adapter(dir.path()).unwrap_err();
    assert!(
        matches!(err.root(), loraplus_core::Error::BadFile { .. }),
        "{err:?}"
    );
    let err = err.chain();
    assert!(
        err.contains("adapter_model.bin") && err.contains("safe_serialization=True"),
        "{err}"
    );
}

/// Weights of the same shapes saved with another scaling (alpha, rsLoRA) are refused, naming
/// each difference, and so is loading into a model whose adapters are merged (the merged
/// update would stay in the base); after unmerge it loads.
#[test]
fn another_scaling_and_a_merged_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    saved_adapter(dir.path());
    let (_vs, _fc1, _fc2, lora) = mlp(LoraConfig {
        use_rslora: true,
        ..random_config(4, 64.0, &["fc1", "fc2"])
    });
    let err = lora.load_adapter(dir.path()).unwrap_err();
    assert!(
        matches!(
            err.root(),
            loraplus_core::Error::AdapterConfigMismatch { .. }
        ),
        "{err:?}"
    );
    let msg = err.chain();
    assert!(
        msg.contains("lora_alpha: 8 in the file, 64 in the model")
            && msg.contains("use_rslora: false in the file, true in the model")
            && msg.contains(ADAPTER_CONFIG),
        "{msg}"
    );

    let (_vs, fc1, fc2, lora) = mlp(random_config(4, 8.0, &["fc1", "fc2"]));
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    lora.merge(true).unwrap();
    let base = fc1.weight.copy();
    let err = lora.load_adapter(dir.path()).unwrap_err();
    assert!(
        matches!(err.root(), loraplus_core::Error::InvalidArgument(_))
            && err.chain().contains("unmerge() first"),
        "{err:?}"
    );
    assert!(
        fc1.weight.equal(&base),
        "the refused load changed the model"
    );
    lora.unmerge().unwrap();
    lora.load_adapter(dir.path()).unwrap();
    let _ = run(&fc1, &fc2, &x);
}

#[test]
fn bad_config_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_adapter_config(dir.path()).unwrap_err().chain();
    assert!(err.contains(ADAPTER_CONFIG), "{err}");
    let path = dir.path().join(ADAPTER_CONFIG);
    std::fs::write(&path, "{\"r\": 8,").unwrap();
    let err = read_adapter_config(dir.path()).unwrap_err().chain();
    assert!(
        err.contains(ADAPTER_CONFIG) && err.contains("JSON"),
        "{err}"
    );
    std::fs::write(&path, r#"{"r": "eight"}"#).unwrap();
    let err = read_adapter_config(dir.path()).unwrap_err().chain();
    assert!(err.contains("invalid type"), "{err}");
    std::fs::write(&path, r#"{"peft_type": "IA3"}"#).unwrap();
    let err = read_adapter_config(dir.path()).unwrap_err().chain();
    assert!(err.contains("IA3"), "{err}");
    std::fs::write(&path, r#"{"lora_dropout": 1.5}"#).unwrap();
    let err = read_adapter_config(dir.path()).unwrap_err().chain();
    assert!(err.contains("lora_dropout"), "{err}");
    std::fs::write(&path, "{}").unwrap();
    let e = read_adapter_config(dir.path()).unwrap_err();
    assert!(
        matches!(e.root(), loraplus_core::Error::BadConfigValue(m) if m.contains("no target_modules") && m.contains(ADAPTER_CONFIG)),
        "{e:?}"
    );
}

/// On a CUDA machine (`make gpu-check`): adapters live on the base layer's device and give the
/// CPU's numbers. Skipped, and says so, where no GPU is present (see [`loraplus_testing::cuda_present`]).
#[test]
fn cuda_adapters_follow_the_base_device() {
    if !loraplus_testing::cuda_present() {
        return;
    }
    let (_vs, fc1, _fc2, _lora) = mlp(random_config(4, 8.0, &["fc1"]));
    let dev = Device::Cuda(0);
    let mut b = LoraBuilder::new(random_config(4, 8.0, &["fc1"])).unwrap();
    let g1 = b
        .linear(
            "encoder.fc1",
            fc1.weight.to_device(dev),
            fc1.bias.as_ref().map(|t| t.to_device(dev)),
            WeightLayout::OutIn,
        )
        .unwrap();
    let lora = b.finish().unwrap();
    let ad = g1.adapter.as_ref().unwrap();
    assert_eq!(ad.a.device(), dev);
    tch::no_grad(|| {
        ad.a.shallow_clone().copy_(&fc1.adapter.as_ref().unwrap().a);
        ad.b.shallow_clone().copy_(&fc1.adapter.as_ref().unwrap().b);
    });
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    let want = fc1.forward(&x);
    let got = g1.forward(&x.to_device(dev)).to_device(Device::Cpu);
    assert!(rel_diff(&got, &want) < 1e-5);
    lora.merge(true).unwrap();
    let merged = g1.forward(&x.to_device(dev)).to_device(Device::Cpu);
    assert!(rel_diff(&merged, &want) < 1e-5);
}
