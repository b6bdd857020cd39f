//! Block frontends for tandem volumes: the NBD server and the ublk target.
//!
//! Both frontends turn client block requests into `engine` client requests and complete them
//! with the engine's results, through a [`BlockBackend`]: the NBD server is [`nbd`], the ublk
//! target (`/dev/ublkbN`, Linux 6.0 or later with the module `ublk_drv`) is [`ublk`].

pub mod nbd;
pub mod ublk;

use engine::replica::ClientOp;
use engine::runtime::Completion;

/// What a frontend serves: a tandem volume (or, in tests, memory).
pub trait BlockBackend: Send + Sync + 'static {
    /// The size of the volume in bytes.
    fn size_bytes(&self) -> u64;

    /// Submits a request; `completion` may run on any thread, possibly before `submit` returns.
    /// Offsets and lengths are multiples of 512 and within the volume; reads must complete with
    /// exactly `length` bytes. `submit` should not block for long: frontends call it from their
    /// event loops.
    fn submit(&self, op: ClientOp, completion: Completion);
}
