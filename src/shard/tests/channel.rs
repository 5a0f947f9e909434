//! Channel: RDY window (T24), FIN/REQ/TOUCH (T25-T27), timeouts (Q6),
//! deferred messages (Q8), pause (Q10), ephemeral channels (Q15).

use std::time::{Duration, Instant};

use super::*;
use crate::protocol::ErrorCode;
use crate::shard::{AdminError, Channel, InFlightError};

fn ch(shard: &mut Shard) -> &mut Channel {
    shard.channel_mut("t", "c").expect("channel t/c exists")
}

#[test]
fn rdy_zero_gets_nothing() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 0);
    publish(&mut s, "t", &["a", "b", "c"]);
    assert_eq!(sink.count(), 0);
    assert_eq!(ch(&mut s).depth(), 3);
    assert_eq!(ch(&mut s).in_flight_count(), 0);
}

#[test]
fn rdy_window_caps_messages_in_flight() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 2);
    publish(&mut s, "t", &["a", "b", "c", "d", "e"]);
    assert_eq!(sink.bodies(), ["a", "b"]);
    let c = ch(&mut s);
    assert_eq!(c.depth(), 3);
    assert_eq!(c.in_flight_count(), 2);
    assert_eq!(c.subscribers[0].in_flight.get(), 2);
}

#[test]
fn fin_opens_the_window_for_the_next_message() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 2);
    publish(&mut s, "t", &["a", "b", "c", "d"]);
    let first = sink.id(0);
    let c = ch(&mut s);
    assert_eq!(c.finish(1, &first), Ok(()));
    c.dispatch();
    assert_eq!(sink.bodies(), ["a", "b", "c"]);
    assert_eq!(c.in_flight_count(), 2);
    assert_eq!(c.depth(), 1);
    assert_eq!(c.subscribers[0].finish_count.get(), 1);
    assert_eq!(c.subscribers[0].message_count.get(), 3);
}

#[test]
fn raising_rdy_delivers_the_backlog_in_order() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 0);
    let bodies = numbered(5);
    publish(&mut s, "t", &strs(&bodies));
    let c = ch(&mut s);
    c.subscribers[0].rdy.set(5);
    c.dispatch();
    assert_eq!(sink.bodies(), bodies);
    assert_eq!(c.depth(), 0);
}

#[test]
fn ready_subscribers_take_turns() {
    let mut s = shard();
    let a = subscribe(&mut s, "t", "c", 1, 10);
    let b = subscribe(&mut s, "t", "c", 2, 10);
    publish(&mut s, "t", &["0", "1", "2", "3"]);
    assert_eq!(a.bodies(), ["0", "2"]);
    assert_eq!(b.bodies(), ["1", "3"]);
}

#[test]
fn a_full_subscriber_is_passed_over() {
    let mut s = shard();
    let a = subscribe(&mut s, "t", "c", 1, 1);
    let b = subscribe(&mut s, "t", "c", 2, 10);
    publish(&mut s, "t", &["0", "1", "2", "3"]);
    assert_eq!(a.bodies(), ["0"]);
    assert_eq!(b.bodies(), ["1", "2", "3"]);
}

#[test]
fn dead_or_closing_consumers_get_nothing() {
    let mut s = shard();
    let dead = subscribe(&mut s, "t", "c", 1, 10);
    dead.dead.set(true);
    let (closing, closing_sink) = consumer(2, 10);
    closing.closing.set(true);
    s.subscribe("t", "c", closing).expect("no limit");
    publish(&mut s, "t", &["a", "b"]);
    assert_eq!(dead.count(), 0);
    assert_eq!(closing_sink.count(), 0);
    assert_eq!(ch(&mut s).depth(), 2);
}

#[test]
fn a_filled_window_asks_for_a_flush() {
    let mut s = shard();
    let full = subscribe(&mut s, "t", "c", 1, 2);
    let roomy = subscribe(&mut s, "u", "c", 2, 5);
    publish(&mut s, "t", &["a", "b"]);
    publish(&mut s, "u", &["a", "b"]);
    assert_eq!(full.flushes.get(), 1);
    assert_eq!(roomy.flushes.get(), 0);
}

#[test]
fn each_delivery_counts_an_attempt() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 1);
    publish(&mut s, "t", &["a"]);
    let id = sink.id(0);
    let c = ch(&mut s);
    assert_eq!(c.requeue(1, &id, Duration::ZERO), Ok(()));
    c.dispatch();
    let attempts: Vec<u16> = sink.delivered.borrow().iter().map(|m| m.attempts).collect();
    assert_eq!(attempts, [1, 2]);
    assert_eq!(sink.ids(), [id, id]);
}

#[test]
fn fin_of_an_unknown_id_is_not_in_flight() {
    let mut s = shard();
    subscribe(&mut s, "t", "c", 1, 1);
    let unknown = MessageId(*b"0123456789abcdef");
    let c = ch(&mut s);
    assert_eq!(c.finish(1, &unknown), Err(InFlightError::NotInFlight));
    assert_eq!(InFlightError::NotInFlight.as_str(), "ID not in flight");
}

#[test]
fn fin_req_touch_by_another_client_fail_and_leave_it_in_flight() {
    let mut s = shard();
    let a = subscribe(&mut s, "t", "c", 1, 1);
    subscribe(&mut s, "t", "c", 2, 0);
    publish(&mut s, "t", &["a"]);
    let id = a.id(0);
    let c = ch(&mut s);
    assert_eq!(c.finish(2, &id), Err(InFlightError::NotOwner));
    assert_eq!(
        c.requeue(2, &id, Duration::ZERO),
        Err(InFlightError::NotOwner)
    );
    assert_eq!(
        c.touch(2, &id, MAX_MSG_TIMEOUT),
        Err(InFlightError::NotOwner)
    );
    assert_eq!(
        InFlightError::NotOwner.as_str(),
        "client does not own message"
    );
    assert_eq!(c.in_flight_count(), 1);
    assert_eq!(c.finish(1, &id), Ok(()));
    assert_eq!(c.in_flight_count(), 0);
}

#[test]
fn a_second_fin_is_not_in_flight() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 1);
    publish(&mut s, "t", &["a"]);
    let id = sink.id(0);
    let c = ch(&mut s);
    assert_eq!(c.finish(1, &id), Ok(()));
    assert_eq!(c.finish(1, &id), Err(InFlightError::NotInFlight));
    assert_eq!(
        c.requeue(1, &id, Duration::ZERO),
        Err(InFlightError::NotInFlight)
    );
    assert_eq!(
        c.touch(1, &id, MAX_MSG_TIMEOUT),
        Err(InFlightError::NotInFlight)
    );
    assert_eq!(c.subscribers[0].in_flight.get(), 0);
}

#[test]
fn a_timed_out_message_is_requeued_and_redelivered() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 1);
    publish(&mut s, "t", &["a"]);
    let delivered = Instant::now();
    let id = sink.id(0);
    let c = ch(&mut s);
    assert!(!c.process_timers(delivered + MSG_TIMEOUT / 2));
    assert_eq!(c.in_flight_count(), 1);
    assert!(c.process_timers(delivered + MSG_TIMEOUT));
    assert_eq!(c.timeout_count, 1);
    assert_eq!(c.in_flight_count(), 0);
    assert_eq!(c.depth(), 1);
    assert_eq!(c.subscribers[0].in_flight.get(), 0);
    c.dispatch();
    assert_eq!(sink.ids(), [id, id]);
    assert_eq!(c.finish(1, &id), Ok(()));
}

#[test]
fn fin_after_the_timeout_is_not_in_flight() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 0);
    publish(&mut s, "t", &["a"]);
    let c = ch(&mut s);
    c.subscribers[0].rdy.set(1);
    c.dispatch();
    let id = sink.id(0);
    c.subscribers[0].rdy.set(0);
    assert!(c.process_timers(Instant::now() + MSG_TIMEOUT));
    assert_eq!(c.finish(1, &id), Err(InFlightError::NotInFlight));
    assert_eq!(c.depth(), 1);
}

#[test]
fn shard_timers_redeliver_timed_out_messages() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 1);
    publish(&mut s, "t", &["a"]);
    s.process_timers(Instant::now() + MSG_TIMEOUT);
    assert_eq!(sink.bodies(), ["a", "a"]);
    assert_eq!(ch(&mut s).timeout_count, 1);
}

#[test]
fn req_without_delay_goes_back_at_once() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 1);
    publish(&mut s, "t", &["a", "b"]);
    let id = sink.id(0);
    let c = ch(&mut s);
    assert_eq!(c.requeue(1, &id, Duration::ZERO), Ok(()));
    assert_eq!(c.requeue_count, 1);
    assert_eq!(c.subscribers[0].requeue_count.get(), 1);
    assert_eq!(c.depth(), 2);
    assert_eq!(c.deferred_count(), 0);
    c.dispatch();
    // nsqd puts a requeued message at the back of the queue.
    assert_eq!(sink.bodies(), ["a", "b"]);
}

#[test]
fn req_with_delay_is_deferred_until_due() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 1);
    publish(&mut s, "t", &["a"]);
    let id = sink.id(0);
    let delay = Duration::from_secs(5);
    let c = ch(&mut s);
    let before = Instant::now();
    assert_eq!(c.requeue(1, &id, delay), Ok(()));
    let after = Instant::now();
    assert_eq!(c.deferred_count(), 1);
    assert_eq!(c.depth(), 0);
    assert_eq!(c.in_flight_count(), 0);
    assert!(!c.process_timers(before + delay - Duration::from_millis(1)));
    assert_eq!(c.deferred_count(), 1);
    assert!(c.process_timers(after + delay));
    assert_eq!(c.deferred_count(), 0);
    c.dispatch();
    assert_eq!(sink.ids(), [id, id]);
}

#[test]
fn touch_restarts_the_timeout() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 1);
    let c_sub = ch_sub(&mut s);
    // Delivered with a 1 s timeout; the longer one below shows which
    // deadline TOUCH set.
    c_sub.msg_timeout.set(Duration::from_secs(1));
    publish(&mut s, "t", &["a"]);
    let id = sink.id(0);
    c_sub.msg_timeout.set(Duration::from_secs(30));
    let c = ch(&mut s);
    assert_eq!(c.touch(1, &id, MAX_MSG_TIMEOUT), Ok(()));
    let touched = Instant::now();
    assert!(!c.process_timers(touched + Duration::from_secs(5)));
    assert_eq!(c.in_flight_count(), 1);
    assert!(c.process_timers(touched + Duration::from_secs(30)));
    assert_eq!(c.timeout_count, 1);
}

#[test]
fn touch_cannot_pass_the_max_msg_timeout() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 1);
    let c_sub = ch_sub(&mut s);
    c_sub.msg_timeout.set(Duration::from_secs(1));
    let before = Instant::now();
    publish(&mut s, "t", &["a"]);
    let after = Instant::now();
    let id = sink.id(0);
    c_sub.msg_timeout.set(Duration::from_secs(30));
    let max = Duration::from_secs(10);
    let c = ch(&mut s);
    assert_eq!(c.touch(1, &id, max), Ok(()));
    assert_eq!(c.touch(1, &id, max), Ok(()), "a TOUCH at the cap is fine");
    assert!(!c.process_timers(before + Duration::from_secs(9)));
    assert!(c.process_timers(after + max));
    assert_eq!(c.timeout_count, 1);
}

/// The one subscriber of t/c.
fn ch_sub(s: &mut Shard) -> Rc<Subscriber> {
    ch(s).subscribers[0].clone()
}

#[test]
fn a_paused_channel_holds_messages_until_unpaused() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    assert_eq!(s.pause_channel("t", "c", true), Ok(()));
    publish(&mut s, "t", &["a", "b"]);
    assert_eq!(sink.count(), 0);
    assert_eq!(ch(&mut s).depth(), 2);
    assert_eq!(s.pause_channel("t", "c", false), Ok(()));
    assert_eq!(sink.bodies(), ["a", "b"]);
}

#[test]
fn pausing_keeps_messages_in_flight_and_flushes() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 10);
    publish(&mut s, "t", &["a"]);
    assert_eq!(s.pause_channel("t", "c", true), Ok(()));
    assert_eq!(sink.flushes.get(), 1);
    let id = sink.id(0);
    assert_eq!(ch(&mut s).finish(1, &id), Ok(()));
}

#[test]
fn pausing_what_does_not_exist_fails() {
    let mut s = shard();
    subscribe(&mut s, "t", "c", 1, 10);
    assert_eq!(
        s.pause_channel("x", "c", true),
        Err(AdminError::TopicNotFound)
    );
    assert_eq!(
        s.pause_channel("t", "x", true),
        Err(AdminError::ChannelNotFound)
    );
    assert_eq!(s.pause_topic("x", true), Err(AdminError::TopicNotFound));
}

#[test]
fn an_ephemeral_channel_goes_with_its_last_consumer() {
    let mut s = shard();
    subscribe(&mut s, "t", "c#ephemeral", 1, 1);
    subscribe(&mut s, "t", "c#ephemeral", 2, 1);
    subscribe(&mut s, "t", "d", 3, 1);
    s.unsubscribe("t", "c#ephemeral", 1);
    assert!(s.channel_mut("t", "c#ephemeral").is_some());
    s.unsubscribe("t", "c#ephemeral", 2);
    assert!(s.channel_mut("t", "c#ephemeral").is_none());
    s.unsubscribe("t", "d", 3);
    assert!(s.channel_mut("t", "d").is_some(), "a normal channel stays");
}

#[test]
fn an_ephemeral_topic_goes_with_its_last_channel() {
    let mut s = shard();
    subscribe(&mut s, "t#ephemeral", "c#ephemeral", 1, 1);
    s.unsubscribe("t#ephemeral", "c#ephemeral", 1);
    assert!(s.topics.is_empty());
}

#[test]
fn a_leaving_consumer_keeps_its_messages_in_flight_until_timeout() {
    let mut s = shard();
    let a = subscribe(&mut s, "t", "c", 1, 1);
    let b = subscribe(&mut s, "t", "c", 2, 0);
    publish(&mut s, "t", &["a"]);
    s.unsubscribe("t", "c", 1);
    assert_eq!(ch(&mut s).in_flight_count(), 1);
    ch(&mut s).subscribers[0].rdy.set(1);
    s.process_timers(Instant::now() + MSG_TIMEOUT);
    assert_eq!(a.count(), 1);
    assert_eq!(b.bodies(), ["a"]);
}

#[test]
fn the_consumer_limit_refuses_one_more() {
    let mut s = Shard::new(
        0,
        ShardConfig {
            max_channel_consumers: 1,
            ..ShardConfig::default()
        },
    );
    subscribe(&mut s, "t", "c", 1, 1);
    let (sub, _) = consumer(2, 1);
    let err = s.subscribe("t", "c", sub).expect_err("over the limit");
    assert_eq!(err.code, ErrorCode::SubFailed);
    assert_eq!(
        err.text,
        b"SUB failed consumers for t:c exceeds limit of 1".to_vec()
    );
}

#[test]
fn emptying_a_channel_drops_everything_it_holds() {
    let mut s = shard();
    let sink = subscribe(&mut s, "t", "c", 1, 2);
    publish(&mut s, "t", &["a", "b", "c"]);
    let id = sink.id(0);
    let c = ch(&mut s);
    assert_eq!(c.requeue(1, &id, Duration::from_secs(5)), Ok(()));
    assert_eq!(s.empty_channel("t", "c"), Ok(()));
    let c = ch(&mut s);
    assert_eq!(
        (c.depth(), c.in_flight_count(), c.deferred_count()),
        (0, 0, 0)
    );
    assert_eq!(c.subscribers[0].in_flight.get(), 0);
}

#[test]
fn finish_records_end_to_end_latency() {
    let mut s = Shard::new(
        0,
        ShardConfig {
            mem_queue_size: 100,
            e2e: Some(crate::shard::e2e::E2eConfig {
                percentiles: vec![1.0],
                window: Duration::from_secs(600),
            }),
            ..ShardConfig::default()
        },
    );
    let sink = subscribe(&mut s, "t", "c", 1, 2);
    publish(&mut s, "t", &["a", "b"]);
    let c = ch(&mut s);
    assert_eq!(c.finish(1, &sink.id(0)), Ok(()));
    assert_eq!(c.finish(1, &sink.id(1)), Ok(()));
    let e2e = c.e2e.as_ref().expect("configured").result();
    assert_eq!(e2e.count, 2);
}
