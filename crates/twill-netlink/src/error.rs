//! The one error type of this crate.

use nix::errno::Errno;

/// What can go wrong talking rtnetlink.
///
/// Kernel refusals keep the errno and a description of the request that
/// failed, so callers can treat `EEXIST` / `ENOENT` as success
/// ([`NetlinkError::is_exists`], [`NetlinkError::is_not_found`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The kernel answered a request with a negative errno.
    #[error("{request}: {} (errno {errno})", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The request, written like an `ip`/`bridge` command.
        request: String,
        /// The positive errno (e.g. 17 for `EEXIST`).
        errno: i32,
    },
    /// A socket call (socket, bind, send, recv, setsockopt) failed.
    #[error("netlink socket {op}: {source}")]
    Socket {
        /// Which call failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A request could not be serialised (a value out of range for the wire).
    #[error("cannot encode {request}: {reason}")]
    Encode {
        /// The request.
        request: String,
        /// Why.
        reason: String,
    },
    /// The kernel's answer could not be parsed.
    #[error("cannot decode netlink answer to {request}: {reason}")]
    Decode {
        /// The request the answer belonged to.
        request: String,
        /// Why.
        reason: String,
    },
    /// A lookup found nothing (e.g. no link of that name).
    #[error("not found: {0}")]
    NotFound(String),
    /// An invalid argument was given (e.g. an interface name longer than 15 bytes).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl NetlinkError {
    /// The kernel errno, when this is a kernel refusal.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// `EEXIST`: the object already exists.
    #[must_use]
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST as i32)
    }

    /// `ENOENT` / `ESRCH` / `ENODEV` (what the kernel answers deleting a missing
    /// neighbour, route or link), or a failed lookup.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
            || self.errno().is_some_and(|e| {
                e == Errno::ENOENT as i32 || e == Errno::ESRCH as i32 || e == Errno::ENODEV as i32
            })
    }
}
