//! What the core integration tests share.

/// Is a CUDA device present? Without one a CUDA test skips (and says so), unless
/// `LORAPLUS_REQUIRE_CUDA=1` (set by `gpu-check/run.sh`), which makes that a failure.
pub fn cuda_present() -> bool {
    if tch::Cuda::is_available() {
        return true;
    }
    let required = std::env::var("LORAPLUS_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "LORAPLUS_REQUIRE_CUDA=1 but libtorch sees no CUDA device"
    );
    eprintln!("skipped: no CUDA device (LORAPLUS_REQUIRE_CUDA=1 makes this a failure)");
    false
}
