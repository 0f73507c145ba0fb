//! The WebSocket protocol core: plain code over byte slices, no I/O.
//!
//! Nothing here imports `mio`, reads a clock or touches a socket, so every
//! rule can be unit tested, fuzzed and benchmarked alone (compare quinn-proto:
//! "no networking code").

pub mod client;
pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;
pub mod websocket;

pub use close::{CloseCode, ProtocolError};
pub use frame::{Decoded, OpCode};
pub use websocket::{Event, MessageKind, Role, WebSocket};
