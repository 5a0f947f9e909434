"""Message life cycle through pynsq 0.9.1: REQ, timeouts, TOUCH, DPUB, heartbeats,
ephemeral channels, closing consumers.

Reference rows: nsqd-reference.md section 1 (T*) and 2 (Q*). Timeouts are approximate in
nsqd (Q5): in-flight and deferred queues are scanned every 100 ms, but only for channels in
a list that is refreshed every 5 s, so on a fresh nsqd a channel created at runtime sees its
first timeout / deferred processing up to 5 s late. Lower bounds here are therefore tight
and upper bounds allow that 5 s refresh (SCAN_SLACK); the waits return as soon as the
expected event happens, so a prompt broker is not slowed down.
"""

import time

import pytest

from helpers.clients import Collector

# Q5: nsqd refreshes the list of channels its timeout scanner visits every 5 s
SCAN_SLACK = 5.5


def test_req_with_delay_redelivers_after_delay(broker, loop):
    """T26/Q8/Q7: REQ <id> 1000 puts the message in the deferred queue; it comes back to the
    consumer no earlier than 1 s later with the same id and body and attempts 2."""
    topic = "req"
    seen = []

    def handler(m):
        seen.append((bytes(m.id), bytes(m.body), m.attempts, time.monotonic()))
        if m.attempts == 1:
            m.requeue(backoff=False, time_ms=1000)
            return None
        return True

    r = loop.reader(broker.tcp_address, topic, "ch", handler)
    loop.wait_subscribed([r])
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    body = b"requeue-me\x00\xff"
    assert loop.publish(w, [("pub", topic, body)]) == [b"OK"]

    # not back before the delay
    loop.run_until(lambda: len(seen) >= 2, 0.85)
    assert len(seen) == 1, "REQ 1000 redelivered too early: %r" % [(s[2], s[3] - seen[0][3]) for s in seen]
    assert loop.run_until(lambda: len(seen) >= 2, 1.5 + SCAN_SLACK), "REQ'd message never redelivered"
    loop.sleep(0.3)
    assert len(seen) == 2, [(s[2], s[3] - seen[0][3]) for s in seen]
    (id1, b1, a1, t1), (id2, b2, a2, t2) = seen
    assert (a1, a2) == (1, 2)
    assert id1 == id2 and b1 == b2 == body
    assert t2 - t1 >= 0.95, "redelivered after %.3fs, REQ delay was 1s" % (t2 - t1)
    assert not r.errors, r.errors


def test_req_zero_redelivers_immediately(broker, loop):
    """T26: REQ <id> 0 puts the message straight back on the channel queue (attempts 2)."""
    seen = []

    def handler(m):
        seen.append((m.attempts, time.monotonic()))
        if m.attempts == 1:
            m.requeue(backoff=False, time_ms=0)
            return None
        return True

    r = loop.reader(broker.tcp_address, "req0", "ch", handler)
    loop.wait_subscribed([r])
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", "req0", b"again")]) == [b"OK"]
    assert loop.run_until(lambda: len(seen) >= 2, 3), seen
    assert [s[0] for s in seen] == [1, 2]
    assert seen[1][1] - seen[0][1] < 0.9, "REQ 0 must not be deferred"


@pytest.mark.parametrize("source", ["identify", "flag"])
def test_timeout_redelivery_counts_attempts(brokers, loop, source):
    """Q4/Q6/Q7/T16: a message that is neither FIN'd nor REQ'd times out after msg_timeout
    (1 s, from IDENTIFY msg_timeout=1000 or from --msg-timeout=1s) and is delivered again
    with attempts incremented each time (1, 2, 3), same id and body."""
    if source == "identify":
        b = brokers()
        kwargs = {"msg_timeout": 1}
    else:
        b = brokers(args=["--msg-timeout=1s"])
        kwargs = {}
    topic = "timeout"
    seen = []

    def handler(m):
        seen.append((bytes(m.id), bytes(m.body), m.attempts, time.monotonic()))
        if m.attempts < 3:
            m.enable_async()  # never answer: let it time out
            return None
        return True

    r = loop.reader(b.tcp_address, topic, "ch", handler, **kwargs)
    loop.wait_subscribed([r])
    w = loop.writer(b.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", topic, b"slow-consumer")]) == [b"OK"]
    assert loop.run_until(lambda: len(seen) >= 3, 3 + SCAN_SLACK), [(s[2], s[3]) for s in seen]
    loop.sleep(1.4)  # finished on attempt 3: no 4th delivery
    assert [s[2] for s in seen] == [1, 2, 3]
    assert len({s[0] for s in seen}) == 1 and all(s[1] == b"slow-consumer" for s in seen)
    gaps = [nxt[3] - prev[3] for prev, nxt in zip(seen, seen[1:])]
    assert all(g >= 0.95 for g in gaps), "redelivered before the 1 s msg_timeout: gaps %r" % gaps
    # the first timeout may wait for the scanner's channel list refresh (Q5); once the
    # channel is being scanned, the next timeout fires about 1 s later
    assert gaps[0] <= 1 + SCAN_SLACK and gaps[1] <= 2.5, "redelivery gaps %r for a 1 s msg_timeout" % gaps


def test_default_msg_timeout_not_hit(brokers, loop):
    """T16: without IDENTIFY msg_timeout the server's --msg-timeout (here 3s) applies, so an
    unanswered message is not redelivered after 1.5 s."""
    b = brokers(args=["--msg-timeout=3s"])
    seen = []

    def handler(m):
        seen.append(m.attempts)
        m.enable_async()
        return None

    r = loop.reader(b.tcp_address, "deftimeout", "ch", handler)
    loop.wait_subscribed([r])
    w = loop.writer(b.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", "deftimeout", b"x")]) == [b"OK"]
    assert loop.run_until(lambda: seen, 3)
    loop.sleep(1.5)
    assert seen == [1]
    assert loop.run_until(lambda: len(seen) >= 2, 2 + SCAN_SLACK), "never timed out with --msg-timeout=3s"
    assert seen == [1, 2]


def test_touch_keeps_message_alive(broker, loop):
    """T27/Q4/Q6: TOUCH resets the in-flight deadline to now + msg_timeout (1 s): touching
    every 0.3 s for 2.5 s keeps a message from timing out; it is then FIN'd with no error and
    never redelivered. An untouched message delivered at the same time does time out
    (control). A probe message first proves the channel's timeouts are being processed
    (nsqd scans a new channel only after its 5 s list refresh, Q5)."""
    topic = "touch"
    seen = []
    state = {"touch_started": None, "touches": 0}

    def handler(m):
        seen.append((bytes(m.body), m.attempts, time.monotonic()))
        if m.body == b"probe" and m.attempts == 1:
            m.enable_async()  # let it time out once
            return None
        if m.body == b"touched" and m.attempts == 1:
            m.enable_async()
            start = state["touch_started"] = time.monotonic()

            def tick():
                if time.monotonic() - start >= 2.5:
                    m.finish()
                else:
                    m.touch()
                    state["touches"] += 1
                    loop.io.call_later(0.3, tick)

            loop.io.call_later(0.3, tick)
            return None
        if m.body == b"untouched" and m.attempts == 1:
            m.enable_async()
            return None
        return True

    # output_buffer_timeout=25 ms (T15 minimum): with RDY 3 the server may hold message
    # frames in its output buffer until that timer (T34), which would skew the timings
    r = loop.reader(
        broker.tcp_address, topic, "ch", handler, msg_timeout=1, max_in_flight=3, output_buffer_timeout=25
    )
    loop.wait_subscribed([r])
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", topic, b"probe")]) == [b"OK"]
    assert loop.run_until(lambda: [s for s in seen if s[0] == b"probe" and s[1] == 2], 1 + SCAN_SLACK + 1), seen

    assert loop.publish(w, [("pub", topic, b"touched"), ("pub", topic, b"untouched")]) == [b"OK", b"OK"]
    assert loop.run_until(lambda: state["touch_started"] is not None, 3)
    loop.sleep(4.0)
    touched = [s for s in seen if s[0] == b"touched"]
    untouched = [s for s in seen if s[0] == b"untouched"]
    assert state["touches"] >= 7
    assert [s[1] for s in touched] == [1], "a touched message must not time out: %r" % touched
    assert [s[1] for s in untouched][:2] == [1, 2], "control: an untouched message times out: %r" % untouched
    assert untouched[1][2] - untouched[0][2] >= 0.9, untouched
    assert not r.errors, "TOUCH/FIN of an in-flight message must succeed: %r" % r.errors


def test_dpub_delivered_after_defer(broker, loop):
    """T32/Q8: DPUB <topic> 1500 delivers the message no earlier than 1.5 s after publish
    (attempts 1, body exact), while a plain PUB sent right after arrives at once."""
    topic = "dpub"
    col = Collector()
    r = loop.reader(broker.tcp_address, topic, "ch", col, max_in_flight=5)
    loop.wait_subscribed([r])
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    t0 = time.monotonic()
    res = loop.publish(w, [("dpub", topic, 1500, b"deferred\x00\x01"), ("pub", topic, b"now")])
    assert res == [b"OK", b"OK"]
    assert loop.run_until(lambda: b"now" in col.bodies, 2), col.bodies
    assert b"deferred\x00\x01" not in col.bodies, "DPUB delivered before its defer"
    assert loop.run_until(lambda: b"deferred\x00\x01" in col.bodies, 2 + SCAN_SLACK), "DPUB never delivered"
    got = [g for g in col.got if g[1] == b"deferred\x00\x01"]
    assert len(got) == 1 and got[0][2] == 1
    elapsed = got[0][3] - t0
    assert 1.45 <= elapsed <= 1.5 + SCAN_SLACK, "DPUB 1500 ms delivered after %.3fs" % elapsed
    loop.sleep(0.2)
    assert sorted(col.bodies) == sorted([b"now", b"deferred\x00\x01"])


def test_dpub_reaches_every_channel(broker, loop):
    """Q8: a deferred message is copied into every channel's deferred queue."""
    topic = "dpubfan"
    cols = [Collector(), Collector()]
    readers = [loop.reader(broker.tcp_address, topic, "c%d" % i, cols[i]) for i in range(2)]
    loop.wait_subscribed(readers)
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("dpub", topic, 500, b"later")]) == [b"OK"]
    assert loop.run_until(lambda: all(c.got for c in cols), 1 + SCAN_SLACK), [c.bodies for c in cols]
    loop.sleep(0.2)
    assert [c.bodies for c in cols] == [[b"later"], [b"later"]]


def test_heartbeats_keep_idle_consumer_alive(broker, loop):
    """T33/T14: with heartbeat_interval=1000 ms the server sends `_heartbeat_` every second;
    pynsq answers with NOP, so an idle consumer stays connected for 4.5 s (> 2 intervals,
    the read deadline) and still receives a message published afterwards."""
    col = Collector()
    r = loop.reader(broker.tcp_address, "idle", "ch", col, heartbeat_interval=1)
    loop.wait_subscribed([r])
    loop.sleep(4.5)
    assert r.closed_conns == 0, "idle consumer was disconnected: errors %r" % r.errors
    assert 3 <= r.heartbeats <= 6, "expected ~4 heartbeats in 4.5 s at 1 s interval, got %d" % r.heartbeats
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", "idle", b"still-here")]) == [b"OK"]
    assert loop.run_until(lambda: col.got, 3)
    assert col.bodies == [b"still-here"]
    assert r.closed_conns == 0


def test_ephemeral_channel_goes_away_with_last_consumer(broker, loop):
    """Q15/T36/Q1: an ephemeral channel is deleted when its last consumer disconnects, so
    messages published while nobody is subscribed are not kept for it; a durable channel on
    the same topic (control, and keeps the topic pump running) keeps them."""
    topic = "ephem"
    eph = "tail#ephemeral"
    durable = Collector()
    rd = loop.reader(broker.tcp_address, topic, "durable", durable)
    e1 = Collector()
    re1 = loop.reader(broker.tcp_address, topic, eph, e1)
    loop.wait_subscribed([rd, re1])
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", topic, b"m1")]) == [b"OK"]
    assert loop.run_until(lambda: e1.got and durable.got, 5)
    assert e1.bodies == [b"m1"]

    # last (only) consumer of the ephemeral channel leaves
    re1.close()
    assert loop.run_until(lambda: re1.closed_conns >= 1, 3)
    loop.sleep(0.5)
    assert loop.publish(w, [("pub", topic, b"m2-while-away"), ("pub", topic, b"m3-while-away")]) == [b"OK", b"OK"]
    assert loop.run_until(lambda: len(durable.got) >= 3, 5)

    # a new consumer on the same ephemeral name gets a fresh, empty channel
    e2 = Collector()
    re2 = loop.reader(broker.tcp_address, topic, eph, e2)
    loop.wait_subscribed([re2])
    loop.sleep(0.8)
    assert e2.bodies == [], "ephemeral channel survived its last consumer: got %r" % e2.bodies
    assert loop.publish(w, [("pub", topic, b"m4")]) == [b"OK"]
    assert loop.run_until(lambda: e2.got, 5)
    loop.sleep(0.2)
    assert e2.bodies == [b"m4"]
    assert sorted(durable.bodies) == sorted([b"m1", b"m2-while-away", b"m3-while-away", b"m4"])


def test_durable_channel_keeps_messages_while_consumer_away(broker, loop):
    """Q1/Q3/T36 (control for the ephemeral test): a normal channel outlives its consumers;
    messages published while nobody is subscribed are delivered to the next consumer."""
    topic = "durable"
    c1 = Collector()
    r1 = loop.reader(broker.tcp_address, topic, "keep", c1)
    loop.wait_subscribed([r1])
    r1.close()
    assert loop.run_until(lambda: r1.closed_conns >= 1, 3)
    loop.sleep(0.3)
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    bodies = [b"kept-%d" % i for i in range(5)]
    assert loop.publish(w, [("mpub", topic, bodies)]) == [b"OK"]
    c2 = Collector()
    r2 = loop.reader(broker.tcp_address, topic, "keep", c2)
    loop.wait_subscribed([r2])
    assert loop.run_until(lambda: len(c2.got) >= 5, 5), c2.bodies
    loop.sleep(0.2)
    assert sorted(c2.bodies) == sorted(bodies)
    assert c1.bodies == []


def test_closed_consumer_inflight_redelivered_after_timeout(broker, loop):
    """T36/Q6/Q7: when a pynsq consumer closes with a message in flight, the message stays in
    flight until its msg_timeout (2 s here) fires, then goes to another consumer of the
    channel with attempts 2 -- not immediately on disconnect."""
    topic = "abandon"
    first = []

    def hold(m):
        first.append((bytes(m.id), time.monotonic()))
        m.enable_async()
        return None

    ra = loop.reader(broker.tcp_address, topic, "ch", hold, msg_timeout=2)
    loop.wait_subscribed([ra])
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", topic, b"orphan")]) == [b"OK"]
    assert loop.run_until(lambda: first, 3)
    delivered_at = first[0][1]

    col = Collector()
    rb = loop.reader(broker.tcp_address, topic, "ch", col, msg_timeout=2)
    loop.wait_subscribed([rb])
    ra.close()
    assert loop.run_until(lambda: ra.closed_conns >= 1, 3)
    assert loop.run_until(lambda: col.got, 2.5 + SCAN_SLACK), "in-flight message of a closed consumer was lost"
    mid, body, attempts, t = col.got[0]
    assert body == b"orphan" and attempts == 2 and mid == first[0][0]
    assert t - delivered_at >= 1.9, "redelivered %.3fs after delivery: before its 2 s timeout" % (t - delivered_at)
    loop.sleep(0.3)
    assert len(col.got) == 1
