//! Local mode: functions on the same node exchange bytes through a shared
//! memory segment, one copy per side.
//!
//! A caller connects to the serving function's Unix socket once, passing a
//! sealed memfd [`segment`] with two [`ring`]s (request, reply) of fixed-size
//! slots; the socket then tells each side when the other is gone, and
//! carries the sealed pages of messages given as pages ([`given`]). Bytes
//! go caller memory -> slot -> callee memory, chunk by chunk, so the two
//! copies of a large payload run at the same time on two cores. Wake-ups are
//! a short spin then a futex on a shared counter: a small call costs no
//! syscall when both sides are running, and two `futex` calls when one sleeps.

mod client;
mod futex;
mod given;
mod handshake;
mod listener;
mod ring;
mod segment;
mod transport;

pub use client::LocalChannel;
pub use futex::SPIN_ENV;
pub(crate) use futex::spin_for;
pub use listener::{LocalListener, LocalRequest};
pub use transport::LocalTransport;
