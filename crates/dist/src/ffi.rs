//! The C ABI of `shim.cpp`. Every fallible function returns NULL or a malloc'd message.

use std::ffi::{c_char, c_int, CStr};

use tch::Tensor;

/// Opaque: a `c10::intrusive_ptr<c10d::Store>`.
#[repr(C)]
pub(crate) struct RawStore {
    _private: [u8; 0],
}

/// Opaque: a `c10::intrusive_ptr<c10d::Backend>`.
#[repr(C)]
pub(crate) struct RawGroup {
    _private: [u8; 0],
}

/// What tch's `Tensor::as_mut_ptr` points to: a `torch::Tensor` (= `at::Tensor`), which the
/// shim reads as `at::Tensor*`.
pub(crate) type RawTensor = std::ffi::c_void;

extern "C" {
    fn lpd_free_error(msg: *mut c_char);
    pub(crate) fn lpd_has_nccl() -> c_int;
    pub(crate) fn lpd_store_new(
        host: *const c_char,
        port: u16,
        world_size: i64,
        is_server: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut RawStore,
    ) -> *mut c_char;
    pub(crate) fn lpd_store_free(store: *mut RawStore);
    pub(crate) fn lpd_store_add(
        store: *mut RawStore,
        key: *const c_char,
        delta: i64,
        result: *mut i64,
    ) -> *mut c_char;
    pub(crate) fn lpd_pg_new_gloo(
        store: *mut RawStore,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        hostname: *const c_char,
        threads: c_int,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    pub(crate) fn lpd_pg_new_nccl(
        store: *mut RawStore,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    pub(crate) fn lpd_pg_free(pg: *mut RawGroup);
    pub(crate) fn lpd_pg_allreduce(
        pg: *mut RawGroup,
        tensors: *const *mut RawTensor,
        n: usize,
        op: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub(crate) fn lpd_pg_allreduce_coalesced(
        pg: *mut RawGroup,
        tensors: *const *mut RawTensor,
        n: usize,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub(crate) fn lpd_pg_broadcast(
        pg: *mut RawGroup,
        tensor: *mut RawTensor,
        root: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub(crate) fn lpd_pg_allgather(
        pg: *mut RawGroup,
        input: *mut RawTensor,
        outputs: *const *mut RawTensor,
        n: usize,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub(crate) fn lpd_pg_barrier(pg: *mut RawGroup, timeout_ms: i64) -> *mut c_char;
}

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
