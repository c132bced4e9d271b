//! LoRA on a quantized frozen base: the adapters' gradients equal those on the dequantized
//! base, element by element; what is quantized and what is not; merging and the byte count.

use loraplus_core::{
    Error, InitLoraWeights, LoraBuilder, LoraConfig, LoraLinear, LoraModel, QuantScheme,
    WeightLayout,
};
use tch::{Device, Kind, Tensor};

const F32: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Three linears: `up` [64 -> 128] (adapted, Conv1D layout), `down` [128 -> 64] (adapted),
/// `proj` [64 -> 64] (not adapted), and `head` [64 -> 3] in `modules_to_save`.
struct Net {
    layers: Vec<LoraLinear>,
    lora: LoraModel,
}

fn weights() -> Vec<(&'static str, Tensor, WeightLayout)> {
    tch::manual_seed(21);
    vec![
        (
            "up",
            Tensor::randn([64, 128], F32) * 0.1,
            WeightLayout::InOut,
        ),
        (
            "down",
            Tensor::randn([64, 128], F32) * 0.1,
            WeightLayout::OutIn,
        ),
        (
            "proj",
            Tensor::randn([64, 64], F32) * 0.1,
            WeightLayout::OutIn,
        ),
        (
            "head",
            Tensor::randn([3, 64], F32) * 0.1,
            WeightLayout::OutIn,
        ),
    ]
}

fn config() -> LoraConfig {
    let mut cfg = LoraConfig::new(4, 8.0, &["up", "down"]);
    cfg.init_lora_weights = InitLoraWeights::Random;
    cfg.modules_to_save = Some(vec!["head".into()]);
    cfg
}

fn build(quant: Option<QuantScheme>, base: &[(&str, Tensor, WeightLayout)]) -> Net {
    tch::manual_seed(22);
    let mut b = LoraBuilder::new(config()).unwrap();
    if let Some(s) = quant {
        b = b.with_quantization(s);
    }
    let layers = base
        .iter()
        .map(|(n, w, l)| {
            let bias = Tensor::linspace(
                -0.1,
                0.1,
                w.size()[if *l == WeightLayout::InOut { 1 } else { 0 }],
                F32,
            );
            b.linear(n, w.copy(), Some(bias), *l).unwrap()
        })
        .collect();
    Net {
        layers,
        lora: b.finish().unwrap(),
    }
}

impl Net {
    fn loss(&self, x: &Tensor) -> Tensor {
        let h = self.layers[0].forward_t(x, true).gelu("none");
        let h = self.layers[1].forward_t(&h, true);
        let h = self.layers[2].forward_t(&h, true).tanh();
        let y = self.layers[3].forward_t(&h, true);
        y.square().mean(Kind::Float)
    }

    /// Every trainable tensor's gradient after one backward, by name.
    fn grads(&self, x: &Tensor) -> Vec<(String, Tensor)> {
        for p in self.lora.trainable_params() {
            p.tensor.shallow_clone().zero_grad();
        }
        self.loss(x).backward();
        self.lora
            .trainable_params()
            .iter()
            .map(|p| (p.name.clone(), p.tensor.grad().copy()))
            .collect()
    }
}

/// The quantized net's base weights, dequantized, in each layer's layout (the head as is).
fn dequantized(
    net: &Net,
    base: &[(&str, Tensor, WeightLayout)],
) -> Vec<(&'static str, Tensor, WeightLayout)> {
    let names = ["up", "down", "proj", "head"];
    net.layers
        .iter()
        .zip(base)
        .zip(names)
        .map(|((l, (_, w, layout)), n)| {
            let w = match l.active_quant() {
                None => w.copy(),
                Some(q) => match layout {
                    WeightLayout::OutIn => q.dequantize().unwrap(),
                    WeightLayout::InOut => q.dequantize().unwrap().tr().contiguous(),
                },
            };
            (n, w, *layout)
        })
        .collect()
}

#[test]
fn adapter_gradients_equal_those_on_the_dequantized_base() {
    let base = weights();
    for scheme in [QuantScheme::Int8, QuantScheme::Int4 { group_size: 32 }] {
        let quant = build(Some(scheme), &base);
        let reference = build(None, &dequantized(&quant, &base));
        // Same adapters on both (tests share torch's global generator, so copy them).
        tch::no_grad(|| {
            for (a, b) in quant
                .lora
                .trainable_params()
                .iter()
                .zip(reference.lora.trainable_params())
            {
                assert_eq!(a.name, b.name);
                b.tensor.shallow_clone().copy_(&a.tensor);
            }
        });
        tch::manual_seed(23);
        let x = Tensor::randn([4, 6, 64], F32);
        let got = quant.grads(&x);
        let want = reference.grads(&x);
        assert_eq!(
            got.len(),
            6,
            "lora A/B of up and down, head weight and bias"
        );
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            let scale = f64::try_from(w.abs().max()).unwrap();
            assert!(scale > 0.0, "{scheme} {name}: zero gradient");
            // Row by row: the largest difference of each row, relative to the largest gradient.
            let rows = (g - w)
                .abs()
                .reshape([g.size()[0], -1])
                .amax([1].as_slice(), false);
            for (i, d) in Vec::<f64>::try_from(rows).unwrap().into_iter().enumerate() {
                assert!(
                    d <= 1e-5 * scale,
                    "{scheme} {name} row {i}: off by {d:e} (max {scale:e})"
                );
            }
        }
        // Quantization changed the base: the gradients differ from full precision's.
        let full = build(None, &base).grads(&x);
        let d = f64::try_from((&got[1].1 - &full[1].1).abs().max()).unwrap();
        assert!(
            d > 0.0,
            "{scheme}: the quantized base gives the full-precision gradients"
        );
    }
}

#[test]
fn what_is_quantized_and_what_it_holds() {
    let base = weights();
    let net = build(Some(QuantScheme::Int8), &base);
    let quantized: Vec<bool> = net
        .layers
        .iter()
        .map(|l| l.active_quant().is_some())
        .collect();
    assert_eq!(
        quantized,
        [true, true, true, false],
        "head (modules_to_save) stays f32"
    );
    // The stand-in weight keeps the layout's shape, and holds no storage of its own.
    assert_eq!(net.layers[0].weight.size(), [64, 128]);
    assert_eq!(net.layers[1].weight.size(), [64, 128]);
    assert_eq!(net.layers[0].weight.stride(), [0, 0]);
    let bytes = net.lora.base_bytes();
    // Linear weights: up, down, proj, head = 8192 + 8192 + 4096 + 192 floats.
    assert_eq!(bytes.quantizable_full, (8192 + 8192 + 4096 + 192) * 4);
    // int8: one byte each plus an f32 scale per output channel; the head as is.
    assert_eq!(
        bytes.quantizable_stored,
        (8192 + 128 * 4) + (8192 + 64 * 4) + (4096 + 64 * 4) + 192 * 4
    );
    let biases = (128 + 64 + 64 + 3) * 4;
    assert_eq!(bytes.full, bytes.quantizable_full + biases);
    assert_eq!(bytes.stored, bytes.quantizable_stored + biases);
    assert_eq!(net.lora.quantization(), Some(QuantScheme::Int8));
    // The parameter count is the model's, quantized or not.
    assert_eq!(
        net.lora.summary().all,
        build(None, &base).lora.summary().all
    );
}

#[test]
fn merging_needs_a_dequantized_base_and_then_equals_the_adapted_forward() {
    let base = weights();
    let net = build(Some(QuantScheme::Int4 { group_size: 64 }), &base);
    let e = net.lora.merge(true).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("dequantize_base"), "{e}");
    tch::manual_seed(24);
    let x = Tensor::randn([3, 64], F32);
    let before = tch::no_grad(|| net.loss(&x));
    let up_before = tch::no_grad(|| net.layers[0].forward(&x));
    net.lora.dequantize_base().unwrap();
    assert!(!net.lora.is_quantized());
    assert!(net.layers.iter().all(|l| l.active_quant().is_none()));
    assert_eq!(net.layers[0].weight.size(), [64, 128]);
    assert_ne!(net.layers[0].weight.stride(), [0, 0]);
    let after = tch::no_grad(|| net.loss(&x));
    let d = f64::try_from((&before - &after).abs()).unwrap();
    assert!(d < 1e-6, "dequantized base changes the loss by {d:e}");
    net.lora.merge(true).unwrap();
    let merged = tch::no_grad(|| net.layers[0].forward(&x));
    let d = f64::try_from((&up_before - &merged).abs().max()).unwrap();
    assert!(d < 1e-5, "merged forward off by {d:e}");
    let bytes = net.lora.base_bytes();
    assert_eq!(bytes.stored, bytes.full);
}

#[test]
fn a_group_size_that_does_not_divide_the_width_names_the_layer() {
    let mut b = LoraBuilder::new(config())
        .unwrap()
        .with_quantization(QuantScheme::Int4 { group_size: 128 });
    let e = b
        .linear(
            "proj",
            Tensor::randn([8, 96], F32),
            None,
            WeightLayout::OutIn,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("proj") && e.contains("96") && e.contains("128"),
        "{e}"
    );
    let mut b = LoraBuilder::new(config())
        .unwrap()
        .with_quantization(QuantScheme::Int8);
    let e = b
        .linear(
            "proj",
            Tensor::randn([8, 96], (Kind::Double, Device::Cpu)),
            None,
            WeightLayout::OutIn,
        )
        .unwrap_err();
    assert!(matches!(e.root(), Error::Quantization(_)), "{e}");
    assert!(e.chain().contains("proj"), "{}", e.chain());
}

/// On a CUDA machine (`make gpu-check`): the quantized linear on CUDA, through libtorch's
/// weight-only kernels (int8 up to 16 rows; int4 in bf16 up to 16 rows) and the dequantizing
/// path (more rows, or int4 in f32), gives `x @ dequant(W)^T` and autograd's input gradient,
/// element by element, and quantizing on CUDA gives the CPU's values.
#[test]
fn cuda_quantized_linear_matches_the_dequantized_weight() {
    if !loraplus_testing::cuda_present() {
        return;
    }
    let dev = Device::Cuda(0);
    tch::manual_seed(31);
    let w = Tensor::randn([256, 512], F32);
    for scheme in [QuantScheme::Int8, QuantScheme::Int4 { group_size: 64 }] {
        let cpu = loraplus_core::QuantizedWeight::quantize("w", &w, scheme).unwrap();
        for kind in [Kind::Float, Kind::BFloat16] {
            let qw = loraplus_core::QuantizedWeight::quantize(
                "w",
                &w.to_device(dev).to_kind(kind),
                scheme,
            )
            .unwrap();
            let dq = qw.dequantize().unwrap();
            if kind == Kind::Float {
                let d = f64::try_from(
                    (dq.to_device(Device::Cpu) - cpu.dequantize().unwrap())
                        .abs()
                        .max(),
                )
                .unwrap();
                assert!(
                    d < 1e-6,
                    "{scheme}: CUDA quantization differs from the CPU's by {d:e}"
                );
            }
            for rows in [1, 8, 16, 64] {
                let x = Tensor::randn([rows, 512], (kind, dev)).set_requires_grad(true);
                let g = Tensor::randn([rows, 256], (kind, dev));
                let y = qw.forward(&x);
                (&y * &g).sum(Kind::Float).backward();
                let gx = x.grad().copy();
                let mut xg = x.grad();
                let _ = xg.zero_();
                let want = x.linear::<&Tensor>(&dq, None);
                (&want * &g).sum(Kind::Float).backward();
                let rel = |a: &Tensor, b: &Tensor| {
                    f64::try_from((a - b).abs().max()).unwrap()
                        / f64::try_from(b.abs().max()).unwrap()
                };
                let tol = if kind == Kind::Float { 1e-5 } else { 2e-2 };
                let (fy, fg) = (rel(&y, &want), rel(&gx, &x.grad()));
                eprintln!("{scheme} {kind:?} rows {rows}: forward {fy:e}, input gradient {fg:e}");
                assert!(
                    fy < tol,
                    "{scheme} {kind:?} rows {rows}: forward off by {fy:e}"
                );
                assert!(
                    fg < tol,
                    "{scheme} {kind:?} rows {rows}: input gradient off by {fg:e}"
                );
            }
        }
    }
}
