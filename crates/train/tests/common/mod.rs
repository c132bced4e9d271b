//! Helpers shared by this crate's integration tests (each test file includes it as a module).

use std::path::{Path, PathBuf};

/// MiniLM with its dropout off (same weights, linked): runs compared number for number (1 and
/// 2 ranks, accumulation and one big batch) then see the same function, whatever masks each
/// would draw.
pub fn minilm_without_dropout(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/minilm");
    let out = dir.join("minilm");
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_owned();
        if name == "config.json" {
            let mut cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            cfg["hidden_dropout_prob"] = 0.0.into();
            cfg["attention_probs_dropout_prob"] = 0.0.into();
            std::fs::write(out.join(name), cfg.to_string()).unwrap();
        } else if f.is_file() {
            std::os::unix::fs::symlink(std::fs::canonicalize(&f).unwrap(), out.join(name)).unwrap();
        }
    }
    out
}
