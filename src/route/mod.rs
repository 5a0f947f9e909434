//! Where a message goes: topic → core ownership, the lock-free rings
//! between cores, and the `Broker` handle through which connections and
//! HTTP requests publish, subscribe and administer on whichever core owns
//! the topic.

pub mod broker;
pub mod msg;
pub mod publish;
pub mod ring;

pub use broker::{Broker, BrokerParts};
pub use msg::{AdminOp, AdminReply, AdminRequest, CoreMsg, Handoff, PublishRequest};
pub use publish::{PublishCommand, PublishError, PublishResult, PublishSink, ReplyTo};
pub use ring::{build_mesh, owner_core, CoreWaker, Inbox, Router};
