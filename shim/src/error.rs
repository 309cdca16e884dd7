//! The shim's error type and its mapping onto ttrpc status codes.
//!
//! containerd decides what to do from the code (NotFound after an exit is normal, Unknown is
//! not), so every error carries the right one and a message that names what failed.

use containerd_shim_protos::ttrpc::{self, Code};

/// Everything a Task call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No such container or exec process in this shim.
    #[error("{0}")]
    NotFound(String),
    /// The id is already taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is malformed or asks for something impossible.
    #[error("{0}")]
    InvalidArgument(String),
    /// The process is in the wrong state for the request (e.g. delete while running).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Safehouse (or the installed runsc) does not do this.
    #[error("{0}")]
    Unimplemented(String),
    /// A runsc command failed; the message is runsc's own.
    #[error("runsc {command} {id}: {message}")]
    Runsc {
        /// The subcommand (create, start, kill, ...).
        command: String,
        /// The container id.
        id: String,
        /// runsc's last error message.
        message: String,
        /// The ttrpc code this failure maps to.
        code: Code,
    },
    /// A host operation failed (mount, fifo, socket).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The policy refused the spec (or is itself invalid): the compiler's error, kept whole.
    #[error("refused by policy {policy:?}: {source}", policy = .source.policy())]
    Refused {
        /// The compiler's error.
        #[from]
        source: safehouse_policy::CompileError,
    },
    /// A policy file could not be loaded.
    #[error(transparent)]
    PolicyFile(#[from] safehouse_policy::LoadError),
    /// The runtime config is invalid.
    #[error(transparent)]
    Config(#[from] safehouse_runsc_config::ConfigError),
    /// The installed runsc could not be probed.
    #[error(transparent)]
    Probe(#[from] safehouse_runsc_config::ProbeError),
    /// Anything else, with context.
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ShimError {
        ShimError::Io {
            context: context.into(),
            source,
        }
    }

    /// The ttrpc status code for this error.
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_)
            | ShimError::Refused { .. }
            | ShimError::PolicyFile(_)
            | ShimError::Config(_) => Code::INVALID_ARGUMENT,
            ShimError::Probe(_) => Code::FAILED_PRECONDITION,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Runsc { code, .. } => *code,
            ShimError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Code::NOT_FOUND
            }
            ShimError::Io { .. } | ShimError::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Result alias for the shim.
pub type Result<T> = std::result::Result<T, ShimError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_reach_ttrpc() {
        let e: ttrpc::Error = ShimError::NotFound("container \"x\" not found".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert_eq!(s.message(), "container \"x\" not found");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = ShimError::Runsc {
            command: "start".into(),
            id: "c1".into(),
            message: "invalid argument".into(),
            code: Code::INVALID_ARGUMENT,
        };
        assert_eq!(e.to_string(), "runsc start c1: invalid argument");
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    }
}
