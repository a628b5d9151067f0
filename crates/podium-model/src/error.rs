//! Model errors: each names the bundle file or model and what was wrong with it.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A bundle file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A bundle file could not be parsed.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A file's SHA-256 does not match `SHA256SUMS`.
    #[error("{path}: checksum mismatch: SHA256SUMS says {expected}, file has {actual}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Digest listed in SHA256SUMS.
        expected: String,
        /// Digest of the file as read.
        actual: String,
    },
    /// The manifest and the model disagree (input count, kind, …).
    #[error("schema: {0}")]
    Schema(String),
    /// A golden row scored differently from its expected output.
    #[error("{path}: golden row {row}: expected {expected}, model gives {actual}")]
    Golden {
        /// The golden file.
        path: PathBuf,
        /// 1-based data row.
        row: usize,
        /// Expected prediction.
        expected: f64,
        /// Podium's prediction.
        actual: f64,
    },
    /// The input batch is malformed.
    #[error("input: {0}")]
    Input(String),
    /// The model kind is not supported by this build.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ModelError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A parse error in `path`.
    pub fn parse(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::Parse {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
