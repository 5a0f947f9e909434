//! Channel and topic behaviour driven through the shard as a connection
//! drives it, against fake consumer sinks: no sockets, no executor, no
//! storage (`ShardConfig::default()` keeps overflow in memory).

mod channel;
mod topic;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{Announce, ClientInfo, ConsumerSink, Shard, ShardConfig, Subscriber};
use crate::protocol::identify::ClientSettings;
use crate::protocol::{ConnState, Message, MessageId};

/// A consumer connection that records what it was given.
#[derive(Default)]
pub struct FakeSink {
    pub delivered: RefCell<Vec<Message>>,
    pub flushes: Cell<u32>,
    pub dead: Cell<bool>,
}

impl ConsumerSink for FakeSink {
    fn push_message(&self, msg: &Message) {
        self.delivered.borrow_mut().push(msg.clone());
    }
    fn flush_soon(&self) {
        self.flushes.set(self.flushes.get() + 1);
    }
    fn is_dead(&self) -> bool {
        self.dead.get()
    }
}

impl FakeSink {
    /// Bodies delivered so far, as text.
    pub fn bodies(&self) -> Vec<String> {
        self.delivered
            .borrow()
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    }
    pub fn ids(&self) -> Vec<MessageId> {
        self.delivered.borrow().iter().map(|m| m.id).collect()
    }
    /// The id of the `n`th delivery.
    pub fn id(&self, n: usize) -> MessageId {
        self.delivered.borrow()[n].id
    }
    pub fn count(&self) -> usize {
        self.delivered.borrow().len()
    }
}

/// What the shard told "nsqlookupd", in order.
#[derive(Default)]
pub struct FakeAnnounce {
    pub events: RefCell<Vec<String>>,
    /// Whether new topics must wait for a channel list (L7).
    pub lookupds_known: bool,
}

impl Announce for FakeAnnounce {
    fn register(&self, topic: &str, channel: Option<&str>) {
        self.events
            .borrow_mut()
            .push(format!("+{topic}:{}", channel.unwrap_or("")));
    }
    fn unregister(&self, topic: &str, channel: Option<&str>) {
        self.events
            .borrow_mut()
            .push(format!("-{topic}:{}", channel.unwrap_or("")));
    }
    fn request_channels(&self, topic: &str) -> bool {
        self.events.borrow_mut().push(format!("?{topic}"));
        self.lookupds_known
    }
}

pub const MSG_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_MSG_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A shard without storage whose memory queues hold `mem_queue_size`.
pub fn shard_with(mem_queue_size: usize) -> Shard {
    Shard::new(
        0,
        ShardConfig {
            mem_queue_size,
            ..ShardConfig::default()
        },
    )
}

pub fn shard() -> Shard {
    shard_with(10_000)
}

fn settings() -> ClientSettings {
    ClientSettings {
        client_id: "test".into(),
        hostname: "test".into(),
        user_agent: String::new(),
        heartbeat_interval: None,
        output_buffer_size: 16 * 1024,
        output_buffer_timeout: Duration::from_millis(250),
        sample_rate: 0,
        msg_timeout: MSG_TIMEOUT,
        tls: None,
    }
}

/// A consumer with RDY `rdy`, as SUB builds it (no socket: fd -1).
pub fn consumer(id: u64, rdy: i64) -> (Rc<Subscriber>, Rc<FakeSink>) {
    let info = Rc::new(ClientInfo {
        id,
        remote: format!("127.0.0.1:{id}"),
        connected_at: SystemTime::now(),
        fd: Cell::new(-1),
        settings: RefCell::new(settings()),
        state: Cell::new(ConnState::Subscribed),
        pub_counts: RefCell::new(Vec::new()),
        auth: Default::default(),
        deflate: Cell::new(false),
        snappy: Cell::new(false),
    });
    let sink = Rc::new(FakeSink::default());
    let sub = Rc::new(Subscriber::new(info, sink.clone(), MSG_TIMEOUT, 0));
    sub.rdy.set(rdy);
    (sub, sink)
}

/// SUB on `topic`/`channel`, then RDY `rdy` as a connection handles it
/// (set the window, dispatch).
pub fn subscribe(shard: &mut Shard, topic: &str, channel: &str, id: u64, rdy: i64) -> Rc<FakeSink> {
    let (sub, sink) = consumer(id, 0);
    shard
        .subscribe(topic, channel, sub.clone())
        .expect("no consumer limit");
    rdy_of(shard, topic, channel, &sub, rdy);
    sink
}

/// RDY `rdy` from `sub`.
pub fn rdy_of(shard: &mut Shard, topic: &str, channel: &str, sub: &Subscriber, rdy: i64) {
    sub.rdy.set(rdy);
    if let Some(ch) = shard.channel_mut(topic, channel) {
        ch.dispatch();
    }
}

/// PUB of each body in turn.
pub fn publish(shard: &mut Shard, topic: &str, bodies: &[&str]) {
    for b in bodies {
        shard
            .publish(topic, &[Bytes::copy_from_slice(b.as_bytes())], None)
            .expect("memory queue");
    }
}

/// The bodies "0", "1", ... "n-1".
pub fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
