//! Registry errors: each names the registry URL, model, version or path it is about.

use std::path::PathBuf;

/// Everything that can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The object store could not be read or written (network, permissions, a file where a
    /// directory should be, …). Usually transient or a configuration problem; callers keep
    /// serving what they have.
    #[error("registry {url} is unreachable: {message}")]
    Unreachable {
        /// The registry URL.
        url: String,
        /// What the store said.
        message: String,
    },
    /// The model or version does not exist (or is not published).
    #[error("{0}")]
    NotFound(String),
    /// The version is already published; published versions are immutable.
    #[error("model {name} version {version} is already published in {url}; published versions are never overwritten")]
    AlreadyPublished {
        /// Model name.
        name: String,
        /// Version.
        version: String,
        /// The registry URL.
        url: String,
    },
    /// The bundle failed validation and was not published.
    #[error("bundle {dir} is invalid: {message}")]
    InvalidBundle {
        /// The bundle directory.
        dir: PathBuf,
        /// The problem, naming the file.
        message: String,
    },
    /// The request itself is wrong (bad name, percent out of range, nothing to roll back, …).
    #[error("{0}")]
    BadRequest(String),
    /// Too many writers raced for the same model's history; retrying later will succeed.
    #[error("{0}")]
    Conflict(String),
    /// Something in the store is not what the registry wrote (unparsable JSON, a fetched file
    /// whose checksum differs from PUBLISHED.json).
    #[error("registry {url}: {path}: {message}")]
    Corrupt {
        /// The registry URL.
        url: String,
        /// The object or local file.
        path: String,
        /// What was wrong with it.
        message: String,
    },
}
