//! The peer protocol: what two replicas say to each other, and how it travels.
//!
//! [`messages`] is the message table the replicas speak (explicit codes, hand-framed data,
//! postcard-encoded control). The link beneath it frames, compresses and seals each message.

pub mod compress;
pub mod frame;
pub mod messages;
pub mod seal;
