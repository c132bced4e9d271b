//! What the workspace's tests share; a dev-dependency only, never part of a product crate.

/// The variable under which a missing CUDA device fails a CUDA test instead of skipping it
/// (`gpu-check/run.sh` sets it to 1).
pub const REQUIRE_CUDA: &str = "LORAPLUS_REQUIRE_CUDA";

/// Is a CUDA device present? Without one a CUDA test skips and says so on stderr, unless
/// `LORAPLUS_REQUIRE_CUDA=1`, under which this panics: a GPU check that finds no GPU fails.
pub fn cuda_present() -> bool {
    if tch::Cuda::is_available() {
        return true;
    }
    let required = std::env::var(REQUIRE_CUDA).is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{REQUIRE_CUDA}=1 but libtorch sees no CUDA device"
    );
    eprintln!("CUDA part skipped: no CUDA device ({REQUIRE_CUDA}=1 makes this a failure)");
    false
}
