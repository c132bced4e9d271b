//! Where data, tokenizer and cache live by default, each overridable by an environment variable.
//!
//! | what | variable | default |
//! |---|---|---|
//! | GLUE data (`<dir>/<TASK>/*.tsv`) | `GLUE_DIR` | `<repo>/../shared/glue` |
//! | model folder with `tokenizer.json` | `LORAPLUS_MODEL_DIR` | `<repo>/.venv/minilm` (made by `make setup`) |
//! | tokenization cache | `LORAPLUS_CACHE_DIR` | `<repo>/.cache/tokenized` (git-ignored) |
//!
//! `<repo>` is the workspace root this crate was built in.

use std::path::PathBuf;

/// The workspace root this crate was compiled in.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // crates/data -> repo root
    manifest
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The GLUE data folder: `$GLUE_DIR`, else `<repo>/../shared/glue`.
pub fn glue_dir() -> PathBuf {
    from_env("GLUE_DIR").unwrap_or_else(|| repo_root().join("..").join("shared").join("glue"))
}

/// The model folder: `$LORAPLUS_MODEL_DIR`, else `<repo>/.venv/minilm`.
pub fn model_dir() -> PathBuf {
    from_env("LORAPLUS_MODEL_DIR").unwrap_or_else(|| repo_root().join(".venv").join("minilm"))
}

/// `tokenizer.json` of the model folder.
pub fn tokenizer_path() -> PathBuf {
    model_dir().join("tokenizer.json")
}

/// The tokenization cache folder: `$LORAPLUS_CACHE_DIR`, else `<repo>/.cache/tokenized`.
pub fn cache_dir() -> PathBuf {
    from_env("LORAPLUS_CACHE_DIR").unwrap_or_else(|| repo_root().join(".cache").join("tokenized"))
}
