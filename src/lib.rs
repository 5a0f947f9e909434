//! ringsq: a thread-per-core, io_uring drop-in replacement for nsqd.
//!
//! The path of a message (see README.md "Architecture"):
//! `conn` decodes a command with `protocol`, `route` finds the topic's core
//! and forwards it over an SPSC ring if needed, `shard` (topic → channels)
//! queues it and delivers it to subscribers whose connections live on the
//! same core. `runtime` starts the pinned executors; `config` holds nsqd's
//! flags; `lookup` keeps nsqlookupd told what topics and channels exist.

pub mod config;
pub mod conn;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod http;
pub mod hugepages;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod protocol;
pub mod route;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod stats;
pub mod storage;
pub mod system;
