//! Links libtorch for the tests, and passes the C++ shim's archive (built by `loraplus-shim`
//! with feature `c10d`) to `tests/shim_symbols.rs`.

fn main() {
    loraplus_build::link_libtorch();
    println!("cargo:rerun-if-env-changed=DEP_LORAPLUS_SHIM_ARCHIVE");
    if let Ok(archive) = std::env::var("DEP_LORAPLUS_SHIM_ARCHIVE") {
        println!("cargo:rustc-env=LORAPLUS_DIST_SHIM_ARCHIVE={archive}");
    }
}
