//! What one core owns: its topics, their channels, queues, in-flight and
//! deferred state. Only the owning core touches a shard, so there are no
//! locks; other cores reach it through `route`.

pub mod channel;
pub mod queue;
pub mod topic;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use channel::{Channel, InFlightError, Subscriber};
pub use topic::Topic;

use crate::protocol::{ClientError, ErrorCode};

pub struct Shard {
    pub core: usize,
    node_id: u16,
    mem_queue_size: usize,
    max_channel_consumers: usize,
    pub topics: HashMap<String, Topic>,
}

impl Shard {
    pub fn new(
        core: usize,
        node_id: u16,
        mem_queue_size: usize,
        max_channel_consumers: usize,
    ) -> Shard {
        Shard {
            core,
            node_id,
            mem_queue_size,
            max_channel_consumers,
            topics: HashMap::new(),
        }
    }

    pub fn get_or_create_topic(&mut self, name: &str) -> &mut Topic {
        if !self.topics.contains_key(name) {
            tracing::info!(topic = name, core = self.core, "new topic");
            self.topics.insert(
                name.to_string(),
                Topic::new(name.to_string(), self.node_id, self.mem_queue_size),
            );
        }
        self.topics
            .get_mut(name)
            .expect("topic exists after insert")
    }

    /// PUB/MPUB/DPUB on the owning core. The error text follows
    /// "PUB failed " in the client's error frame.
    pub fn publish(
        &mut self,
        topic: &str,
        bodies: &[Bytes],
        defer: Option<Duration>,
    ) -> Result<(), String> {
        self.get_or_create_topic(topic)
            .publish(bodies, defer)
            .map_err(|e| e.to_string())
    }

    /// SUB (T23, Q18): creates topic and channel as needed.
    pub fn subscribe(
        &mut self,
        topic: &str,
        channel: &str,
        sub: Rc<Subscriber>,
    ) -> Result<(), ClientError> {
        let max = self.max_channel_consumers;
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
            if topic.ephemeral && topic.channels.is_empty() {
                tracing::info!(topic = topic_name, "deleting ephemeral topic");
                self.topics.remove(topic_name);
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
