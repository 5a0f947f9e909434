//! Protocol V2: the codec, frames, message layout, IDENTIFY and the `E_*`
//! error codes. No I/O here: `conn` owns the sockets.

pub mod auth;
pub mod codec;
mod commands;
pub mod error;
pub mod gojson;
pub mod identify;
pub mod message;
pub mod mpub;
pub mod names;
#[cfg(test)]
mod proptests;

pub use codec::{decode, Command, ConnState, DecodeContext, DecodeError};
pub use error::{ClientError, ErrorCode};
pub use message::{Message, MessageId};

/// The 4-byte magic a V2 client sends first (T2).
pub const MAGIC_V2: &[u8; 4] = b"  V2";
