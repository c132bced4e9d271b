//! The C ABI of the c10d shim (`loraplus-shim`'s `c10d.cpp`), and helpers over it.

use std::ffi::{c_char, CStr};

use tch::Tensor;

pub(crate) use loraplus_shim::c10d::*;

/// Turns a shim return value into `Ok(())` or the C++ message, freeing it.
pub(crate) fn check(ret: *mut c_char) -> Result<(), String> {
    if ret.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim, freed once here.
    let msg = unsafe { CStr::from_ptr(ret) }
        .to_string_lossy()
        .trim()
        .to_string();
    unsafe { lpd_free_error(ret) };
    Err(msg)
}

/// The raw handles of tensors, for a collective that writes into them in place.
pub(crate) fn raw_tensors(tensors: &mut [Tensor]) -> Vec<*mut RawTensor> {
    tensors
        .iter_mut()
        .map(|t| t.as_mut_ptr().cast::<RawTensor>())
        .collect()
}
