//! LoRA+ on a tch model of your own: a small MLP built with `tch::nn` in a `VarStore`, two of
//! its linear layers wrapped with LoRA through `LoraBuilder`, trained a few steps with
//! `LoraPlusAdamW` on a toy regression, and saved in PEFT's format.
//!
//! ```sh
//! cargo run --example own_model -- /tmp/own-model   # writes base.safetensors and adapter/
//! ```
//!
//! How the adapters relate to the model's `nn::VarStore`:
//! - `LoraBuilder::linear_in` creates the layer's base weight and bias as variables of the
//!   VarStore (under the path's name, e.g. `fc1.weight`) and freezes them; the LoRA A and B
//!   tensors are *not* VarStore variables. The `LoraModel` that `finish` returns holds them,
//!   lists them with their roles (`trainable_params`) for the optimizer, and saves and loads them
//!   (`save_pretrained`, `load_adapter`).
//! - Saving: `vs.save` writes the base only; `lora.save_pretrained` writes the adapter only (what
//!   PEFT's `PeftModel.from_pretrained` reads on top of the same base).
//! - Devices: A and B are created on the device of the layer's base weight. Put the VarStore on
//!   its device (`nn::VarStore::new(device)`) *before* handing layers to the builder;
//!   `vs.set_device` afterwards moves the base but not the adapters, so the layers would mix
//!   devices. To change device, build again on the new one and `load_adapter` the saved adapter.
//! - Layers the builder is not given (here `out`) are the user's: the builder neither freezes
//!   nor saves them. This example freezes `out` itself, as PEFT freezes every base parameter.
//!
//! `tests/own_model_peft.rs` runs [`train_and_save`] and checks that PEFT loads the adapter and
//! gives the same outputs (`tests/reference/own_model_peft.py`).

use std::path::Path;

use anyhow::Result;
use loraplus::core::{write_safetensors, LoraBuilder, LoraConfig, LoraLinear, LoraModel};
use loraplus::optim::{LoraPlusAdamW, LoraPlusConfig, Schedule};
use loraplus::tch::{nn, nn::Module, Device, Kind, Tensor};

/// Input, hidden and output widths of the MLP.
const DIMS: (i64, i64, i64) = (8, 16, 1);
/// Rows of the toy regression, and optimizer steps over them.
const ROWS: i64 = 64;
const STEPS: usize = 30;

/// The user's model: `fc1 -> relu -> fc2 -> relu -> out`, with `fc1` and `fc2` wrapped.
pub struct Mlp {
    fc1: LoraLinear,
    fc2: LoraLinear,
    out: nn::Linear,
}

impl Mlp {
    /// Build the model in `vs` with LoRA on the layers `config.target_modules` names.
    pub fn new(vs: &nn::VarStore, config: LoraConfig) -> Result<(Mlp, LoraModel)> {
        let root = vs.root();
        let (din, hidden, dout) = DIMS;
        let mut b = LoraBuilder::new(config)?;
        let fc1 = b.linear_in(&(&root / "fc1"), din, hidden, true)?;
        let fc2 = b.linear_in(&(&root / "fc2"), hidden, hidden, true)?;
        let out = nn::linear(&root / "out", hidden, dout, Default::default());
        // Not handed to the builder: frozen here, as PEFT freezes every base parameter.
        let _ = out.ws.set_requires_grad(false);
        if let Some(bs) = &out.bs {
            let _ = bs.set_requires_grad(false);
        }
        let lora = b.finish()?;
        Ok((Mlp { fc1, fc2, out }, lora))
    }

    /// The forward pass; `train` turns LoRA dropout on.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.fc1.forward_t(x, train).relu();
        let h = self.fc2.forward_t(&h, train).relu();
        self.out.forward(&h)
    }
}

/// What [`train_and_save`] leaves for a check.
pub struct Trained {
    /// The training inputs, `[ROWS, 8]`.
    pub x: Tensor,
    /// The model's outputs on them after training (eval mode), `[ROWS, 1]`.
    pub y: Tensor,
    /// Mean squared error before the first step and after the last.
    pub loss_first: f64,
    /// See `loss_first`.
    pub loss_last: f64,
}

/// Build the MLP with random base weights (seeded), train its adapters `STEPS` steps on a
/// toy regression, and write `dir/base.safetensors` (the VarStore) and `dir/adapter/` (PEFT).
pub fn train_and_save(dir: &Path) -> Result<Trained> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut config = LoraConfig::new(4, 8.0, &["fc1", "fc2"]);
    config.lora_dropout = 0.1;
    let (model, lora) = Mlp::new(&vs, config)?;
    println!("{}", lora.summary());

    // A target the frozen base does not fit: a smooth function of the inputs.
    let x = Tensor::randn([ROWS, DIMS.0], (Kind::Float, Device::Cpu));
    let target = x.sum_dim_intlist(1, true, Kind::Float).sin();
    let optim = LoraPlusConfig {
        lr: 1e-2,
        ratio: 16.0,
        ..Default::default()
    };
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &optim, Schedule::Constant)?;
    let mse = |y: &Tensor| (y - &target).square().mean(Kind::Float);
    let loss_first = tch::no_grad(|| mse(&model.forward_t(&x, false))).double_value(&[]);
    for step in 0..STEPS {
        let loss = mse(&model.forward_t(&x, true));
        loss.backward();
        let _norm = opt.clip_grad_norm(1.0)?; // the gradient norm before clipping
        opt.step()?;
        opt.zero_grad()?;
        if step % 10 == 0 {
            println!("step {step}: loss {:.4}", loss.double_value(&[]));
        }
    }
    let y = tch::no_grad(|| model.forward_t(&x, false));
    let loss_last = mse(&y).double_value(&[]);
    println!("loss {loss_first:.4} -> {loss_last:.4}");

    std::fs::create_dir_all(dir)?;
    let base: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    write_safetensors(&dir.join("base.safetensors"), &base, &Default::default())?;
    lora.save_pretrained(&dir.join("adapter"))?;
    Ok(Trained {
        x,
        y,
        loss_first,
        loss_last,
    })
}

#[allow(dead_code)] // the test includes this file for `train_and_save` only
fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("loraplus-own-model"));
    train_and_save(&dir)?;
    println!(
        "base weights in {}, adapter (PEFT format) in {}",
        dir.join("base.safetensors").display(),
        dir.join("adapter").display()
    );
    Ok(())
}
