//! Build-script helper shared by every loraplus package that links libtorch.
//!
//! Two known tch-rs link problems are solved here, once:
//! - torch-sys's `-Wl,-rpath` does not reach the binaries and test executables of other
//!   packages, so they would need `LD_LIBRARY_PATH` to start. We add an rpath (as RUNPATH, so
//!   an explicit `LD_LIBRARY_PATH`, e.g. on the GPU machine, still wins).
//! - rustc links with `--as-needed`, and since no symbol of `libtorch_cuda.so` is referenced
//!   directly the linker drops it: `tch::Cuda::is_available()` then says false on a GPU
//!   machine. We link it again after `--no-as-needed`.
//!
//! Call [`link_libtorch`] from the `build.rs` of each package that has binaries, tests,
//! examples or benches linking tch.

use std::path::{Path, PathBuf};

/// Where libtorch is: `$LIBTORCH` (set for cargo by `.cargo/config.toml` to `.venv/libtorch`).
pub fn libtorch_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LIBTORCH").map(PathBuf::from)?;
    // Resolve a symlink such as .venv/libtorch so that the rpath stays valid on its own.
    Some(std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// Emit the link arguments for this package's executables. Prints a cargo warning (and
/// nothing else) when libtorch cannot be found: torch-sys then fails with its own message.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(dir) = libtorch_dir() else {
        println!("cargo:warning=LIBTORCH is not set; run `make setup` first");
        return;
    };
    let lib = dir.join("lib");
    if !lib.is_dir() {
        println!(
            "cargo:warning=libtorch lib folder {} not found; run `make setup` first",
            lib.display()
        );
        return;
    }
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if has_lib(&lib, "torch_cuda") {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

fn has_lib(dir: &Path, name: &str) -> bool {
    dir.join(format!("lib{name}.so")).exists()
}

/// Expose the libtorch version (from `$LIBTORCH/version.py` or `build-version`) to the crate as
/// the compile-time variable `LORAPLUS_LIBTORCH_VERSION`.
pub fn emit_libtorch_version() {
    let Some(dir) = libtorch_dir() else { return };
    for file in ["version.py", "build-version"] {
        let path = dir.join(file);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let version = text
                .lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .unwrap_or(text.lines().next().unwrap_or(""))
                .trim()
                .trim_matches('\'')
                .trim_matches('"')
                .to_string();
            if !version.is_empty() {
                println!("cargo:rustc-env=LORAPLUS_LIBTORCH_VERSION={version}");
                return;
            }
        }
    }
}
