//! A topic: it stamps ids on published messages and copies each one into
//! every channel (Q1), or holds them while it has no channel or is paused
//! (Q2, Q9).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::channel::Channel;
use super::queue::{BackendError, MessageQueue};
use super::ShardConfig;
use crate::protocol::message::{now_nanos, IdGenerator};
use crate::protocol::names::is_ephemeral;
use crate::protocol::Message;

pub struct Topic {
    pub name: String,
    pub ephemeral: bool,
    pub paused: bool,
    /// Sorted by name, as /stats lists them.
    pub channels: BTreeMap<String, Channel>,
    /// Messages waiting for a first channel or for unpause.
    queue: MessageQueue,
    ids: IdGenerator,
    config: ShardConfig,
    pub message_count: u64,
    pub message_bytes: u64,
}

impl Topic {
    pub fn new(name: String, config: &ShardConfig) -> Topic {
        let ephemeral = is_ephemeral(&name);
        Topic {
            name,
            ephemeral,
            paused: false,
            channels: BTreeMap::new(),
            queue: MessageQueue::new(config.mem_queue_size, ephemeral),
            ids: IdGenerator::new(config.node_id),
            config: config.clone(),
            message_count: 0,
            message_bytes: 0,
        }
    }

    pub fn depth(&self) -> u64 {
        self.queue.depth()
    }
    pub fn backend_depth(&self) -> u64 {
        self.queue.backend_depth()
    }

    fn pumping(&self) -> bool {
        !self.paused && !self.channels.is_empty()
    }

    /// Stamps and enqueues a batch; all or nothing is counted as published.
    pub fn publish(
        &mut self,
        bodies: &[Bytes],
        defer: Option<Duration>,
    ) -> Result<(), BackendError> {
        let now = now_nanos();
        for body in bodies {
            let mut msg = Message::new(self.ids.next_id(now), now, body.clone());
            msg.deferred = defer;
            self.message_count += 1;
            self.message_bytes += body.len() as u64;
            if self.pumping() && self.queue.is_empty() {
                self.fan_out(msg)?;
            } else {
                self.queue.put(msg)?;
            }
        }
        self.dispatch_all();
        Ok(())
    }

    /// Copies one message into every channel; bodies are shared, not copied.
    fn fan_out(&mut self, msg: Message) -> Result<(), BackendError> {
        let mut result = Ok(());
        for channel in self.channels.values_mut() {
            let copy = msg.clone();
            match copy.deferred {
                Some(delay) if !delay.is_zero() => channel.put_deferred(copy, delay),
                _ => {
                    if let Err(e) = channel.put(copy) {
                        result = Err(e);
                    }
                    // An ephemeral channel's queue may be tiny (it drops
                    // overflow): hand each message to a ready consumer at once.
                    if channel.ephemeral {
                        channel.dispatch();
                    }
                }
            }
        }
        result
    }

    /// Moves held messages into the channels (a first channel appeared, or
    /// the topic was unpaused).
    pub fn pump_held(&mut self) {
        if !self.pumping() {
            return;
        }
        while let Some(msg) = self.queue.pop() {
            if let Err(e) = self.fan_out(msg) {
                tracing::error!(topic = %self.name, error = %e, "fan-out failed");
            }
        }
        self.dispatch_all();
    }

    /// Q11: drops what the topic holds (channels keep theirs).
    pub fn empty(&mut self) {
        self.queue.clear();
    }

    pub fn dispatch_all(&mut self) {
        for channel in self.channels.values_mut() {
            channel.dispatch();
        }
    }

    pub fn get_or_create_channel(&mut self, name: &str) -> &mut Channel {
        if !self.channels.contains_key(name) {
            tracing::info!(topic = %self.name, channel = name, "new channel");
            self.channels.insert(
                name.to_string(),
                Channel::new(
                    name.to_string(),
                    self.config.mem_queue_size,
                    self.config.e2e.as_ref(),
                ),
            );
            self.config.metadata_changed(name);
            self.pump_held();
        }
        // Just inserted or already present.
        self.channels
            .get_mut(name)
            .expect("channel exists after insert")
    }
}
