//! Shoal's test harness: locating (and building when missing) the workspace's own binaries,
//! ephemeral Postgres and Redis servers on spare loopback ports, the Fly Machines emulator, a
//! webhook receiver, a recording fake provider, and fixtures. Used by tests only; never by production code.
#![warn(missing_docs)]

pub mod bins;
pub mod fake_provider;
pub mod fly;
pub mod kubelet;
pub mod procfs;
pub mod receiver;
pub mod server;
pub mod services;
