//! Weight-only quantized linear layers (`quant.cpp`): quantize, dequantize, and the forward
//! whose autograd function gives the input gradient from the quantized weight, one layer at a
//! time. `loraplus-core` wraps these in typed values; the formats are described there.

use std::ffi::{c_char, c_int, CStr};

use tch::Tensor;

/// The C++ side's scheme ids.
pub const INT8: i32 = 1;
/// See [`INT8`].
pub const INT4: i32 = 2;

/// An `at::Tensor` (what tch's `C_tensor` is).
type RawTensor = std::ffi::c_void;

extern "C" {
    fn lps_free_error(msg: *mut c_char);
    fn lps_quantize(
        w: *const RawTensor,
        scheme: c_int,
        group: i64,
        q_out: *mut *mut RawTensor,
        s_out: *mut *mut RawTensor,
    ) -> *mut c_char;
    fn lps_dequantize(
        q: *const RawTensor,
        s: *const RawTensor,
        scheme: c_int,
        group: i64,
        out: *mut *mut RawTensor,
    ) -> *mut c_char;
    fn lps_quant_linear(
        x: *const RawTensor,
        q: *const RawTensor,
        s: *const RawTensor,
        scheme: c_int,
        group: i64,
        out: *mut *mut RawTensor,
    ) -> *mut c_char;
}

fn check(ret: *mut c_char) -> Result<(), String> {
    if ret.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim, freed once here.
    let msg = unsafe { CStr::from_ptr(ret) }
        .to_string_lossy()
        .trim()
        .to_string();
    unsafe { lps_free_error(ret) };
    Err(msg)
}

/// Takes over a tensor the shim allocated (`new at::Tensor`).
fn owned(ptr: *mut RawTensor) -> Result<Tensor, String> {
    if ptr.is_null() {
        return Err("the shim returned no tensor".into());
    }
    // SAFETY: the shim returns a heap-allocated at::Tensor, which is what tch's C_tensor is;
    // tch frees it on drop.
    Ok(unsafe { Tensor::from_ptr(ptr.cast()) })
}

fn raw(t: &Tensor) -> *const RawTensor {
    t.as_ptr().cast()
}

/// Quantize an `[out, in]` weight: `(q, scales)` (int8) or `(q, scales_and_zeros)` (int4).
pub fn quantize(w: &Tensor, scheme: i32, group: i64) -> Result<(Tensor, Tensor), String> {
    let (mut q, mut s) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: `w` is a live tensor handle; the out pointers are written on success only.
    check(unsafe { lps_quantize(raw(w), scheme, group, &mut q, &mut s) })?;
    Ok((owned(q)?, owned(s)?))
}

/// The `[out, in]` weight in f32.
pub fn dequantize(q: &Tensor, s: &Tensor, scheme: i32, group: i64) -> Result<Tensor, String> {
    let mut out = std::ptr::null_mut();
    // SAFETY: live tensor handles; `out` is written on success only.
    check(unsafe { lps_dequantize(raw(q), raw(s), scheme, group, &mut out) })?;
    owned(out)
}

/// `x @ dequant(W)^T` over `x`'s leading dimensions, differentiable with respect to `x`.
pub fn linear(
    x: &Tensor,
    q: &Tensor,
    s: &Tensor,
    scheme: i32,
    group: i64,
) -> Result<Tensor, String> {
    let mut out = std::ptr::null_mut();
    // SAFETY: live tensor handles; `out` is written on success only.
    check(unsafe { lps_quant_linear(raw(x), raw(q), raw(s), scheme, group, &mut out) })?;
    owned(out)
}
