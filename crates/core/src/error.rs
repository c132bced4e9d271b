//! `Error`: what can go wrong in loraplus-core, as variants a caller can match.
//!
//! Each message is the one this crate printed before it had typed errors. A cause (an I/O
//! error, a libtorch error, an inner [`Error`] under [`Error::Context`]) is the error's
//! [`std::error::Error::source`], not part of its own message: print the whole chain with
//! `anyhow`'s `{:#}` (what `?` into `anyhow::Result` gives) or with [`Error::chain`].
//! [`Error::root`] is the innermost loraplus-core error, under any context, to match on.

use std::path::PathBuf;

/// The result of a loraplus-core function.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of loraplus-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor has another shape than its place in the model (`what` names it).
    #[error("{what} has shape {found:?}, expected {expected:?}{hint}")]
    ShapeMismatch {
        /// The tensor, with the file it came from: `adapter_model.safetensors: tensor <key>`.
        what: String,
        /// Its shape.
        found: Vec<i64>,
        /// The shape the model needs.
        expected: Vec<i64>,
        /// What the expected shape means, e.g. ` (r=8, in_features=384)`, or empty.
        hint: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("{file}: missing tensor {key} ({detail})")]
    MissingTensor {
        /// The file.
        file: String,
        /// The tensor's key in the file.
        key: String,
        /// Its role and shape in the model.
        detail: String,
    },
    /// Tensors in the file that the model has no place for.
    #[error("{file}: {} key(s) match no trainable parameter of this model: {} (does the adapter config match the model?)", keys.len(), keys.join(", "))]
    UnexpectedTensors {
        /// The file.
        file: String,
        /// The keys without a place.
        keys: Vec<String>,
    },
    /// A tensor holds NaN or Inf where finite values are required (the message names it).
    #[error("{0}")]
    NonFinite(String),
    /// A PEFT option set in the config that loraplus does not implement (`use_dora`, ...).
    #[error("{key} = {value} is a PEFT feature loraplus does not support")]
    UnsupportedPeftOption {
        /// The config key.
        key: String,
        /// Its value, as JSON.
        value: String,
    },
    /// A config value out of its range or of the wrong kind (the message names the key, the
    /// value found and what is allowed).
    #[error("{0}")]
    BadConfigValue(String),
    /// `target_modules` selects no module of the model (the message lists those that exist).
    #[error("{0}")]
    NoTargetModule(String),
    /// An element type (dtype) this operation cannot use.
    #[error("{0}")]
    UnsupportedDtype(String),
    /// Arguments that do not fit together, or a state that does not allow the call (the
    /// message says which).
    #[error("{0}")]
    InvalidArgument(String),
    /// A quantized base cannot be built or run as asked: no kernel for the scheme on this
    /// device or dtype, or the C++ kernels failed (the message says which layer and why).
    #[error("{0}")]
    Quantization(String),
    /// Adapter weights saved with another config than the model was built with: the same
    /// shapes, but another scaling (`lora_alpha`, `use_rslora`, a pattern), so loading them
    /// would compute another update than the one trained.
    #[error("{}: {}; build the model with this adapter's config (read_adapter_config)", path.display(), fields.join("; "))]
    AdapterConfigMismatch {
        /// The adapter's `adapter_config.json`.
        path: PathBuf,
        /// One line per difference: `lora_alpha: 16 in the file, 64 in the model`.
        fields: Vec<String>,
    },
    /// Reading or writing a file or folder failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done: `reading`, `creating`, ...
        action: String,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what it should be (not safetensors, not a JSON config).
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// JSON that does not parse or does not serialise.
    #[error("{what}")]
    Json {
        /// What was being parsed or written.
        what: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// A libtorch operation failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An error of this crate with where it happened (a file, a tensor).
    #[error("{context}")]
    Context {
        /// Where: a path, `tensor <key>`, ...
        context: String,
        /// The error itself.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// The innermost loraplus-core error under any [`Error::Context`]: the variant to match.
    pub fn root(&self) -> &Error {
        let mut e = self;
        while let Error::Context { source, .. } = e {
            e = source;
        }
        e
    }

    /// The message with every cause after it, joined by `: ` (as `anyhow`'s `{:#}` prints it).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }

    /// This error under `context` (where it happened).
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    pub(crate) fn io(action: &str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            action: action.to_string(),
            path: path.into(),
            source,
        }
    }
}

/// `.with_context(..)` on this crate's results, as `anyhow::Context` has it.
pub(crate) trait ResultExt<T> {
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// An I/O result with the action and path it concerns.
pub(crate) trait IoResultExt<T> {
    fn io_context(self, action: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoResultExt<T> for std::io::Result<T> {
    fn io_context(self, action: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoraBuilder, LoraConfig};

    #[test]
    fn errors_are_variants_to_match() {
        let e = LoraConfig::from_json_str(r#"{"use_dora": true}"#).unwrap_err();
        assert!(
            matches!(e.root(), Error::UnsupportedPeftOption { key, .. } if key == "use_dora"),
            "{e:?}"
        );
        let e = LoraConfig::from_json_str(r#"{"r": 0}"#).unwrap_err();
        assert!(matches!(e.root(), Error::BadConfigValue(_)), "{e:?}");
        assert_eq!(e.to_string(), "r must be at least 1, found 0");
        let e = LoraConfig::from_json_str("{").unwrap_err();
        assert!(matches!(e, Error::Json { .. }), "{e:?}");
        assert!(
            e.chain().starts_with("parsing adapter config JSON: "),
            "{e}"
        );

        let dir = std::env::temp_dir().join("loraplus-core-error-test-no-such-dir");
        let e = crate::read_adapter_config(&dir).unwrap_err();
        match &e {
            Error::Io {
                action,
                path,
                source,
            } => {
                assert_eq!(action, "reading adapter config");
                assert_eq!(path, &dir.join(crate::ADAPTER_CONFIG));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Error::Io, found {other:?}"),
        }
        // `{:#}` through anyhow prints the chain, as before typed errors.
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert!(
            chain.contains("reading adapter config") && chain.contains(": "),
            "{chain}"
        );

        let b = LoraBuilder::new(LoraConfig::new(4, 8.0, &["query"])).unwrap();
        let e = b.finish().unwrap_err();
        assert!(matches!(e, Error::NoTargetModule(_)), "{e:?}");

        // An error under a file's context still matches at its root.
        let path =
            std::env::temp_dir().join(format!("loraplus-core-error-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"lora_dropout": 1.5}"#).unwrap();
        let e = LoraConfig::from_file(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(matches!(e, Error::Context { .. }));
        assert!(matches!(e.root(), Error::BadConfigValue(m) if m.contains("lora_dropout")));
        assert!(
            e.chain().contains(&path.display().to_string()),
            "{}",
            e.chain()
        );
    }
}
