//! A quantized frozen base: weight-only int8 and int4 storage for the linear layers LoRA leaves
//! frozen (QLoRA's idea on libtorch's own kernels), with the adapters in full precision.
//!
//! # Formats (weight `[out, in]`)
//! - **int8**: symmetric per output channel, `scale = max|w_row| / 127`, `q = round(w / scale)`
//!   in `[-127, 127]`; one byte per weight plus an f32 per row. Round-trip error at most
//!   `scale / 2` per element.
//! - **int4**: asymmetric per group of `group_size` consecutive inputs of a row,
//!   `scale = (max - min) / 15`, `q = round((w - min) / scale)` in `[0, 15]`, two per byte;
//!   `w ~ (q - 8) * scale + zero` with `zero = min + 8 * scale` (the convention of
//!   `torch._weight_int4pack_mm`). Half a byte per weight plus 8 bytes per group. Round-trip
//!   error at most `scale / 2` per element.
//!
//! # Forward and backward
//! [`QuantizedWeight::forward`] is `x @ dequant(W)^T`. libtorch's weight-only kernels
//! (`_weight_int8pack_mm` on the CPU and CUDA, `_weight_int4pack_mm` on CUDA in bf16) are
//! built for decoding, a few rows at a time: they run inputs of one row (CPU) or up to 16 rows
//! (CUDA). A training batch runs faster as a BLAS product on this one layer dequantized
//! (measured on the CPU: `_weight_int8pack_mm` is 15-40x slower than dequantize + sgemm at
//! 1024 rows), so larger inputs do that; the dequantized layer lives only for the product. The
//! CPU's int4 kernel packs differently per ISA, so int4 on the CPU always dequantizes. No kernel
//! has a backward, and LoRA needs the input
//! gradient to reach earlier layers' adapters: the product runs inside a C++
//! `torch::autograd::Function` (`loraplus-shim`) that saves only the quantized tensors and, in
//! backward, dequantizes this one layer for `grad_x = grad_y @ dequant(W)`. No full-precision
//! copy of the base is kept.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// How the frozen base linears are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    /// int8 weights, one f32 scale per output channel.
    Int8,
    /// int4 weights, an f32 scale and zero per `group_size` inputs of each output channel.
    Int4 {
        /// Consecutive inputs sharing a scale and zero: one of [`QuantScheme::INT4_GROUP_SIZES`].
        group_size: i64,
    },
}

impl QuantScheme {
    /// The int4 group sizes the kernels accept.
    pub const INT4_GROUP_SIZES: [i64; 4] = [32, 64, 128, 256];
    /// The int4 group size when none is given (as `--quant-group-size`'s default).
    pub const DEFAULT_INT4_GROUP_SIZE: i64 = 64;
    /// The scheme names [`QuantScheme::parse`] accepts.
    pub const NAMES: [&'static str; 2] = ["int8", "int4"];

    /// `int8` or `int4` (with `group_size`, default 64). A group size with int8, or one the
    /// int4 kernels do not take, is an error naming the value.
    pub fn parse(scheme: &str, group_size: Option<i64>) -> Result<Self> {
        match scheme {
            "int8" => match group_size {
                None => Ok(QuantScheme::Int8),
                Some(g) => Err(Error::BadConfigValue(format!(
                    "quant_group_size = {g}: int8 is quantized per output channel and takes no \
                     group size (it is for int4)"
                ))),
            },
            "int4" => {
                let g = group_size.unwrap_or(Self::DEFAULT_INT4_GROUP_SIZE);
                if !Self::INT4_GROUP_SIZES.contains(&g) {
                    return Err(Error::BadConfigValue(format!(
                        "quant_group_size = {g}: int4 takes a group size of {:?}",
                        Self::INT4_GROUP_SIZES
                    )));
                }
                Ok(QuantScheme::Int4 { group_size: g })
            }
            other => Err(Error::BadConfigValue(format!(
                "quantize = {other:?}: unknown scheme; expected one of {:?}",
                Self::NAMES
            ))),
        }
    }

    /// `int8` or `int4`.
    pub fn name(self) -> &'static str {
        match self {
            QuantScheme::Int8 => "int8",
            QuantScheme::Int4 { .. } => "int4",
        }
    }

    fn id_and_group(self) -> (i32, i64) {
        match self {
            QuantScheme::Int8 => (loraplus_shim::quant::INT8, 0),
            QuantScheme::Int4 { group_size } => (loraplus_shim::quant::INT4, group_size),
        }
    }

    /// Whether this scheme runs on `device` for a model in `kind`: both schemes on the CPU and
    /// CUDA, in f32, bf16 and f16 (int4's CUDA kernel, used for inputs of up to 16 rows in
    /// bf16, needs compute capability 8.0 or newer, which libtorch checks when it runs).
    pub fn check_device(self, device: Device, kind: Kind) -> Result<()> {
        if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(Error::Quantization(format!(
                "{self}: a base in {kind:?} cannot be quantized (the kernels take f32, bf16 or f16)"
            )));
        }
        match (self, device) {
            (_, Device::Cpu) => Ok(()),
            (_, Device::Cuda(_)) => Ok(()),
            (_, other) => Err(Error::Quantization(format!(
                "{self}: libtorch has no weight-only {} kernel on {other:?} (only the CPU and CUDA)",
                self.name()
            ))),
        }
    }

    /// Whether a layer `[out, in]` can take this scheme (`name` for the message).
    pub fn check_shape(self, name: &str, out_features: i64, in_features: i64) -> Result<()> {
        if let QuantScheme::Int4 { group_size } = self {
            if in_features % group_size != 0 {
                return Err(Error::Quantization(format!(
                    "{name}: in_features {in_features} is not a multiple of the int4 group size \
                     {group_size}; choose a group size among {:?} that divides it",
                    Self::INT4_GROUP_SIZES
                )));
            }
        }
        if out_features < 1 || in_features < 1 {
            return Err(Error::Quantization(format!(
                "{name}: cannot quantize an empty weight [{out_features}, {in_features}]"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantScheme::Int8 => write!(f, "int8"),
            QuantScheme::Int4 { group_size } => write!(f, "int4 (group {group_size})"),
        }
    }
}

/// One layer's frozen weight in a [`QuantScheme`]: what the base keeps instead of `[out, in]`
/// floats.
#[derive(Debug)]
pub struct QuantizedWeight {
    scheme: QuantScheme,
    /// int8 `[out, in]`, or uint8 `[out, in / 2]` (int4, two values per byte, even input in
    /// the high nibble).
    q: Tensor,
    /// f32 `[out]` (int8), or f32 `[in / group, out, 2]` scales and zeros (int4).
    scales: Tensor,
    /// The dtype of the weight it replaces (what [`Self::dequantize`] gives).
    kind: Kind,
    out_features: i64,
    in_features: i64,
    /// Cleared by [`QuantizedWeight::release`], once the layer's weight is full precision again;
    /// shared by the layer's and the registry's handles.
    active: Arc<AtomicBool>,
}

impl QuantizedWeight {
    /// Quantize an `[out, in]` weight (`name` for messages), on its device.
    pub fn quantize(name: &str, weight: &Tensor, scheme: QuantScheme) -> Result<Self> {
        let size = weight.size();
        let [out_features, in_features] = size[..] else {
            return Err(Error::InvalidArgument(format!(
                "{name}.weight: expected an [out, in] weight to quantize, found shape {size:?}"
            )));
        };
        scheme.check_shape(name, out_features, in_features)?;
        let (id, group) = scheme.id_and_group();
        let (q, scales) = loraplus_shim::quant::quantize(weight, id, group)
            .map_err(|e| Error::Quantization(format!("{name}: quantizing to {scheme}: {e}")))?;
        Ok(QuantizedWeight {
            scheme,
            q,
            scales,
            kind: weight.kind(),
            out_features,
            in_features,
            active: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Whether the layer still runs on this quantized weight (not yet
    /// [`crate::LoraModel::dequantize_base`]d).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// An `[out, in]` stand-in for the weight this replaces: one element broadcast (no storage),
    /// so shapes, dtype and device read as before.
    pub fn placeholder(&self) -> Tensor {
        Tensor::zeros([], (self.kind, self.q.device()))
            .expand([self.out_features, self.in_features], false)
    }

    /// The scheme.
    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [i64; 2] {
        [self.out_features, self.in_features]
    }

    /// The dtype of the weight it stands for.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The quantized values and the scales (int8) or scales and zeros (int4).
    pub fn tensors(&self) -> (&Tensor, &Tensor) {
        (&self.q, &self.scales)
    }

    /// Bytes held: the quantized values and their scales (and zeros).
    pub fn nbytes(&self) -> i64 {
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as i64;
        bytes(&self.q) + bytes(&self.scales)
    }

    /// The `[out, in]` weight in full precision (in the dtype it was quantized from).
    pub fn dequantize(&self) -> Result<Tensor> {
        let (id, group) = self.scheme.id_and_group();
        let w = loraplus_shim::quant::dequantize(&self.q, &self.scales, id, group)
            .map_err(|e| Error::Quantization(format!("dequantizing {}: {e}", self.scheme)))?;
        Ok(if w.kind() == self.kind {
            w
        } else {
            w.to_kind(self.kind)
        })
    }

    /// `x @ dequant(W)^T` over any leading dimensions of `x` (`[.., in]` to `[.., out]`),
    /// differentiable with respect to `x`.
    pub fn f_forward(&self, x: &Tensor) -> Result<Tensor> {
        let (id, group) = self.scheme.id_and_group();
        loraplus_shim::quant::linear(x, &self.q, &self.scales, id, group).map_err(|e| {
            Error::Quantization(format!(
                "{} linear [{}, {}] on an input of shape {:?} ({:?}): {e}",
                self.scheme,
                self.out_features,
                self.in_features,
                x.size(),
                x.kind()
            ))
        })
    }

    /// [`Self::f_forward`], panicking on a kernel error (as tch's own operations do); the
    /// devices and dtypes are checked when the base is quantized
    /// ([`QuantScheme::check_device`]).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.f_forward(x) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// A second handle on the same tensors and state (for the model's registry).
    pub(crate) fn handle(&self) -> QuantizedWeight {
        QuantizedWeight {
            scheme: self.scheme,
            q: self.q.shallow_clone(),
            scales: self.scales.shallow_clone(),
            kind: self.kind,
            out_features: self.out_features,
            in_features: self.in_features,
            active: self.active.clone(),
        }
    }

    /// Frees the quantized tensors (their storage), once the layer runs on a dequantized
    /// weight again.
    pub(crate) fn release(&self) {
        self.active.store(false, Ordering::Relaxed);
        let empty = |t: &Tensor| Tensor::empty([0], (t.kind(), t.device()));
        self.q.shallow_clone().set_data(&empty(&self.q));
        self.scales.shallow_clone().set_data(&empty(&self.scales));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(a: &Tensor) -> f64 {
        a.abs().max().double_value(&[])
    }

    #[test]
    fn parse_names_the_bad_value() {
        assert_eq!(QuantScheme::parse("int8", None).unwrap(), QuantScheme::Int8);
        assert_eq!(
            QuantScheme::parse("int4", None).unwrap(),
            QuantScheme::Int4 { group_size: 64 }
        );
        assert_eq!(
            QuantScheme::parse("int4", Some(128)).unwrap(),
            QuantScheme::Int4 { group_size: 128 }
        );
        let e = QuantScheme::parse("nf4", None).unwrap_err().to_string();
        assert!(e.contains("\"nf4\"") && e.contains("int8"), "{e}");
        let e = QuantScheme::parse("int4", Some(48))
            .unwrap_err()
            .to_string();
        assert!(e.contains("48") && e.contains("[32, 64, 128, 256]"), "{e}");
        let e = QuantScheme::parse("int8", Some(64))
            .unwrap_err()
            .to_string();
        assert!(e.contains("int8") && e.contains("64"), "{e}");
    }

    #[test]
    fn devices_without_a_kernel_are_refused() {
        let int4 = QuantScheme::Int4 { group_size: 64 };
        assert!(int4.check_device(Device::Cpu, Kind::Float).is_ok());
        assert!(int4.check_device(Device::Cuda(0), Kind::BFloat16).is_ok());
        assert!(int4.check_device(Device::Cuda(0), Kind::Float).is_ok());
        assert!(QuantScheme::Int8
            .check_device(Device::Cuda(0), Kind::Half)
            .is_ok());
        let e = int4.check_device(Device::Mps, Kind::Float).unwrap_err();
        assert!(matches!(e, Error::Quantization(_)));
        assert!(e.to_string().contains("Mps"), "{e}");
        let e = QuantScheme::Int8
            .check_device(Device::Cpu, Kind::Double)
            .unwrap_err();
        assert!(e.to_string().contains("Double"), "{e}");
        let e = int4.check_shape("fc", 8, 96).unwrap_err().to_string();
        assert!(
            e.contains("fc") && e.contains("96") && e.contains("64"),
            "{e}"
        );
    }

    /// Row by row: every element within half a quantization step of the original.
    #[test]
    fn round_trip_within_half_a_step() {
        tch::manual_seed(3);
        let w = Tensor::randn([24, 256], (Kind::Float, Device::Cpu)) * 0.05;
        // A constant group and a zero row: the step is clamped, the values come back exactly.
        let _ = w.narrow(0, 0, 1).narrow(1, 0, 64).fill_(0.25);
        let _ = w.narrow(0, 1, 1).zero_();
        let q8 = QuantizedWeight::quantize("w", &w, QuantScheme::Int8).unwrap();
        let d8 = q8.dequantize().unwrap();
        let step8 = w.abs().amax([1].as_slice(), true) / 127.0;
        let excess = (&d8 - &w).abs() - &step8 * 0.5 - 1e-7;
        assert!(
            max_abs(&excess.clamp_min(0.0)) == 0.0,
            "int8 beyond half a step"
        );
        assert_eq!(max_abs(&d8.narrow(0, 1, 1)), 0.0);
        assert_eq!(q8.nbytes(), 24 * 256 + 24 * 4);
        for g in QuantScheme::INT4_GROUP_SIZES {
            let q4 =
                QuantizedWeight::quantize("w", &w, QuantScheme::Int4 { group_size: g }).unwrap();
            let d4 = q4.dequantize().unwrap();
            let groups = w.view([24, 256 / g, g]);
            let span = groups.amax([2].as_slice(), true) - groups.amin([2].as_slice(), true);
            let step4 = (span / 15.0).clamp_min(1e-6);
            let err = (d4.view([24, 256 / g, g]) - &groups).abs();
            let excess = (err - step4 * 0.5 - 1e-6).clamp_min(0.0);
            assert!(max_abs(&excess) == 0.0, "int4 group {g} beyond half a step");
            let constant = d4.narrow(0, 0, 1).narrow(1, 0, 64) - 0.25;
            assert!(max_abs(&constant) < 1e-6, "group {g}: a constant group");
            assert_eq!(q4.nbytes(), 24 * 128 + (256 / g) * 24 * 2 * 4, "group {g}");
        }
    }

    /// The shim quantizes a layer a few rows at a time (to bound the memory while a base
    /// loads): the bytes equal the formats' definitions applied to the whole weight at once,
    /// element by element, for a weight of several chunks (1,100 rows of 4,096: chunks of 1,024
    /// rows and a remainder), from f32, from bf16, and from a transposed view (GPT-2's layout).
    #[test]
    fn chunked_quantization_equals_the_whole_weight_definition() {
        tch::manual_seed(11);
        let (n, k) = (1100i64, 4096i64);
        let base = Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.02;
        let _ = base.narrow(0, 1030, 1).zero_(); // a zero row in the second chunk
        let inputs = [
            ("f32", base.shallow_clone()),
            ("bf16", base.to_kind(Kind::BFloat16)),
            ("transposed", base.tr().contiguous().tr()),
        ];
        for (label, w) in inputs {
            let wf = w.to_kind(Kind::Float);
            // int8: per row, scale = max|w| / 127, q = round(w / scale) in [-127, 127].
            let scale = wf.abs().amax([1].as_slice(), false) / 127.0;
            let safe = scale.where_self(&scale.gt(0.0), &scale.ones_like());
            let want_q = (&wf / safe.unsqueeze(1))
                .round()
                .clamp(-127, 127)
                .to_kind(Kind::Int8);
            let q8 = QuantizedWeight::quantize("w", &w, QuantScheme::Int8).unwrap();
            let (q, s) = q8.tensors();
            assert!(q.equal(&want_q), "{label}: int8 values differ");
            assert!(s.equal(&scale), "{label}: int8 scales differ");
            // int4, group 64: q = round((w - min) / scale) in [0, 15], the even k in the
            // high nibble; [K/g, N, 2] scales and zeros with zero = min + 8 scale.
            let g = 64;
            let groups = wf.view([n, k / g, g]);
            let mn = groups.amin([2].as_slice(), true);
            let mx = groups.amax([2].as_slice(), true);
            let step = ((&mx - &mn) / 15.0).clamp_min(1e-6);
            let v = ((&groups - &mn) / &step)
                .round()
                .clamp(0, 15)
                .to_kind(Kind::Uint8)
                .view([n, k / 2, 2]);
            let want_q = v
                .select(2, 0)
                .bitwise_left_shift_tensor_scalar(4)
                .bitwise_or_tensor(&v.select(2, 1));
            let want_s = Tensor::cat(&[&step, &(&mn + &step * 8.0)], 2)
                .transpose(0, 1)
                .contiguous();
            let q4 =
                QuantizedWeight::quantize("w", &w, QuantScheme::Int4 { group_size: g }).unwrap();
            let (q, s) = q4.tensors();
            assert!(q.equal(&want_q), "{label}: int4 values differ");
            assert!(s.equal(&want_s), "{label}: int4 scales and zeros differ");
        }
    }

    /// The forward equals `x @ dequant(W)^T`, and its input gradient autograd's through the
    /// dequantized weight, element by element (1e-5 relative in f32).
    #[test]
    fn forward_and_input_gradient_match_the_dequantized_weight() {
        tch::manual_seed(5);
        // One row runs int8 through libtorch's kernel; up to 512 input rows (1024 in backward)
        // dequantize 128 weight rows at a time (300 out-features: blocks of 128, 128 and 44),
        // more rows the whole layer (2 x 600: whole forward, blocked backward; 1200: both whole).
        let int4 = QuantScheme::Int4 { group_size: 32 };
        let cases = [
            (QuantScheme::Int8, 48, vec![3, 5]),
            (QuantScheme::Int8, 48, vec![1]),
            (QuantScheme::Int8, 300, vec![3, 5]),
            (QuantScheme::Int8, 300, vec![2, 600]),
            (QuantScheme::Int8, 300, vec![1200]),
            (int4, 48, vec![3, 5]),
            (int4, 48, vec![1]),
            (int4, 300, vec![3, 5]),
            (int4, 300, vec![1]),
            (int4, 300, vec![2, 600]),
            (int4, 300, vec![1200]),
        ];
        for (scheme, out, lead) in cases {
            let w = Tensor::randn([out, 128], (Kind::Float, Device::Cpu));
            let qw = QuantizedWeight::quantize("w", &w, scheme).unwrap();
            let dq = qw.dequantize().unwrap();
            let shape = |last: i64| [lead.as_slice(), &[last]].concat();
            let x = Tensor::randn(shape(128), (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let g = Tensor::randn(shape(out), (Kind::Float, Device::Cpu));
            let y = qw.forward(&x);
            assert_eq!(y.size(), shape(out));
            (&y * &g).sum(Kind::Float).backward();
            let gx = x.grad().copy();
            let mut xg = x.grad();
            let _ = xg.zero_();
            let want = x.linear::<&Tensor>(&dq, None);
            (&want * &g).sum(Kind::Float).backward();
            let want_gx = x.grad();
            let rel = |a: &Tensor, b: &Tensor| max_abs(&(a - b)) / max_abs(b);
            assert!(
                rel(&y, &want) < 1e-5,
                "{scheme} [{out}, 128] x {lead:?}: forward {:e}",
                rel(&y, &want)
            );
            assert!(
                rel(&gx, &want_gx) < 1e-5,
                "{scheme} [{out}, 128] x {lead:?}: input gradient {:e}",
                rel(&gx, &want_gx)
            );
            // Without grad mode nothing is recorded; an input that needs no gradient gets none.
            let y = tch::no_grad(|| qw.forward(&x));
            assert!(!y.requires_grad());
        }
    }

    /// Our int4 convention is libtorch's: its CPU int4 kernel, given our values, scales and
    /// zeros, computes `x @ dequant(W)^T` (the CUDA kernel shares the convention).
    #[test]
    fn int4_convention_is_libtorchs() {
        tch::manual_seed(8);
        let w = Tensor::randn([32, 128], (Kind::Float, Device::Cpu));
        for g in [32, 64, 128] {
            let qw =
                QuantizedWeight::quantize("w", &w, QuantScheme::Int4 { group_size: g }).unwrap();
            let (q, sz) = qw.tensors();
            let bytes = q.to_kind(Kind::Int);
            let hi = bytes.floor_divide_scalar(16);
            let lo = bytes.remainder(16);
            let values = Tensor::stack(&[hi, lo], 2).view([32, 128]);
            let packed = values.internal_convert_weight_to_int4pack_for_cpu(2);
            let x = Tensor::randn([5, 128], (Kind::Float, Device::Cpu));
            let theirs = x.internal_weight_int4pack_mm_for_cpu(&packed, g, sz);
            let ours = qw.forward(&x);
            let rel = max_abs(&(&ours - &theirs)) / max_abs(&theirs);
            assert!(rel < 1e-5, "group {g}: {rel:e}");
        }
    }

    #[test]
    fn bf16_forward_matches_the_dequantized_weight() {
        tch::manual_seed(6);
        let w = Tensor::randn([16, 64], (Kind::BFloat16, Device::Cpu));
        for (scheme, rows) in [
            (QuantScheme::Int8, 4),
            (QuantScheme::Int8, 1),
            (QuantScheme::Int4 { group_size: 32 }, 4),
        ] {
            let qw = QuantizedWeight::quantize("w", &w, scheme).unwrap();
            let dq = qw.dequantize().unwrap();
            assert_eq!(dq.kind(), Kind::BFloat16);
            let x = Tensor::randn([rows, 64], (Kind::BFloat16, Device::Cpu));
            let y = qw.forward(&x).to_kind(Kind::Float);
            let want = x
                .to_kind(Kind::Float)
                .linear::<&Tensor>(&dq.to_kind(Kind::Float), None);
            let rel = max_abs(&(&y - &want)) / max_abs(&want);
            assert!(rel < 2e-2, "{scheme}: bf16 forward off by {rel:e}");
        }
    }

    #[test]
    fn a_kernel_error_names_the_layer_shape() {
        let w = Tensor::randn([8, 64], (Kind::Float, Device::Cpu));
        let qw = QuantizedWeight::quantize("w", &w, QuantScheme::Int8).unwrap();
        let x = Tensor::randn([2, 32], (Kind::Float, Device::Cpu));
        let e = qw.f_forward(&x).unwrap_err().to_string();
        assert!(e.contains("[8, 64]") && e.contains("[2, 32]"), "{e}");
    }
}
