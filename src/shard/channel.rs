//! A channel: its queue, the messages in flight and deferred, and the
//! subscribers it load-balances over (Q1, Q4-Q8, Q10, Q12, Q18, T24-T27).
//! Lives on its topic's core only: plain single-threaded code.

use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::client::ClientInfo;
use super::e2e::E2eWindow;
use super::queue::{Backend, MessageQueue, Queued};
use super::sink::ConsumerSink;
use super::ShardConfig;
use crate::protocol::{Message, MessageId};
use crate::storage::{DiskPos, QueueShared, StorageError};

/// A consumer connection as its channel sees it.
pub struct Subscriber {
    pub client_id: u64,
    pub info: Rc<ClientInfo>,
    pub out: Rc<dyn ConsumerSink>,
    /// RDY: messages are sent while in_flight < rdy (a window, T24).
    pub rdy: Cell<i64>,
    pub in_flight: Cell<i64>,
    pub closing: Cell<bool>,
    pub msg_timeout: Cell<Duration>,
    pub sample_rate: Cell<u8>,
    pub message_count: Cell<u64>,
    pub finish_count: Cell<u64>,
    pub requeue_count: Cell<u64>,
}

impl Subscriber {
    pub fn new(
        info: Rc<ClientInfo>,
        out: Rc<dyn ConsumerSink>,
        msg_timeout: Duration,
        sample_rate: u8,
    ) -> Self {
        Subscriber {
            client_id: info.id,
            info,
            out,
            rdy: Cell::new(0),
            in_flight: Cell::new(0),
            closing: Cell::new(false),
            msg_timeout: Cell::new(msg_timeout),
            sample_rate: Cell::new(sample_rate),
            message_count: Cell::new(0),
            finish_count: Cell::new(0),
            requeue_count: Cell::new(0),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.window_open() && !self.out.is_dead()
    }

    /// RDY allows one more message (the connection may still be dead).
    fn window_open(&self) -> bool {
        let rdy = self.rdy.get();
        !self.closing.get() && rdy > 0 && self.in_flight.get() < rdy
    }

    fn message_done(&self) {
        let n = self.in_flight.get();
        if n > 0 {
            self.in_flight.set(n - 1);
        }
    }
}

struct InFlight {
    msg: Message,
    /// Its disk queue position, consumed at FIN.
    origin: Option<DiskPos>,
    client_id: u64,
    deadline: Instant,
    delivered_at: Instant,
}

impl InFlight {
    /// Back in the queue's care, keeping its disk position.
    fn into_entry(self) -> Queued {
        Queued {
            msg: self.msg,
            origin: self.origin,
        }
    }
}

/// A deferred message, ordered by due time then arrival.
struct Deferred {
    due: Instant,
    seq: u64,
    entry: Queued,
}

impl PartialEq for Deferred {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due && self.seq == other.seq
    }
}
impl Eq for Deferred {}
impl PartialOrd for Deferred {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deferred {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum InFlightError {
    NotInFlight,
    NotOwner,
}

impl InFlightError {
    /// nsqd's texts for E_FIN_FAILED / E_REQ_FAILED / E_TOUCH_FAILED.
    pub fn as_str(&self) -> &'static str {
        match self {
            InFlightError::NotInFlight => "ID not in flight",
            InFlightError::NotOwner => "client does not own message",
        }
    }
}

pub struct Channel {
    pub name: String,
    /// `topic:channel`, as its files are named (D3).
    queue_name: String,
    /// Where deferred messages are saved at shutdown (not for ephemeral).
    deferred_file: Option<std::path::PathBuf>,
    pub ephemeral: bool,
    pub paused: bool,
    queue: MessageQueue,
    in_flight: FxHashMap<MessageId, InFlight>,
    /// Deadlines with lazy deletion: an entry counts only if the in-flight
    /// message still has that deadline.
    timeouts: BinaryHeap<Reverse<(Instant, MessageId)>>,
    deferred: BinaryHeap<Reverse<Deferred>>,
    deferred_seq: u64,
    pub subscribers: Vec<Rc<Subscriber>>,
    next_subscriber: usize,
    pub message_count: u64,
    pub requeue_count: u64,
    pub timeout_count: u64,
    /// Publish-to-FIN latency, when percentiles are configured (Q19).
    pub e2e: Option<E2eWindow>,
}

impl Channel {
    /// `restore`: open the channel's disk queue and deferred snapshot.
    pub fn new(topic: &str, name: String, config: &ShardConfig, restore: bool) -> Channel {
        let ephemeral = crate::protocol::names::is_ephemeral(&name);
        let queue_name = format!("{topic}:{name}");
        let backend = Backend::for_queue(
            config.storage.as_ref(),
            &queue_name,
            ephemeral,
            false,
            restore,
        );
        let mut channel = Channel {
            e2e: config.e2e.as_ref().map(E2eWindow::new),
            queue: MessageQueue::new(config.mem_limit(ephemeral), backend),
            deferred_file: config
                .storage
                .as_ref()
                .filter(|_| !ephemeral)
                .map(|s| crate::storage::deferred::path(&s.config.dir, &queue_name)),
            queue_name,
            name,
            ephemeral,
            paused: false,
            in_flight: FxHashMap::default(),
            timeouts: BinaryHeap::new(),
            deferred: BinaryHeap::new(),
            deferred_seq: 0,
            subscribers: Vec::new(),
            next_subscriber: 0,
            message_count: 0,
            requeue_count: 0,
            timeout_count: 0,
        };
        if restore && !ephemeral {
            channel.restore_deferred(config);
        }
        channel
    }

    /// Deferred messages saved at the last clean shutdown wait for the rest
    /// of their time.
    fn restore_deferred(&mut self, config: &ShardConfig) {
        let Some(storage) = &config.storage else {
            return;
        };
        // Read at start-up off the core thread (`CoreStorage::prepare_queues`).
        let saved = storage.take_deferred(&self.queue_name).unwrap_or_else(|| {
            crate::storage::deferred::load(
                &storage.config.dir,
                &self.queue_name,
                storage.config.max_msg_size,
            )
        });
        if saved.is_empty() {
            return;
        }
        let now = Instant::now();
        let wall = crate::protocol::message::now_nanos();
        tracing::debug!(channel = %self.queue_name, count = saved.len(), "restored deferred messages");
        for (msg, due) in saved {
            let wait = Duration::from_nanos(due.saturating_sub(wall).max(0) as u64);
            self.push_deferred(Queued::fresh(msg), now + wait);
        }
    }

    /// Clean shutdown (D10): memory and in-flight messages go to the disk
    /// queue (in-flight ones read from disk are written again, so the
    /// consume position can move past them), deferred ones to the snapshot
    /// with their due time. Returns the disk queue to close.
    pub fn persist_for_shutdown(&mut self, config: &ShardConfig) -> Option<Rc<QueueShared>> {
        let storage = config.storage.as_ref()?;
        let memory = self.queue.drain_memory();
        let disk = self.queue.disk()?;
        let mut in_flight: Vec<InFlight> = self.in_flight.drain().map(|(_, f)| f).collect();
        in_flight.sort_by_key(|f| f.delivered_at);
        for f in in_flight {
            disk.put_always(&f.msg);
        }
        for msg in memory {
            disk.put_always(&msg);
        }
        let now = Instant::now();
        let wall = crate::protocol::message::now_nanos();
        let deferred: Vec<(Message, i64)> = std::mem::take(&mut self.deferred)
            .into_sorted_vec()
            .into_iter()
            .rev()
            .map(|Reverse(d)| {
                let wait = d.due.saturating_duration_since(now).as_nanos() as i64;
                (d.entry.msg, wall.saturating_add(wait))
            })
            .collect();
        match crate::storage::deferred::write(&storage.config.dir, &self.queue_name, &deferred) {
            // Deferred messages read from disk now live in the snapshot:
            // their old positions may be passed.
            Ok(()) => disk.forget_outstanding(),
            Err(e) => {
                tracing::error!(channel = %self.queue_name, error = %e, "cannot save deferred messages; those read from disk stay where they are")
            }
        }
        Some(disk.shared().clone())
    }

    /// Deleted (Q13): its files go.
    pub fn destroy(&mut self) {
        self.queue.destroy();
        if let Some(path) = &self.deferred_file {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn depth(&self) -> u64 {
        self.queue.depth()
    }

    /// Its disk is failing: its topic holds messages back meanwhile.
    pub fn disk_failing(&self) -> bool {
        self.queue.disk_failing()
    }
    pub fn backend_depth(&self) -> u64 {
        self.queue.backend_depth()
    }
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }
    pub fn deferred_count(&self) -> usize {
        self.deferred.len()
    }

    /// A message from the topic (already counted there).
    pub fn put(&mut self, msg: Message) -> Result<(), StorageError> {
        self.message_count += 1;
        self.queue.put(msg)
    }

    /// A message already acknowledged to its publisher (handed on from the
    /// topic's queue): never dropped, kept in memory if the disk fails.
    pub fn put_keep(&mut self, msg: Message) {
        self.message_count += 1;
        self.queue.put_back(Queued::fresh(msg));
    }

    pub fn put_deferred(&mut self, msg: Message, delay: Duration) {
        self.message_count += 1;
        self.push_deferred(Queued::fresh(msg), Instant::now() + delay);
    }

    fn push_deferred(&mut self, mut entry: Queued, due: Instant) {
        // The heap's due time rules from here: once released the message
        // goes out, without a second look at the wall clock in `dispatch`
        // (which may have been stepped back meanwhile).
        entry.msg.deferred = None;
        self.deferred_seq += 1;
        self.deferred.push(Reverse(Deferred {
            due,
            seq: self.deferred_seq,
            entry,
        }));
    }

    pub fn add_subscriber(&mut self, sub: Rc<Subscriber>) {
        self.subscribers.push(sub);
    }

    /// Removes a subscriber; its in-flight messages stay until they time
    /// out (T36).
    pub fn remove_subscriber(&mut self, client_id: u64) {
        self.subscribers.retain(|s| s.client_id != client_id);
    }

    fn subscriber(&self, client_id: u64) -> Option<&Rc<Subscriber>> {
        self.subscribers.iter().find(|s| s.client_id == client_id)
    }

    fn take_in_flight(
        &mut self,
        client_id: u64,
        id: &MessageId,
    ) -> Result<InFlight, InFlightError> {
        match self.in_flight.get(id) {
            None => Err(InFlightError::NotInFlight),
            Some(f) if f.client_id != client_id => Err(InFlightError::NotOwner),
            Some(_) => Ok(self
                .in_flight
                .remove(id)
                .ok_or(InFlightError::NotInFlight)?),
        }
    }

    pub fn finish(&mut self, client_id: u64, id: &MessageId) -> Result<(), InFlightError> {
        let f = self.take_in_flight(client_id, id)?;
        if let Some(pos) = f.origin {
            self.queue.ack(pos);
        }
        if let Some(e2e) = &mut self.e2e {
            let latency = crate::protocol::message::now_nanos() - f.msg.timestamp;
            e2e.record(latency.max(0) as u64);
        }
        if let Some(sub) = self.subscriber(client_id) {
            sub.message_done();
            sub.finish_count.set(sub.finish_count.get() + 1);
        }
        self.compact_timeouts();
        Ok(())
    }

    /// REQ (T26): back on the queue at once, or deferred for `delay`.
    pub fn requeue(
        &mut self,
        client_id: u64,
        id: &MessageId,
        delay: Duration,
    ) -> Result<(), InFlightError> {
        let f = self.take_in_flight(client_id, id)?;
        if let Some(sub) = self.subscriber(client_id) {
            sub.message_done();
            sub.requeue_count.set(sub.requeue_count.get() + 1);
        }
        self.requeue_count += 1;
        if delay.is_zero() {
            self.requeue_now(f.into_entry());
        } else {
            self.push_deferred(f.into_entry(), Instant::now() + delay);
        }
        self.compact_timeouts();
        Ok(())
    }

    /// TOUCH (T27): a new deadline, capped at delivery + max_msg_timeout.
    pub fn touch(
        &mut self,
        client_id: u64,
        id: &MessageId,
        max_msg_timeout: Duration,
    ) -> Result<(), InFlightError> {
        let timeout = self
            .subscriber(client_id)
            .map(|s| s.msg_timeout.get())
            .unwrap_or(max_msg_timeout);
        let f = match self.in_flight.get_mut(id) {
            None => return Err(InFlightError::NotInFlight),
            Some(f) if f.client_id != client_id => return Err(InFlightError::NotOwner),
            Some(f) => f,
        };
        let cap = f.delivered_at + max_msg_timeout;
        let deadline = (Instant::now() + timeout).min(cap);
        if deadline == f.deadline {
            return Ok(()); // capped: a repeated TOUCH changes nothing
        }
        f.deadline = deadline;
        self.timeouts.push(Reverse((deadline, *id)));
        self.compact_timeouts();
        Ok(())
    }

    /// A message that went back: nsqd puts it on the queue (memory or disk).
    fn requeue_now(&mut self, entry: Queued) {
        self.queue.put_back(entry);
    }

    /// Timed-out in-flight messages go back (Q6); due deferred ones are
    /// queued (Q8). Returns true if anything moved.
    pub fn process_timers(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(Reverse((deadline, id))) = self.timeouts.peek().copied() {
            if deadline > now {
                break;
            }
            self.timeouts.pop();
            let current = self.in_flight.get(&id).map(|f| f.deadline);
            if current != Some(deadline) {
                continue; // finished, requeued or touched since
            }
            if let Some(f) = self.in_flight.remove(&id) {
                self.timeout_count += 1;
                if let Some(sub) = self.subscriber(f.client_id) {
                    sub.message_done();
                }
                self.requeue_now(f.into_entry());
                moved = true;
            }
        }
        while self.deferred.peek().is_some_and(|d| d.0.due <= now) {
            if let Some(Reverse(d)) = self.deferred.pop() {
                self.requeue_now(d.entry);
                moved = true;
            }
        }
        moved
    }

    /// Stale heap entries pile up at high rates (every FIN leaves one until
    /// its deadline); rebuild the heap when they dominate.
    fn compact_timeouts(&mut self) {
        if self.timeouts.len() > 4096 && self.timeouts.len() > 4 * self.in_flight.len() {
            let live: Vec<_> = self
                .in_flight
                .iter()
                .map(|(id, f)| Reverse((f.deadline, *id)))
                .collect();
            self.timeouts = BinaryHeap::from(live);
        }
    }

    /// Q12: drop queue, in-flight and deferred; reset clients' in-flight.
    pub fn empty(&mut self) {
        self.queue.clear();
        self.in_flight.clear();
        self.timeouts.clear();
        self.deferred.clear();
        for s in &self.subscribers {
            s.in_flight.set(0);
        }
    }

    /// Sends queued messages to ready subscribers, round robin (Q1, T24).
    pub fn dispatch(&mut self) {
        if self.paused || self.subscribers.is_empty() {
            return;
        }
        let now = Instant::now();
        let n = self.subscribers.len();
        let mut idle_in_a_row = 0;
        while idle_in_a_row < n && !self.queue.is_empty() {
            let idx = self.next_subscriber % n;
            self.next_subscriber = self.next_subscriber.wrapping_add(1);
            let sub = &self.subscribers[idx];
            if !sub.is_ready() {
                idle_in_a_row += 1;
                continue;
            }
            idle_in_a_row = 0;
            let Some(Queued { mut msg, origin }) = self.queue.pop() else {
                break;
            };
            // A deferred message stored on disk (durable DPUB) waits here
            // for the rest of its time.
            if let Some(delay) = msg.deferred.take() {
                // `deferred` counts from the publish time.
                let due = msg.timestamp.saturating_add(delay.as_nanos() as i64);
                let left = due - crate::protocol::message::now_nanos();
                if left > 0 {
                    let entry = Queued { msg, origin };
                    self.push_deferred(entry, now + Duration::from_nanos(left as u64));
                    continue;
                }
            }
            let rate = sub.sample_rate.get();
            if rate > 0 && fastrand::u8(0..100) > rate {
                // T35: skipped and gone from this channel.
                if let Some(pos) = origin {
                    self.queue.ack(pos);
                }
                continue;
            }
            msg.attempts = msg.attempts.wrapping_add(1);
            sub.out.push_message(&msg);
            sub.in_flight.set(sub.in_flight.get() + 1);
            sub.message_count.set(sub.message_count.get() + 1);
            // A dead sink has nothing to flush: one call into it less per
            // message.
            if !sub.window_open() {
                sub.out.flush_soon();
            }
            let deadline = now + sub.msg_timeout.get();
            let id = msg.id;
            let client_id = sub.client_id;
            self.timeouts.push(Reverse((deadline, id)));
            self.in_flight.insert(
                id,
                InFlight {
                    msg,
                    origin,
                    client_id,
                    deadline,
                    delivered_at: now,
                },
            );
        }
    }
}
