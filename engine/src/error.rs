//! The engine's error type.
//!
//! Operating errors (bad input, I/O failures, damaged metadata) are values of [`Error`]; broken
//! invariants are programmer errors and panic.

/// Everything that can go wrong in the engine that a caller must handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backing store holds no tandem metadata where it should be.
    #[error("no tandem metadata found: {0}")]
    NoMetadata(String),
    /// The metadata exists but is damaged beyond what recovery can repair.
    #[error("metadata corrupt: {0}")]
    MetadataCorrupt(String),
    /// The metadata was written by a format version this build cannot read.
    #[error(
        "metadata format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The version on disk.
        found: u32,
        /// The version this build writes and reads.
        supported: u32,
    },
    /// The backing store cannot hold the data area and the metadata.
    #[error("backing store too small: {have_bytes} bytes, needs at least {need_bytes}")]
    TooSmall {
        /// Size of the backing store.
        have_bytes: u64,
        /// Smallest size that works with the requested layout.
        need_bytes: u64,
    },
    /// Creating metadata would overwrite something that is already there.
    #[error("{0}; use --force to overwrite it")]
    ForeignContent(String),
    /// A parameter is out of its allowed range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

impl Error {
    /// An [`Error::Io`] with its context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
