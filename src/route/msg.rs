//! What travels between cores over the rings.

use std::any::Any;
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;

use super::publish::PublishError;
use crate::shard::AdminError;
use crate::stats::{CoreStats, StatsFilter};
use crate::storage::metadata::TopicMeta;

/// A batch of messages for one topic, published on its owning core. The
/// owner answers with `CoreMsg::Replies` on the ring back to `from`.
pub struct PublishRequest {
    pub topic: Bytes,
    pub bodies: Vec<Bytes>,
    pub defer: Option<Duration>,
    pub from: usize,
    /// The sender's handle for the reply (route::publish::Pending).
    pub token: u64,
}

/// Answers to forwarded publishes, in the order the owner finished them.
pub type PublishReplies = Vec<(u64, Result<(), PublishError>)>;

/// A connection moving to another core, so that delivery, in-flight and
/// timeouts stay core-local. Only the connection layer knows what `state`
/// holds; the ring just carries it.
pub struct Handoff {
    /// The socket, duplicated for the receiving core; closed if the
    /// hand-off is dropped (shutdown) instead of resumed.
    pub fd: OwnedFd,
    pub state: Box<dyn Any + Send>,
}

/// Operator actions (HTTP API), run on the core that owns the topic, and
/// /stats, run on every core.
#[derive(Debug, Clone)]
pub enum AdminOp {
    Stats(StatsFilter),
    /// This core's topics and channels for nsqd.dat.
    Metadata,
    CreateTopic(String),
    DeleteTopic(String),
    EmptyTopic(String),
    PauseTopic(String, bool),
    CreateChannel(String, String),
    DeleteChannel(String, String),
    EmptyChannel(String, String),
    PauseChannel(String, String, bool),
}

impl AdminOp {
    /// The topic whose core must run this; None for every core.
    pub fn topic(&self) -> Option<&str> {
        match self {
            AdminOp::Stats(_) | AdminOp::Metadata => None,
            AdminOp::CreateTopic(t)
            | AdminOp::DeleteTopic(t)
            | AdminOp::EmptyTopic(t)
            | AdminOp::PauseTopic(t, _)
            | AdminOp::CreateChannel(t, _)
            | AdminOp::DeleteChannel(t, _)
            | AdminOp::EmptyChannel(t, _)
            | AdminOp::PauseChannel(t, _, _) => Some(t),
        }
    }
}

#[derive(Debug)]
pub enum AdminReply {
    Done(Result<(), AdminError>),
    Stats(CoreStats),
    Metadata(Vec<TopicMeta>),
}

/// Admin calls are rare: their answer comes back on a oneshot.
pub struct AdminRequest {
    pub op: AdminOp,
    pub reply: oneshot::Sender<AdminReply>,
}

pub enum CoreMsg {
    Publish(PublishRequest),
    Replies(PublishReplies),
    Handoff(Handoff),
    Admin(AdminRequest),
}
