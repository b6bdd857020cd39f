//! Block frontends for tandem volumes: the NBD server and the ublk target.
//!
//! Both frontends turn client block requests into `engine` client requests and complete them with
//! the engine's results. The NBD server is [`nbd`]; the ublk target arrives in a later issue.

pub mod nbd;
