//! Builds the C++ shim against the torch wheel's headers: `src/quant.cpp` (autograd functions:
//! the quantized linear) always; with feature `c10d`, `src/c10d.cpp` against c10d's headers and
//! Gloo's (Debian's `libgloo-dev`, unpacked by `make setup` into `.deps/gloo`), with the NCCL
//! path wherever CUDA's and NCCL's headers are found next to the wheel.

use std::path::{Path, PathBuf};

/// Where `make setup` unpacks `libgloo-dev`, relative to the workspace root.
const GLOO_SETUP_DIR: &str = ".deps/gloo/usr/include";

fn main() {
    loraplus_build::link_libtorch();
    println!("cargo:rerun-if-changed=src/quant.cpp");
    println!("cargo:rerun-if-changed=src/c10d.cpp");
    println!("cargo:rerun-if-changed=src/guard.h");
    println!("cargo:rerun-if-env-changed=LORAPLUS_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=LORAPLUS_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");

    let Some(torch) = loraplus_build::libtorch_dir() else {
        panic!(
            "LIBTORCH is not set: run `make setup`, which links .venv/libtorch to the torch wheel"
        );
    };
    let lib = torch.join("lib");
    let include = torch.join("include");
    if !include
        .join("torch/csrc/autograd/custom_function.h")
        .exists()
    {
        panic!(
            "{}: no torch/csrc/autograd/custom_function.h in this libtorch; loraplus-shim \
             needs the torch wheel's libtorch with its headers (`make setup`)",
            include.display()
        );
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/quant.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi(&lib)))
        // libtorch's headers are noisy under -Wall; our own code is small.
        .warnings(false);

    let c10d = std::env::var_os("CARGO_FEATURE_C10D").is_some();
    let mut nccl = Err("feature `c10d` is off".to_string());
    if c10d {
        if !include
            .join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
            .exists()
        {
            panic!(
                "{}: no c10d headers (torch/csrc/distributed/c10d/ProcessGroupGloo.hpp) in this \
                 libtorch; feature `c10d` needs the torch wheel's libtorch (`make setup`)",
                include.display()
            );
        }
        let gloo = gloo_include();
        println!("cargo:rerun-if-changed={}", gloo.display());
        build
            .file("src/c10d.cpp")
            .include(&gloo)
            .define("USE_C10D_GLOO", None)
            .define("GLOG_USE_GLOG_EXPORT", None);
        nccl = nccl_includes(&torch, &lib);
        match &nccl {
            Ok(dirs) => {
                for dir in dirs {
                    build.include(dir);
                }
                build
                    .define("USE_C10D_NCCL", None)
                    .define("USE_CUDA", None)
                    .define("LORAPLUS_DIST_NCCL", None);
            }
            Err(why) if std::env::var_os("CARGO_FEATURE_NCCL").is_some() => {
                panic!("feature `nccl` is on but the NCCL path cannot be built: {why}")
            }
            Err(why) => println!("cargo:warning=loraplus-shim: NCCL not built ({why}); Gloo only"),
        }
    }
    build.compile("loraplus_shim");
    // For loraplus-dist's tests/shim_symbols.rs, which checks that no Gloo code was compiled on
    // our side: dependents read it as DEP_LORAPLUS_SHIM_ARCHIVE.
    if let Some(out) = std::env::var_os("OUT_DIR") {
        println!(
            "cargo:archive={}",
            Path::new(&out).join("libloraplus_shim.a").display()
        );
    }

    println!("cargo:rustc-link-search=native={}", lib.display());
    if nccl.is_ok() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// The folder holding `gloo/context.h`: `$LORAPLUS_GLOO_INCLUDE`, else what `make setup`
/// unpacked, else the system's (`apt-get install libgloo-dev`).
fn gloo_include() -> PathBuf {
    let has_gloo = |dir: &Path| dir.join("gloo/context.h").exists();
    if let Some(dir) = std::env::var_os("LORAPLUS_GLOO_INCLUDE").map(PathBuf::from) {
        if !has_gloo(&dir) {
            panic!(
                "LORAPLUS_GLOO_INCLUDE={}: no gloo/context.h there (expected the folder that \
                 holds gloo/)",
                dir.display()
            );
        }
        return dir;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let setup = manifest.join("../..").join(GLOO_SETUP_DIR);
    if has_gloo(&setup) {
        return std::fs::canonicalize(&setup).unwrap_or(setup);
    }
    let system = PathBuf::from("/usr/include");
    if has_gloo(&system) {
        return system;
    }
    panic!(
        "Gloo's headers not found (looked in $LORAPLUS_GLOO_INCLUDE, {} and /usr/include): run \
         `make setup`, which unpacks Debian's libgloo-dev there without root, or set \
         LORAPLUS_GLOO_INCLUDE to the folder holding gloo/",
        setup.display()
    );
}

/// The wheel's C++ ABI: `$LIBTORCH_CXX11_ABI` (as torch-sys reads it), else whether libc10
/// exports symbols of the new `std::__cxx11` strings (what `torch._C._GLIBCXX_USE_CXX11_ABI`
/// reports for the wheel).
fn cxx11_abi(lib: &Path) -> &'static str {
    if let Ok(v) = std::env::var("LIBTORCH_CXX11_ABI") {
        return if v.trim() == "0" { "0" } else { "1" };
    }
    let c10 = lib.join("libc10.so");
    match std::fs::read(&c10) {
        Ok(bytes) => {
            let needle = b"St7__cxx11";
            if bytes.windows(needle.len()).any(|w| w == needle) {
                "1"
            } else {
                "0"
            }
        }
        Err(e) => panic!(
            "{}: {e} (needed to tell the C++ ABI of libtorch)",
            c10.display()
        ),
    }
}

/// Include folders for the NCCL path, or why it cannot be built: libtorch_cuda, CUDA's
/// runtime headers, `crt/host_config.h` (PyPI's `nvidia-cuda-crt`), `nv/target`
/// (`nvidia-cuda-cccl`; the torch wheel depends on neither) and `nccl.h`, from
/// `$LORAPLUS_CUDA_INCLUDE` (colon-separated) and the wheel's `nvidia/*/include` neighbours.
fn nccl_includes(torch: &Path, lib: &Path) -> Result<Vec<PathBuf>, String> {
    if !lib.join("libtorch_cuda.so").exists() {
        return Err(format!("{} has no libtorch_cuda.so", lib.display()));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("LORAPLUS_CUDA_INCLUDE")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Some(site) = torch.parent() {
        let nvidia = site.join("nvidia");
        if nvidia.is_dir() {
            // Headers installed later (`make setup` after a requirements change) rebuild this.
            println!("cargo:rerun-if-changed={}", nvidia.display());
        }
        if let Ok(entries) = std::fs::read_dir(&nvidia) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("include"))
                .filter(|p| p.is_dir())
                .collect();
            found.sort();
            candidates.extend(found);
        }
    }
    let find = |file: &str| candidates.iter().find(|d| d.join(file).exists()).cloned();
    let mut dirs = Vec::new();
    for file in [
        "cuda_runtime_api.h",
        "crt/host_config.h",
        "nv/target",
        "nccl.h",
    ] {
        match find(file) {
            Some(dir) => {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            None => {
                return Err(format!(
                    "no {file} in the wheel's nvidia/*/include folders or \
                     $LORAPLUS_CUDA_INCLUDE"
                ))
            }
        }
    }
    Ok(dirs)
}
