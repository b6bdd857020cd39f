//! Block frontends for tandem volumes: the NBD server and the ublk target.
//!
//! Both frontends turn client block requests into `engine` client requests and complete them with
//! the engine's results. They arrive in later issues; the crate compiles empty until then.
