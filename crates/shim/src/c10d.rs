//! The C ABI of `c10d.cpp` (for `loraplus-dist`, which wraps it safely). Every fallible
//! function returns NULL or a malloc'd message, freed with [`lpd_free_error`].

use std::ffi::{c_char, c_int};

/// Opaque: a `c10::intrusive_ptr<c10d::Store>`.
#[repr(C)]
pub struct RawStore {
    _private: [u8; 0],
}

/// Opaque: a `c10::intrusive_ptr<c10d::Backend>`.
#[repr(C)]
pub struct RawGroup {
    _private: [u8; 0],
}

/// What tch's `Tensor::as_mut_ptr` points to: a `torch::Tensor` (= `at::Tensor`), which the
/// shim reads as `at::Tensor*`.
pub type RawTensor = std::ffi::c_void;

extern "C" {
    pub fn lpd_free_error(msg: *mut c_char);
    pub fn lpd_has_nccl() -> c_int;
    pub fn lpd_store_new(
        host: *const c_char,
        port: u16,
        world_size: i64,
        is_server: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut RawStore,
    ) -> *mut c_char;
    pub fn lpd_store_free(store: *mut RawStore);
    pub fn lpd_store_add(
        store: *mut RawStore,
        key: *const c_char,
        delta: i64,
        result: *mut i64,
    ) -> *mut c_char;
    pub fn lpd_pg_new_gloo(
        store: *mut RawStore,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        hostname: *const c_char,
        threads: c_int,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    pub fn lpd_pg_new_nccl(
        store: *mut RawStore,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    pub fn lpd_pg_free(pg: *mut RawGroup);
    pub fn lpd_pg_allreduce(
        pg: *mut RawGroup,
        tensors: *const *mut RawTensor,
        n: usize,
        op: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub fn lpd_pg_allreduce_coalesced(
        pg: *mut RawGroup,
        tensors: *const *mut RawTensor,
        n: usize,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub fn lpd_pg_broadcast(
        pg: *mut RawGroup,
        tensor: *mut RawTensor,
        root: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub fn lpd_pg_allgather(
        pg: *mut RawGroup,
        input: *mut RawTensor,
        outputs: *const *mut RawTensor,
        n: usize,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub fn lpd_pg_barrier(pg: *mut RawGroup, timeout_ms: i64) -> *mut c_char;
}
