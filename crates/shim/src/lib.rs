//! loraplus-shim: the one C++ shim of loraplus, compiled by `build.rs` with the `cc` crate
//! against the torch wheel's headers (with the wheel's C++ ABI, read from `libc10.so`) and
//! linked to its libraries. A `tch::Tensor` is a handle to a `torch::Tensor`, so tensors pass
//! by handle, without copies.
//!
//! - [`quant`] (`src/quant.cpp`, always built): weight-only int8/int4 quantization and a
//!   `torch::autograd::Function` for the quantized linear, whose backward gives the input
//!   gradient from the quantized weight (tch cannot define autograd functions). Used by
//!   `loraplus-core`'s quantized base.
//! - `c10d` (`src/c10d.cpp`, feature `c10d`): PyTorch's c10d TCPStore and process groups
//!   (Gloo; NCCL where its headers are found), as a raw C ABI that `loraplus-dist` wraps.
//!
//! Errors come back as the C++ message (`c10::Error` without its backtrace).

pub mod quant;

#[cfg(feature = "c10d")]
#[allow(missing_docs)]
pub mod c10d;
