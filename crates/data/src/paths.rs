//! Where data, tokenizer and cache live by default, each overridable by an environment variable
//! and found at run time (never from where the crate was compiled).
//!
//! | what | variable | default |
//! |---|---|---|
//! | GLUE data (`<dir>/<TASK>/*.tsv`) | `GLUE_DIR` | the first `../shared/glue` seen from the current directory or an ancestor |
//! | model folder with `tokenizer.json` | `LORAPLUS_MODEL_DIR` | the first `.venv/minilm` in the current directory or an ancestor (made by `make setup`) |
//! | tokenization cache | `LORAPLUS_CACHE_DIR` | `$XDG_CACHE_HOME/loraplus/tokenized`, else `~/.cache/loraplus/tokenized` |
//!
//! When a search finds nothing the path relative to the current directory is returned, and
//! reading it fails naming it.

use std::path::{Path, PathBuf};

/// Environment variable for the GLUE data folder.
pub const GLUE_DIR_ENV: &str = "GLUE_DIR";
/// Environment variable for the model folder.
pub const MODEL_DIR_ENV: &str = "LORAPLUS_MODEL_DIR";
/// Environment variable for the tokenization cache folder.
pub const CACHE_DIR_ENV: &str = "LORAPLUS_CACHE_DIR";

/// The current directory's nearest ancestor (itself included) that has an ancestor-relative
/// folder `rel`, as that joined path; `rel` itself when none has it.
fn search_up(rel: &str) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| cwd.ancestors().map(|a| a.join(rel)).find(|p| p.is_dir()))
        .unwrap_or_else(|| PathBuf::from(rel))
}

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The GLUE data folder: `$GLUE_DIR`, else `../shared/glue` from the current directory or
/// its nearest ancestor that has one.
pub fn glue_dir() -> PathBuf {
    from_env(GLUE_DIR_ENV).unwrap_or_else(|| search_up("../shared/glue"))
}

/// The model folder: `$LORAPLUS_MODEL_DIR`, else `.venv/minilm` in the current directory or
/// its nearest ancestor that has one.
pub fn model_dir() -> PathBuf {
    from_env(MODEL_DIR_ENV).unwrap_or_else(|| search_up(".venv/minilm"))
}

/// `tokenizer.json` of the model folder.
pub fn tokenizer_path() -> PathBuf {
    model_dir().join("tokenizer.json")
}

/// The tokenization cache folder: `$LORAPLUS_CACHE_DIR`, else `loraplus/tokenized` under the
/// user's cache directory (`$XDG_CACHE_HOME`, else `$HOME/.cache`; the system's temporary
/// folder when neither is set).
pub fn cache_dir() -> PathBuf {
    from_env(CACHE_DIR_ENV).unwrap_or_else(|| user_cache_dir().join("loraplus").join("tokenized"))
}

fn user_cache_dir() -> PathBuf {
    from_env("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| from_env("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
}
