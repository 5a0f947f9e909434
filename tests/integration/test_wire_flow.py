"""Flow control and queueing semantics on raw bytes: RDY window, REQ, timeouts, TOUCH,
CLS, DPUB, fan-out, channel-less topics, ephemeral channels, sampling
(T24-T28, T32, T35, T36, Q1, Q2, Q4-Q8, Q15).

nsqd's timeout/deferred scanning is approximate (Q5: channel list refreshed every 5 s,
scan every 100 ms), so upper bounds on redelivery below are loose (~8 s); lower bounds
("not before") are what prove the delay.
"""

import time

from helpers.wire import (
    FRAME_RESPONSE,
    OK,
    assert_usable,
    consumer,
    expect_error,
    expect_no_frame,
    mpub,
    pub,
    read_frame_within,
    read_message_within,
    read_messages,
    sub,
)

SLACK = 8.0  # generous upper bound for scan-loop driven events (Q5)


def test_rdy_is_a_window(broker, connect):
    """T24: RDY n lets at most n messages be in flight (not decremented per message):
    FIN frees a slot, RDY 0 stops delivery, a larger RDY resumes it."""
    p = connect(broker)
    mpub(p, "win", [f"m{i}".encode() for i in range(10)])
    c = connect(broker)
    sub(c, "win", "c")
    c.cmd("RDY 3")
    first = read_messages(c, 3, fin=False)
    expect_no_frame(c, 0.5)
    c.cmd(b"FIN " + first[0]["id"])
    fourth = read_messages(c, 1, fin=False)
    expect_no_frame(c, 0.5)
    c.cmd("RDY 0")
    for m in first[1:] + fourth:
        c.cmd(b"FIN " + m["id"])
    expect_no_frame(c, 0.5)
    c.cmd("RDY 10")
    rest = read_messages(c, 6)
    expect_no_frame(c, 0.3)
    bodies = sorted(m["body"] for m in first + fourth + rest)
    assert bodies == sorted(f"m{i}".encode() for i in range(10))


def test_rdy_without_count_is_one(broker, connect):
    """T24: `RDY` with no count means 1."""
    p = connect(broker)
    mpub(p, "rdy1", [b"a", b"b"])
    c = connect(broker)
    sub(c, "rdy1", "c")
    c.cmd("RDY")
    m = read_messages(c, 1, fin=False)[0]
    expect_no_frame(c, 0.5)
    c.cmd(b"FIN " + m["id"])
    assert read_messages(c, 1)[0]["body"] != m["body"]


def test_req_zero_requeues_immediately(broker, connect):
    """T26/Q7: REQ <id> 0 puts the message straight back: redelivered with the same id,
    body and timestamp and attempts+1; no answer to REQ itself."""
    c = consumer(connect, broker, "req0", "c", rdy=1)
    p = connect(broker)
    pub(p, "req0", b"again")
    m1 = read_messages(c, 1, fin=False)[0]
    assert m1["attempts"] == 1
    c.cmd(b"REQ " + m1["id"] + b" 0")
    m2 = read_message_within(c, 3.0)
    assert m2 is not None
    assert (m2["id"], m2["body"], m2["timestamp"], m2["attempts"]) == (m1["id"], b"again", m1["timestamp"], 2)
    c.cmd(b"REQ " + m2["id"] + b" 0")
    m3 = read_message_within(c, 3.0)
    assert m3 is not None and m3["attempts"] == 3
    c.cmd(b"FIN " + m3["id"])
    expect_no_frame(c, 0.3)


def test_req_with_delay_is_deferred(broker, connect):
    """T26/Q8: REQ <id> 1000 defers the message: not redelivered before ~1 s, then
    redelivered with attempts 2."""
    c = consumer(connect, broker, "reqd", "c", rdy=1)
    p = connect(broker)
    pub(p, "reqd", b"deferred")
    m1 = read_messages(c, 1, fin=False)[0]
    t0 = time.time()
    c.cmd(b"REQ " + m1["id"] + b" 1000")
    expect_no_frame(c, 0.8)
    m2 = read_message_within(c, SLACK)
    assert m2 is not None, "deferred REQ never redelivered"
    assert time.time() - t0 >= 0.9
    assert (m2["id"], m2["body"], m2["attempts"]) == (m1["id"], b"deferred", 2)


def test_req_timeout_clamped_not_error(brokers, connect):
    """T26/X5: a REQ timeout above --max-req-timeout is clamped (no error frame) and the
    message comes back after --max-req-timeout, not after the requested hour."""
    b = brokers(args=["--max-req-timeout=1s"])
    c = consumer(connect, b, "clamp", "c", rdy=1)
    p = connect(b)
    pub(p, "clamp", b"clamped")
    m1 = read_messages(c, 1, fin=False)[0]
    t0 = time.time()
    c.cmd(b"REQ " + m1["id"] + b" 3600000")
    c.cmd("PUB other", b"x")  # its OK must be the very next frame: REQ sent no error
    assert read_frame_within(c, 2.0) == OK
    m2 = read_message_within(c, SLACK + 1)
    assert m2 is not None, "clamped REQ never redelivered"
    assert time.time() - t0 >= 0.8
    assert (m2["id"], m2["attempts"]) == (m1["id"], 2)


def test_msg_timeout_redelivers_with_attempts(brokers, connect):
    """Q4/Q6/Q7: an un-FINed message times out after --msg-timeout and is redelivered with
    attempts incremented each time; FIN stops it."""
    b = brokers(args=["--msg-timeout=1s"])
    c = consumer(connect, b, "tmo", "c", rdy=1)
    p = connect(b)
    pub(p, "tmo", b"slow")
    m1 = read_messages(c, 1, fin=False)[0]
    t1 = time.time()
    assert m1["attempts"] == 1
    expect_no_frame(c, 0.8)
    m2 = read_message_within(c, SLACK)
    assert m2 is not None and time.time() - t1 >= 0.9
    assert (m2["id"], m2["body"], m2["attempts"]) == (m1["id"], b"slow", 2)
    m3 = read_message_within(c, SLACK)
    assert m3 is not None and (m3["id"], m3["attempts"]) == (m1["id"], 3)
    c.cmd(b"FIN " + m3["id"])
    expect_no_frame(c, 1.5)


def test_identify_msg_timeout_and_fin_after_timeout(broker, connect):
    """T16/Q6/T25: IDENTIFY msg_timeout=1000 makes the message time out after ~1 s; once it
    was redelivered to (and finished by) another client, the first client's FIN is the
    non-fatal `E_FIN_FAILED FIN <id> failed ID not in flight`."""
    a = consumer(connect, broker, "cmt", "c", rdy=1, msg_timeout=1000)
    p = connect(broker)
    pub(p, "cmt", b"body")
    m = read_messages(a, 1, fin=False)[0]
    a.cmd("RDY 0")
    t0 = time.time()
    bcons = consumer(connect, broker, "cmt", "c", rdy=1)
    m2 = read_message_within(bcons, SLACK)
    assert m2 is not None and time.time() - t0 >= 0.8
    assert (m2["id"], m2["attempts"]) == (m["id"], 2)
    bcons.cmd("RDY 0")
    bcons.cmd(b"FIN " + m2["id"])
    pub(bcons, "cmt", b"sync")  # the FIN before it has been processed once this OK is back
    a.cmd(b"FIN " + m["id"])
    expect_error(a, b"E_FIN_FAILED FIN " + m["id"] + b" failed ID not in flight", fatal=False)


def test_touch_extends_deadline(broker, connect):
    """T27: TOUCH resets the deadline to now + msg_timeout: of two messages delivered
    together, the untouched one times out and goes to the other consumer while the touched
    one stays in flight and can still be FINed without error."""
    a = consumer(connect, broker, "touch", "c", rdy=2, msg_timeout=1000)
    p = connect(broker)
    mpub(p, "touch", [b"untouched", b"touched"])
    got = read_messages(a, 2, fin=False)
    a.cmd("RDY 0")
    by_body = {m["body"]: m for m in got}
    keep = by_body[b"touched"]
    b = consumer(connect, broker, "touch", "c", rdy=5)
    start = time.time()
    redelivered = None
    while time.time() - start < SLACK + 2:
        a.cmd(b"TOUCH " + keep["id"])
        m = read_message_within(b, 0.3)
        if m is not None:
            redelivered = m
            break
    assert redelivered is not None, "untouched message never timed out"
    assert redelivered["body"] == b"untouched" and redelivered["attempts"] == 2
    b.cmd(b"FIN " + redelivered["id"])
    # keep touching for more than one msg_timeout after the other one expired
    until = time.time() + 1.6
    while time.time() < until:
        a.cmd(b"TOUCH " + keep["id"])
        m = read_message_within(b, 0.3)
        assert m is None, f"touched message was redelivered: {m!r}"
    a.cmd(b"FIN " + keep["id"])
    assert_usable(a)  # no E_TOUCH_FAILED / E_FIN_FAILED was queued before this OK


def test_touch_capped_at_max_msg_timeout(brokers, connect):
    """T27: TOUCH cannot extend a message beyond delivery + --max-msg-timeout."""
    b = brokers(args=["--msg-timeout=1s", "--max-msg-timeout=2s"])
    a = consumer(connect, b, "cap", "c", rdy=1)
    p = connect(b)
    pub(p, "cap", b"capped")
    m = read_messages(a, 1, fin=False)[0]
    t0 = time.time()
    a.cmd("RDY 0")
    other = consumer(connect, b, "cap", "c", rdy=1)
    redelivered = None
    while time.time() - t0 < SLACK + 3:
        a.cmd(b"TOUCH " + m["id"])
        redelivered = read_message_within(other, 0.25)
        if redelivered is not None:
            break
    assert redelivered is not None, "TOUCH kept the message beyond --max-msg-timeout"
    assert time.time() - t0 >= 1.7
    assert (redelivered["id"], redelivered["attempts"]) == (m["id"], 2)


def test_cls_close_wait(broker, connect):
    """T28/T9: CLS answers CLOSE_WAIT, stops deliveries (later RDY is ignored silently),
    the server keeps the connection open, and FIN/REQ of in-flight messages still work."""
    a = consumer(connect, broker, "cls", "c", rdy=2)
    p = connect(broker)
    mpub(p, "cls", [b"m1", b"m2"])
    m1, m2 = read_messages(a, 2, fin=False)
    a.cmd("CLS")
    assert read_frame_within(a, 2.0) == (FRAME_RESPONSE, b"CLOSE_WAIT")
    a.cmd(b"FIN " + m1["id"])
    a.cmd("RDY 10")
    mpub(p, "cls", [b"m3", b"m4"])
    expect_no_frame(a, 0.6)
    assert not a.is_closed(0.2)
    a.cmd(b"REQ " + m2["id"] + b" 0")
    assert_usable(a)
    b = consumer(connect, broker, "cls", "c", rdy=10)
    got = read_messages(b, 3)
    assert sorted(m["body"] for m in got) == [b"m2", b"m3", b"m4"]
    assert {m["body"]: m["attempts"] for m in got}[b"m2"] == 2
    expect_no_frame(a, 0.3)


def test_dpub_not_delivered_before_time(broker, connect):
    """T32/Q8: DPUB <t> 1000 is not delivered before ~1 s (attempts 1 on delivery);
    DPUB <t> 0 is delivered at once."""
    c = consumer(connect, broker, "dpub", "c", rdy=5)
    p = connect(broker)
    t0 = time.time()
    p.cmd("DPUB dpub 1000", b"later")
    assert p.read_frame() == OK
    p.cmd("DPUB dpub 0", b"now")
    assert p.read_frame() == OK
    first = read_message_within(c, 0.8)
    assert first is not None and first["body"] == b"now"
    c.cmd(b"FIN " + first["id"])
    expect_no_frame(c, max(0.0, 0.9 - (time.time() - t0)))
    m = read_message_within(c, SLACK)
    assert m is not None, "deferred message never delivered"
    assert time.time() - t0 >= 0.9
    assert (m["body"], m["attempts"]) == (b"later", 1)


def test_topic_without_channel_holds_messages(broker, connect):
    """Q2/Q16: messages published to a topic with no channel are kept and delivered to the
    first channel created by SUB."""
    p = connect(broker)
    pub(p, "hold", b"h0")
    mpub(p, "hold", [b"h1", b"h2", b"h3"])
    p.cmd("DPUB hold 0", b"h4")
    assert p.read_frame() == OK
    time.sleep(0.2)
    c = consumer(connect, broker, "hold", "first", rdy=10)
    got = read_messages(c, 5)
    assert sorted(m["body"] for m in got) == [b"h0", b"h1", b"h2", b"h3", b"h4"]
    expect_no_frame(c, 0.3)


def test_every_channel_gets_every_message(broker, connect):
    """Q1: each channel receives every message; within a channel each message goes to
    exactly one of its consumers."""
    a = consumer(connect, broker, "fan", "a", rdy=500)
    b = consumer(connect, broker, "fan", "b", rdy=500)
    s1 = consumer(connect, broker, "fan", "shared", rdy=500)
    s2 = consumer(connect, broker, "fan", "shared", rdy=500)
    p = connect(broker)
    expected = [f"f{i}".encode() for i in range(300)]
    mpub(p, "fan", expected[:200])
    for body in expected[200:]:
        p.cmd("PUB fan", body)
    for _ in expected[200:]:
        assert p.read_frame() == OK
    assert sorted(m["body"] for m in read_messages(a, 300)) == sorted(expected)
    assert sorted(m["body"] for m in read_messages(b, 300)) == sorted(expected)
    shared = []
    for w in (s1, s2):  # RDY 500 > 300: everything is in flight at once, drain each
        while True:
            m = read_message_within(w, 0.5)
            if m is None:
                break
            w.cmd(b"FIN " + m["id"])
            shared.append(m["body"])
    assert sorted(shared) == sorted(expected)  # no duplicates, nothing lost


def test_ephemeral_channel_deleted_after_last_client(broker, connect):
    """Q15/T36: an ephemeral channel is deleted when its last client leaves: messages
    published meanwhile are not kept for it, and a later SUB starts empty."""
    keep = consumer(connect, broker, "eph", "keep", rdy=100)
    e1 = consumer(connect, broker, "eph", "e#ephemeral", rdy=100)
    p = connect(broker)
    pub(p, "eph", b"m1")
    assert read_messages(e1, 1)[0]["body"] == b"m1"
    e1.close()
    time.sleep(0.5)
    pub(p, "eph", b"m2")
    time.sleep(0.2)
    e2 = consumer(connect, broker, "eph", "e#ephemeral", rdy=100)
    expect_no_frame(e2, 0.6)
    pub(p, "eph", b"m3")
    assert read_messages(e2, 1)[0]["body"] == b"m3"
    expect_no_frame(e2, 0.3)
    assert sorted(m["body"] for m in read_messages(keep, 3)) == [b"m1", b"m2", b"m3"]


def test_durable_channel_keeps_messages_between_clients(broker, connect):
    """Q1/Q15 contrast: a normal channel outlives its clients and keeps messages for the
    next SUB."""
    c1 = consumer(connect, broker, "dur", "c", rdy=10)
    p = connect(broker)
    pub(p, "dur", b"d1")
    assert read_messages(c1, 1)[0]["body"] == b"d1"
    c1.close()
    time.sleep(0.3)
    mpub(p, "dur", [b"d2", b"d3"])
    c2 = consumer(connect, broker, "dur", "c", rdy=10)
    assert sorted(m["body"] for m in read_messages(c2, 2)) == [b"d2", b"d3"]


def test_disconnect_leaves_message_in_flight_until_timeout(brokers, connect):
    """T36/Q6: when a consumer disconnects with a message in flight, the message is not
    requeued at once but after its timeout, then redelivered with attempts 2."""
    b = brokers(args=["--msg-timeout=1s"])
    a = consumer(connect, b, "disc", "c", rdy=1)
    p = connect(b)
    pub(p, "disc", b"orphan")
    m = read_messages(a, 1, fin=False)[0]
    t0 = time.time()
    other = consumer(connect, b, "disc", "c", rdy=1)
    a.close()
    expect_no_frame(other, 0.6)
    m2 = read_message_within(other, SLACK)
    assert m2 is not None, "in-flight message of a closed client was never redelivered"
    assert time.time() - t0 >= 0.8
    assert (m2["id"], m2["body"], m2["attempts"]) == (m["id"], b"orphan", 2)


def test_sampling_drops_unsampled_messages(broker, connect):
    """T35: with sample_rate=50 about half of the messages are delivered (P = 51/100) and
    the skipped ones are dropped from the channel, not requeued for other consumers."""
    a = consumer(connect, broker, "samp", "c", rdy=1000, sample_rate=50)
    p = connect(broker)
    mpub(p, "samp", [f"s{i}".encode() for i in range(600)])
    got = []
    while True:
        m = read_message_within(a, 0.7)
        if m is None:
            break
        a.cmd(b"FIN " + m["id"])
        got.append(m["body"])
    assert 200 <= len(got) <= 420, len(got)
    assert len(set(got)) == len(got)
    other = consumer(connect, broker, "samp", "c", rdy=1000)
    expect_no_frame(other, 0.7)
