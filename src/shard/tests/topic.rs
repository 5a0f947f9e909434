//! Topic: fan-out to every channel (Q1), held messages while it has no
//! channel or is paused (Q2, Q9), DPUB (Q8), memory limits (Q3, Q14), and
//! what nsqlookupd is told (L5, L7).

use std::time::{Duration, Instant};

use super::*;
use crate::shard::AdminError;
use crate::stats::StatsFilter;

fn depth(s: &mut Shard, channel: &str) -> u64 {
    s.channel_mut("t", channel).expect("channel exists").depth()
}

fn topic_depth(s: &Shard) -> u64 {
    s.topics["t"].depth()
}

#[test]
fn every_channel_gets_a_copy_with_the_same_id() {
    let mut s = shard();
    let a = subscribe(&mut s, "t", "a", 1, 10);
    let b = subscribe(&mut s, "t", "b", 2, 10);
    publish(&mut s, "t", &["x", "y"]);
    assert_eq!(a.bodies(), ["x", "y"]);
    assert_eq!(b.bodies(), ["x", "y"]);
    assert_eq!(a.ids(), b.ids());
    assert_ne!(a.id(0), a.id(1));
}

#[test]
fn message_ids_are_16_hex_digits() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    publish(&mut s, "t", &["x"]);
    let id = sink.id(0);
    assert!(id.0.iter().all(|b| b.is_ascii_hexdigit()), "{id:?}");
}

#[test]
fn a_topic_without_channels_holds_its_messages() {
    let mut s = shard();
    publish(&mut s, "t", &["a", "b", "c"]);
    assert_eq!(topic_depth(&s), 3);
    assert_eq!(s.create_channel("t", "c"), Ok(()));
    assert_eq!(topic_depth(&s), 0);
    assert_eq!(depth(&mut s, "c"), 3);
}

#[test]
fn the_first_consumer_gets_what_the_topic_held() {
    let mut s = shard();
    publish(&mut s, "t", &["a", "b"]);
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    assert_eq!(sink.bodies(), ["a", "b"]);
}

#[test]
fn a_paused_topic_holds_messages_until_unpaused() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    assert_eq!(s.pause_topic("t", true), Ok(()));
    publish(&mut s, "t", &["a", "b"]);
    assert_eq!(topic_depth(&s), 2);
    assert_eq!(depth(&mut s, "c"), 0);
    assert_eq!(sink.count(), 0);
    assert_eq!(s.pause_topic("t", false), Ok(()));
    assert_eq!(topic_depth(&s), 0);
    assert_eq!(sink.bodies(), ["a", "b"]);
}

#[test]
fn dpub_waits_in_each_channel_for_its_delay() {
    let mut s = shard();
    let a = subscribe(&mut s, "t", "a", 1, 10);
    let b = subscribe(&mut s, "t", "b", 2, 10);
    let delay = Duration::from_secs(3);
    let before = Instant::now();
    s.publish("t", &[Bytes::from_static(b"later")], Some(delay))
        .expect("memory queue");
    let after = Instant::now();
    publish(&mut s, "t", &["now"]);
    assert_eq!(a.bodies(), ["now"]);
    let c = s.channel_mut("t", "a").expect("exists");
    assert_eq!((c.deferred_count(), c.depth()), (1, 0));
    assert_eq!(c.message_count, 2);
    s.process_timers(before + delay - Duration::from_millis(1));
    assert_eq!(a.count(), 1);
    s.process_timers(after + delay);
    assert_eq!(a.bodies(), ["now", "later"]);
    assert_eq!(b.bodies(), ["now", "later"]);
}

#[test]
fn deferred_messages_come_out_in_due_order() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    for (body, secs) in [("3", 3), ("1", 1), ("2", 2)] {
        s.publish("t", &[Bytes::from(body)], Some(Duration::from_secs(secs)))
            .expect("memory queue");
    }
    assert_eq!(sink.count(), 0);
    s.process_timers(Instant::now() + Duration::from_secs(3));
    assert_eq!(sink.bodies(), ["1", "2", "3"]);
}

#[test]
fn dpub_to_a_topic_without_channels_keeps_its_delay() {
    let mut s = shard();
    s.publish(
        "t",
        &[Bytes::from_static(b"d")],
        Some(Duration::from_secs(60)),
    )
    .expect("memory queue");
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    assert_eq!(sink.count(), 0);
    assert_eq!(s.channel_mut("t", "c").expect("exists").deferred_count(), 1);
    s.process_timers(Instant::now() + Duration::from_secs(60));
    assert_eq!(sink.bodies(), ["d"]);
}

#[test]
fn overflow_beyond_the_memory_queue_is_kept_without_storage() {
    let mut s = shard_with(2);
    s.create_topic("t");
    assert_eq!(s.create_channel("t", "c"), Ok(()));
    publish(&mut s, "t", &["0", "1", "2", "3", "4"]);
    let c = s.channel_mut("t", "c").expect("exists");
    assert_eq!((c.depth(), c.backend_depth()), (5, 3));
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    assert_eq!(sink.bodies(), ["0", "1", "2", "3", "4"]);
}

#[test]
fn a_topic_without_channels_spills_beyond_its_memory_queue() {
    let mut s = shard_with(2);
    publish(&mut s, "t", &["0", "1", "2"]);
    assert_eq!(topic_depth(&s), 3);
    assert_eq!(s.topics["t"].backend_depth(), 1);
}

#[test]
fn an_ephemeral_channel_drops_overflow() {
    let mut s = shard_with(2);
    s.create_topic("t");
    assert_eq!(s.create_channel("t", "c#ephemeral"), Ok(()));
    publish(&mut s, "t", &["0", "1", "2", "3", "4"]);
    let c = s.channel_mut("t", "c#ephemeral").expect("exists");
    assert_eq!((c.depth(), c.backend_depth()), (2, 0));
    assert_eq!(c.message_count, 5);
    let sink = subscribe(&mut s, "t", "c#ephemeral", 1, 10);
    assert_eq!(sink.bodies(), ["0", "1"]);
}

#[test]
fn an_ephemeral_channel_hands_each_message_to_a_ready_consumer() {
    // With --mem-queue-size=0 nothing would be kept: delivery is direct.
    let mut s = shard_with(0);
    let sink = subscribe(&mut s, "t", "c#ephemeral", 1, 10);
    publish(&mut s, "t", &["0", "1", "2"]);
    assert_eq!(sink.bodies(), ["0", "1", "2"]);
}

#[test]
fn counts_and_bytes_are_per_topic() {
    let mut s = shard();
    publish(&mut s, "t", &["ab", "cde"]);
    let bodies = [Bytes::from_static(b"f"), Bytes::from_static(b"gh")];
    s.publish("t", &bodies, None).expect("memory queue");
    let t = &s.topics["t"];
    assert_eq!((t.message_count, t.message_bytes), (4, 8));
}

#[test]
fn emptying_a_topic_leaves_its_channels_alone() {
    let mut s = shard();
    subscribe(&mut s, "t", "c", 1, 0);
    publish(&mut s, "t", &["a"]);
    assert_eq!(s.pause_topic("t", true), Ok(()));
    publish(&mut s, "t", &["b", "c"]);
    assert_eq!(s.empty_topic("t"), Ok(()));
    assert_eq!(topic_depth(&s), 0);
    assert_eq!(depth(&mut s, "c"), 1);
    assert_eq!(s.empty_topic("x"), Err(AdminError::TopicNotFound));
}

#[test]
fn deleting_a_channel_forgets_its_messages() {
    let mut s = shard();
    subscribe(&mut s, "t", "c", 1, 0);
    publish(&mut s, "t", &["a"]);
    assert_eq!(s.delete_channel("t", "c"), Ok(()));
    assert!(s.channel_mut("t", "c").is_none());
    assert_eq!(s.delete_channel("t", "c"), Err(AdminError::ChannelNotFound));
    assert_eq!(s.delete_topic("t"), Ok(()));
    assert_eq!(s.delete_topic("t"), Err(AdminError::TopicNotFound));
}

fn announcing(lookupds_known: bool) -> (Shard, Rc<FakeAnnounce>) {
    let announce = Rc::new(FakeAnnounce {
        lookupds_known,
        ..FakeAnnounce::default()
    });
    let config = ShardConfig {
        mem_queue_size: 100,
        lookup: Some(announce.clone()),
        ..ShardConfig::default()
    };
    (Shard::new(0, config), announce)
}

#[test]
fn nsqlookupd_hears_of_topics_and_channels_coming_and_going() {
    let (mut s, announce) = announcing(false);
    subscribe(&mut s, "t", "a", 1, 0);
    s.create_topic("t");
    assert_eq!(s.create_channel("t", "b"), Ok(()));
    assert_eq!(s.delete_channel("t", "b"), Ok(()));
    assert_eq!(s.delete_topic("t"), Ok(()));
    assert_eq!(
        *announce.events.borrow(),
        ["+t:", "?t", "+t:a", "+t:b", "-t:b", "-t:", "-t:a"]
    );
}

#[test]
fn a_new_topic_waits_for_the_channels_nsqlookupd_knows() {
    let (mut s, _announce) = announcing(true);
    publish(&mut s, "t", &["a", "b"]);
    assert!(s.topics["t"].awaiting_channels);
    assert_eq!(topic_depth(&s), 2);
    s.channels_discovered("t", vec!["x".into(), "y".into()]);
    assert_eq!(topic_depth(&s), 0);
    assert_eq!(depth(&mut s, "x"), 2);
    assert_eq!(depth(&mut s, "y"), 2);
}

#[test]
fn a_failed_channel_query_releases_the_topic() {
    let (mut s, _announce) = announcing(true);
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    publish(&mut s, "t", &["a"]);
    assert_eq!(sink.count(), 0);
    s.channels_discovered("t", Vec::new());
    assert_eq!(sink.bodies(), ["a"]);
}

#[test]
fn stats_show_each_consumer_window() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 3);
    publish(&mut s, "t", &["a", "b", "c", "d"]);
    let id = sink.id(0);
    assert_eq!(
        s.channel_mut("t", "c").expect("exists").finish(1, &id),
        Ok(())
    );
    let stats = s.stats(&StatsFilter {
        include_clients: true,
        ..StatsFilter::default()
    });
    let c = &stats[0].channels[0];
    assert_eq!((c.depth, c.in_flight_count, c.message_count), (1, 2, 4));
    let client = &c.clients.as_ref().expect("include_clients")[0];
    assert_eq!(
        (
            client.ready_count,
            client.in_flight_count,
            client.message_count,
            client.finish_count
        ),
        (3, 2, 3, 1)
    );
    assert_eq!(stats[0].message_count, 4);
}
