//! A topic: it stamps ids on published messages and copies each one into
//! every channel (Q1), or holds them while it has no channel or is paused
//! (Q2, Q9).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::channel::Channel;
use super::queue::{Backend, MessageQueue};
use super::ShardConfig;
use crate::protocol::message::{now_nanos, IdGenerator};
use crate::protocol::names::is_ephemeral;
use crate::protocol::Message;
use crate::storage::StorageError;

pub struct Topic {
    pub name: String,
    pub ephemeral: bool,
    pub paused: bool,
    /// Created at run time while nsqlookupds are known: holds its messages
    /// until it has created the channels they know of (L7, Q16).
    pub awaiting_channels: bool,
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
    /// `restore`: open what the disk holds for this topic (start-up).
    pub fn new(name: String, config: &ShardConfig, restore: bool) -> Topic {
        let ephemeral = is_ephemeral(&name);
        // Messages leave a topic's queue for its channels at once: its disk
        // position is consumed when read.
        let backend = Backend::for_queue(config.storage.as_ref(), &name, ephemeral, true, restore);
        Topic {
            queue: MessageQueue::new(config.mem_limit(ephemeral), backend),
            name,
            ephemeral,
            paused: false,
            awaiting_channels: false,
            channels: BTreeMap::new(),
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
        !self.paused && !self.awaiting_channels && !self.channels.is_empty()
    }

    /// Stamps and enqueues a batch; all or nothing is counted as published.
    pub fn publish(
        &mut self,
        bodies: &[Bytes],
        defer: Option<Duration>,
    ) -> Result<(), StorageError> {
        let now = now_nanos();
        for body in bodies {
            let mut msg = Message::new(self.ids.next_id(now), now, body.clone());
            msg.deferred = defer;
            self.message_count += 1;
            self.message_bytes += body.len() as u64;
            if self.pumping() && self.queue.is_empty() {
                self.fan_out(msg, false)?;
            } else {
                self.queue.put(msg)?;
            }
        }
        self.dispatch_all();
        Ok(())
    }

    /// Copies one message into every channel; bodies are shared, not copied.
    /// `held`: the message comes from the topic's own queue and was
    /// acknowledged long ago, so a failing disk must not drop it.
    fn fan_out(&mut self, msg: Message, held: bool) -> Result<(), StorageError> {
        let mut result = Ok(());
        for channel in self.channels.values_mut() {
            let copy = msg.clone();
            match copy.deferred {
                // Durable mode: a DPUB goes to disk with its due time and
                // waits in the channel once read back (Channel::dispatch).
                Some(delay) if !delay.is_zero() && !self.config.durable() => {
                    channel.put_deferred(copy, delay)
                }
                _ => {
                    if held {
                        channel.put_keep(copy);
                    } else if let Err(e) = channel.put(copy) {
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
        // A channel whose disk is failing would take the backlog into
        // memory; it stays on the topic's disk until the channel recovers
        // (its recovery calls this again through `Shard::refilled`).
        if self.channels.values().any(|c| c.disk_failing()) {
            return;
        }
        while let Some(q) = self.queue.pop() {
            if let Err(e) = self.fan_out(q.msg, true) {
                tracing::error!(topic = %self.name, error = %e, "fan-out failed");
            }
        }
        self.dispatch_all();
    }

    /// Q11: drops what the topic holds (channels keep theirs).
    pub fn empty(&mut self) {
        self.queue.clear();
    }

    /// Deleted (Q13): every file of the topic and its channels goes.
    pub fn destroy(&mut self) {
        self.queue.destroy();
        for channel in self.channels.values_mut() {
            channel.destroy();
        }
    }

    /// Clean shutdown (D10): the memory queue goes to disk, and each
    /// channel's memory, in-flight and deferred messages. Returns the disk
    /// queues to close.
    pub fn persist_for_shutdown(&mut self) -> Vec<std::rc::Rc<crate::storage::QueueShared>> {
        let mut queues = Vec::new();
        for channel in self.channels.values_mut() {
            queues.extend(channel.persist_for_shutdown(&self.config));
        }
        let memory = self.queue.drain_memory();
        if let Some(disk) = self.queue.disk() {
            for msg in memory {
                disk.put_always(&msg);
            }
            queues.push(disk.shared().clone());
        }
        queues
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
                Channel::new(&self.name, name.to_string(), &self.config, false),
            );
            self.config.metadata_changed(name);
            self.config.announce(&self.name, Some(name));
            self.pump_held();
        }
        // Just inserted or already present.
        self.channels
            .get_mut(name)
            .expect("channel exists after insert")
    }

    /// Start-up: a channel from nsqd.dat or from files on disk, with its
    /// disk queue and deferred snapshot.
    pub fn restore_channel(&mut self, name: &str) -> &mut Channel {
        if !self.channels.contains_key(name) {
            let channel = Channel::new(&self.name, name.to_string(), &self.config, true);
            self.channels.insert(name.to_string(), channel);
            self.config.announce(&self.name, Some(name));
        }
        self.channels
            .get_mut(name)
            .expect("channel exists after insert")
    }
}
