//! What one core owns: its topics, their channels, queues, in-flight and
//! deferred state. Only the owning core touches a shard, so there are no
//! locks; other cores reach it through `route`.

pub mod announce;
pub mod channel;
pub mod client;
pub mod e2e;
pub mod queue;
pub mod sink;
pub mod topic;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use announce::Announce;
pub use channel::{Channel, InFlightError, Subscriber};
pub use client::{ClientAuth, ClientInfo};
pub use sink::ConsumerSink;
pub use topic::Topic;

use crate::protocol::{ClientError, ErrorCode};
use crate::stats::{ChannelStats, E2eLatency, StatsFilter, TopicStats};
use crate::storage::metadata::{ChannelMeta, TopicMeta};
use crate::storage::StorageError;
use e2e::{result_of, E2eConfig, E2eWindow};

/// The flags a shard's topics and channels are built with.
#[derive(Clone, Default)]
pub struct ShardConfig {
    /// The core's disk storage; None only in unit tests.
    pub storage: Option<Rc<crate::storage::CoreStorage>>,
    pub node_id: u16,
    pub mem_queue_size: usize,
    /// 0: unlimited.
    pub max_channel_consumers: usize,
    pub e2e: Option<E2eConfig>,
    /// Set when a topic or channel that belongs in nsqd.dat comes or goes.
    pub metadata_dirty: Arc<AtomicBool>,
    /// Tells nsqlookupd what comes and goes (L5) and asks it for a new
    /// topic's channels (L7); None in unit tests.
    pub lookup: Option<Rc<dyn Announce>>,
}

impl ShardConfig {
    pub fn from_options(
        o: &crate::config::Options,
        node_id: u16,
        metadata_dirty: Arc<AtomicBool>,
        storage: Option<Rc<crate::storage::CoreStorage>>,
        lookup: Option<Rc<dyn Announce>>,
    ) -> ShardConfig {
        ShardConfig {
            storage,
            lookup,
            metadata_dirty,
            node_id,
            mem_queue_size: o.mem_queue_size.max(0) as usize,
            max_channel_consumers: o.max_channel_consumers.max(0) as usize,
            e2e: (!o.e2e_processing_latency_percentile.is_empty()).then(|| E2eConfig {
                percentiles: o.e2e_processing_latency_percentile.clone(),
                window: o.e2e_processing_latency_window_time,
            }),
        }
    }
}

impl ShardConfig {
    /// The memory part of a queue. In durable mode (--sync-every=1) every
    /// message of a normal topic or channel goes through disk, so that an
    /// OK always means "on disk".
    pub fn mem_limit(&self, ephemeral: bool) -> usize {
        let durable = self.storage.as_ref().is_some_and(|s| s.config.durable());
        if durable && !ephemeral {
            0
        } else {
            self.mem_queue_size
        }
    }

    /// --sync-every=1: every acknowledged message is on disk.
    pub fn durable(&self) -> bool {
        self.storage.as_ref().is_some_and(|s| s.config.durable())
    }

    /// L5: a topic (channel None) or channel now exists.
    pub fn announce(&self, topic: &str, channel: Option<&str>) {
        if let Some(a) = &self.lookup {
            a.register(topic, channel);
        }
    }

    /// L5: a topic (channel None) or channel was deleted.
    pub fn withdraw(&self, topic: &str, channel: Option<&str>) {
        if let Some(a) = &self.lookup {
            a.unregister(topic, channel);
        }
    }

    /// L7: true if a topic created at run time must wait for nsqlookupd's
    /// list of its channels.
    pub fn request_channels(&self, topic: &str) -> bool {
        self.lookup
            .as_ref()
            .is_some_and(|a| a.request_channels(topic))
    }

    /// D2: creating or deleting a non-ephemeral topic or channel rewrites
    /// the metadata file (soon, from core 0).
    pub fn metadata_changed(&self, name: &str) {
        if !crate::protocol::names::is_ephemeral(name) {
            self.metadata_dirty.store(true, Ordering::Release);
        }
    }
}

pub struct Shard {
    pub core: usize,
    config: ShardConfig,
    pub topics: HashMap<String, Topic>,
}

impl Shard {
    pub fn new(core: usize, config: ShardConfig) -> Shard {
        Shard {
            core,
            config,
            topics: HashMap::new(),
        }
    }

    pub fn get_or_create_topic(&mut self, name: &str) -> &mut Topic {
        if !self.topics.contains_key(name) {
            tracing::info!(topic = name, core = self.core, "new topic");
            self.topics.insert(
                name.to_string(),
                Topic::new(name.to_string(), &self.config, false),
            );
            self.config.metadata_changed(name);
            self.config.announce(name, None);
            if self.config.request_channels(name) {
                if let Some(t) = self.topics.get_mut(name) {
                    t.awaiting_channels = true;
                }
            }
        }
        self.topics
            .get_mut(name)
            .expect("topic exists after insert")
    }

    /// PUB/MPUB/DPUB on the owning core.
    pub fn publish(
        &mut self,
        topic: &str,
        bodies: &[Bytes],
        defer: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.get_or_create_topic(topic).publish(bodies, defer)
    }

    /// Clean shutdown (D10): every topic's and channel's memory, in-flight
    /// and deferred messages go to disk. Returns the disk queues to close.
    pub fn persist_for_shutdown(&mut self) -> Vec<Rc<crate::storage::QueueShared>> {
        self.topics
            .values_mut()
            .flat_map(|t| t.persist_for_shutdown())
            .collect()
    }

    /// L7: what nsqlookupd knows of a topic created at run time came back
    /// (or the query failed: `channels` empty). The channels are created,
    /// then the topic lets its messages go.
    pub fn channels_discovered(&mut self, topic: &str, channels: Vec<String>) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if !t.awaiting_channels {
            return;
        }
        for c in &channels {
            t.get_or_create_channel(c);
        }
        t.awaiting_channels = false;
        if !channels.is_empty() {
            tracing::info!(topic, ?channels, "channels pre-created from nsqlookupd");
        }
        t.pump_held();
    }

    /// A disk queue read backlog into memory: deliver it.
    pub fn refilled(&mut self, queue: &str) {
        match queue.split_once(':') {
            Some((topic, channel)) => {
                let Some(t) = self.topics.get_mut(topic) else {
                    return;
                };
                // A channel whose disk recovered takes its topic's messages
                // again.
                t.pump_held();
                if let Some(c) = t.channels.get_mut(channel) {
                    c.dispatch();
                }
            }
            None => {
                if let Some(t) = self.topics.get_mut(queue) {
                    t.pump_held();
                }
            }
        }
    }

    /// SUB (T23, Q18): creates topic and channel as needed.
    pub fn subscribe(
        &mut self,
        topic: &str,
        channel: &str,
        sub: Rc<Subscriber>,
    ) -> Result<(), ClientError> {
        let max = self.config.max_channel_consumers;
        let ch = self
            .get_or_create_topic(topic)
            .get_or_create_channel(channel);
        if max != 0 && ch.subscribers.len() >= max {
            return Err(ClientError::new(
                ErrorCode::SubFailed,
                format!("SUB failed consumers for {topic}:{channel} exceeds limit of {max}"),
            ));
        }
        ch.add_subscriber(sub);
        Ok(())
    }

    /// A consumer left. An ephemeral channel with no consumer left is
    /// deleted (Q15), and an ephemeral topic with no channel left (Q14).
    pub fn unsubscribe(&mut self, topic_name: &str, channel_name: &str, client_id: u64) {
        let Some(topic) = self.topics.get_mut(topic_name) else {
            return;
        };
        let Some(channel) = topic.channels.get_mut(channel_name) else {
            return;
        };
        channel.remove_subscriber(client_id);
        if channel.ephemeral && channel.subscribers.is_empty() {
            tracing::info!(
                topic = topic_name,
                channel = channel_name,
                "deleting ephemeral channel"
            );
            topic.channels.remove(channel_name);
            self.config.withdraw(topic_name, Some(channel_name));
            if topic.ephemeral && topic.channels.is_empty() {
                tracing::info!(topic = topic_name, "deleting ephemeral topic");
                self.topics.remove(topic_name);
                self.config.withdraw(topic_name, None);
            }
        } else {
            // Its share of the queue goes to the others.
            channel.dispatch();
        }
    }

    pub fn channel_mut(&mut self, topic: &str, channel: &str) -> Option<&mut Channel> {
        self.topics.get_mut(topic)?.channels.get_mut(channel)
    }

    /// In-flight timeouts and deferred messages (Q5, Q6, Q8).
    pub fn process_timers(&mut self, now: Instant) {
        for topic in self.topics.values_mut() {
            for channel in topic.channels.values_mut() {
                if channel.process_timers(now) {
                    channel.dispatch();
                }
            }
        }
    }
}

/// Why an admin operation (HTTP API) failed; the HTTP layer maps these to
/// nsqd's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("TOPIC_NOT_FOUND")]
    TopicNotFound,
    #[error("CHANNEL_NOT_FOUND")]
    ChannelNotFound,
}

impl Shard {
    pub fn create_topic(&mut self, name: &str) {
        self.get_or_create_topic(name);
    }

    /// Q13: channels go, their consumers are disconnected.
    pub fn delete_topic(&mut self, name: &str) -> Result<(), AdminError> {
        let mut topic = self.topics.remove(name).ok_or(AdminError::TopicNotFound)?;
        topic.destroy();
        self.config.metadata_changed(name);
        // nsqd unregisters the topic, then each of its channels.
        self.config.withdraw(name, None);
        for channel in topic.channels.values() {
            self.config.withdraw(name, Some(&channel.name));
        }
        for channel in topic.channels.values() {
            for sub in &channel.subscribers {
                sub.info.disconnect();
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Q11: drops the messages held at the topic; channels keep theirs.
    pub fn empty_topic(&mut self, name: &str) -> Result<(), AdminError> {
        self.topics
            .get_mut(name)
            .ok_or(AdminError::TopicNotFound)?
            .empty();
        Ok(())
    }

    /// Q9: a paused topic holds messages instead of copying them to channels.
    pub fn pause_topic(&mut self, name: &str, paused: bool) -> Result<(), AdminError> {
        let topic = self.topics.get_mut(name).ok_or(AdminError::TopicNotFound)?;
        topic.paused = paused;
        if !paused {
            topic.pump_held();
        }
        Ok(())
    }

    /// H18: the topic must exist.
    pub fn create_channel(&mut self, topic: &str, channel: &str) -> Result<(), AdminError> {
        self.topics
            .get_mut(topic)
            .ok_or(AdminError::TopicNotFound)?
            .get_or_create_channel(channel);
        Ok(())
    }

    fn topic_channel(&mut self, topic: &str, channel: &str) -> Result<&mut Channel, AdminError> {
        self.topics
            .get_mut(topic)
            .ok_or(AdminError::TopicNotFound)?
            .channels
            .get_mut(channel)
            .ok_or(AdminError::ChannelNotFound)
    }

    /// Q13: its consumers are disconnected.
    pub fn delete_channel(&mut self, topic_name: &str, channel: &str) -> Result<(), AdminError> {
        let topic = self
            .topics
            .get_mut(topic_name)
            .ok_or(AdminError::TopicNotFound)?;
        let mut ch = topic
            .channels
            .remove(channel)
            .ok_or(AdminError::ChannelNotFound)?;
        ch.destroy();
        self.config.metadata_changed(channel);
        self.config.withdraw(topic_name, Some(channel));
        for sub in &ch.subscribers {
            sub.info.disconnect();
        }
        if topic.ephemeral && topic.channels.is_empty() {
            self.topics.remove(topic_name);
            self.config.withdraw(topic_name, None);
        }
        tracing::info!(topic = topic_name, channel, "deleted channel");
        Ok(())
    }

    pub fn empty_channel(&mut self, topic: &str, channel: &str) -> Result<(), AdminError> {
        self.topic_channel(topic, channel)?.empty();
        Ok(())
    }

    /// Q10: consumers of a paused channel get nothing; in-flight stays.
    pub fn pause_channel(
        &mut self,
        topic: &str,
        channel: &str,
        paused: bool,
    ) -> Result<(), AdminError> {
        let ch = self.topic_channel(topic, channel)?;
        ch.paused = paused;
        if paused {
            for sub in &ch.subscribers {
                sub.out.flush_soon();
            }
        } else {
            ch.dispatch();
        }
        Ok(())
    }

    /// This shard's part of nsqd.dat.
    pub fn metadata(&self) -> Vec<TopicMeta> {
        self.topics
            .values()
            .filter(|t| !t.ephemeral)
            .map(|t| TopicMeta {
                name: t.name.clone(),
                paused: t.paused,
                channels: t
                    .channels
                    .values()
                    .filter(|c| !c.ephemeral)
                    .map(|c| ChannelMeta {
                        name: c.name.clone(),
                        paused: c.paused,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Creates what nsqd.dat lists (C3: all channels exist before the topic
    /// starts pumping, so held messages reach every one of them).
    /// Disk queues and deferred snapshots are opened on the way.
    pub fn restore(&mut self, topics: &[TopicMeta]) {
        for meta in topics {
            if !self.topics.contains_key(&meta.name) {
                let topic = Topic::new(meta.name.clone(), &self.config, true);
                self.topics.insert(meta.name.clone(), topic);
                self.config.announce(&meta.name, None);
            }
            let Some(topic) = self.topics.get_mut(&meta.name) else {
                continue;
            };
            topic.paused = true;
            for c in &meta.channels {
                topic.restore_channel(&c.name).paused = c.paused;
            }
            topic.paused = meta.paused;
            topic.pump_held();
        }
    }

    /// This shard's part of /stats, topics and channels sorted by name.
    pub fn stats(&self, filter: &StatsFilter) -> Vec<TopicStats> {
        let mut names: Vec<&String> = match &filter.topic {
            Some(t) => self.topics.keys().filter(|k| *k == t).collect(),
            None => self.topics.keys().collect(),
        };
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let topic = &self.topics[name];
            let channels: Vec<ChannelStats> = topic
                .channels
                .values()
                .filter(|c| filter.channel.as_ref().is_none_or(|f| *f == c.name))
                .map(|c| channel_stats(c, name, filter.include_clients))
                .collect();
            if filter.channel.is_some() && channels.is_empty() {
                continue; // nsqd skips topics without the filtered channel
            }
            out.push(TopicStats {
                topic_name: topic.name.clone(),
                channels,
                depth: topic.depth() as i64,
                backend_depth: topic.backend_depth() as i64,
                message_count: topic.message_count,
                message_bytes: topic.message_bytes,
                paused: topic.paused,
                e2e_processing_latency: topic_e2e(topic),
            });
        }
        out
    }
}

fn channel_stats(c: &Channel, topic: &str, include_clients: bool) -> ChannelStats {
    let clients = include_clients.then(|| {
        c.subscribers
            .iter()
            .map(|s| {
                let mut st = s.info.stats(Some(topic));
                st.ready_count = s.rdy.get();
                st.in_flight_count = s.in_flight.get();
                st.message_count = s.message_count.get();
                st.finish_count = s.finish_count.get();
                st.requeue_count = s.requeue_count.get();
                st
            })
            .collect()
    });
    ChannelStats {
        channel_name: c.name.clone(),
        depth: c.depth() as i64,
        backend_depth: c.backend_depth() as i64,
        in_flight_count: c.in_flight_count() as i64,
        deferred_count: c.deferred_count() as i64,
        message_count: c.message_count,
        requeue_count: c.requeue_count,
        timeout_count: c.timeout_count,
        client_count: c.subscribers.len() as i64,
        clients,
        paused: c.paused,
        e2e_processing_latency: c.e2e.as_ref().map(|e| e.result()).unwrap_or_default(),
    }
}

/// A topic's e2e latency merges its channels'; null without channels.
fn topic_e2e(topic: &Topic) -> E2eLatency {
    let mut windows = topic
        .channels
        .values()
        .filter_map(|c| c.e2e.as_ref())
        .peekable();
    let Some(first) = windows.peek() else {
        return E2eLatency::default();
    };
    let percentiles = first.percentiles().to_vec();
    let mut all = E2eWindow::empty_histogram();
    for w in windows {
        w.merge_into(&mut all);
    }
    result_of(&all, &percentiles)
}
