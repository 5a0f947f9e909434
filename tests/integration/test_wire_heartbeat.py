"""Heartbeats (T14, T33) and output buffering (T15, T34) on raw bytes.
Timings are deliberately loose: these check behaviour, not speed."""

import time

from helpers.wire import (
    FRAME_RESPONSE,
    OK,
    assert_usable,
    consumer,
    identify,
    identify_ok,
    pub,
    read_message_within,
    read_raw_frame_within,
    sub,
)

HEARTBEAT = (FRAME_RESPONSE, b"_heartbeat_")


def test_heartbeat_frames_every_interval(broker, connect):
    """T33: with heartbeat_interval=1000 a `_heartbeat_` response frame arrives about every
    second (also before SUB), as long as the client answers (here with NOP)."""
    w = connect(broker)
    identify_ok(w, heartbeat_interval=1000)
    t0 = time.time()
    stamps = []
    while len(stamps) < 3:
        fr = read_raw_frame_within(w, 2.0)
        assert fr == HEARTBEAT, fr
        stamps.append(time.time())
        w.cmd("NOP")
        if len(stamps) == 2:
            sub(w, "hb", "c")
    assert 2.0 <= stamps[-1] - t0 <= 4.5, stamps
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(0.6 <= g <= 1.6 for g in gaps), gaps
    assert_usable(w)


def test_unanswered_heartbeats_disconnect(broker, connect):
    """T33: a client that sends nothing after IDENTIFY heartbeat_interval=1000 is
    disconnected after about 2 intervals (read deadline), having received heartbeats."""
    w = connect(broker)
    identify_ok(w, heartbeat_interval=1000)
    t0 = time.time()
    assert w.is_closed(5.0), "silent client was never disconnected"
    elapsed = time.time() - t0
    assert 1.5 <= elapsed <= 4.0, elapsed
    assert b"_heartbeat_" in w.buf


def test_subscribed_unanswered_heartbeats_disconnect(broker, connect):
    """T33: the same read deadline applies to a subscribed consumer."""
    w = connect(broker)
    identify_ok(w, heartbeat_interval=1000)
    sub(w, "hbsub", "c")
    w.cmd("RDY 1")
    t0 = time.time()
    assert w.is_closed(5.0), "silent subscribed client was never disconnected"
    assert 1.5 <= time.time() - t0 <= 4.0


def test_nop_keeps_connection_alive(broker, connect):
    """T33/T29: a client answering with NOP twice a second stays connected well past
    2 heartbeat intervals."""
    w = connect(broker)
    identify_ok(w, heartbeat_interval=1000)
    sub(w, "alive", "c")
    t0 = time.time()
    while time.time() - t0 < 2.8:
        w.cmd("NOP")
        assert not w.is_closed(0.5)
    assert_usable(w)


def test_max_heartbeat_interval_flag_bounds(brokers, connect):
    """T14: heartbeat_interval up to --max-heartbeat-interval is accepted, above it is
    `E_BAD_BODY IDENTIFY heartbeat interval (N) is invalid`."""
    b = brokers(args=["--max-heartbeat-interval=2s"])
    w = connect(b)
    assert identify(w, heartbeat_interval=2000) == OK
    w2 = connect(b)
    assert identify(w2, heartbeat_interval=2001) == (1, b"E_BAD_BODY IDENTIFY heartbeat interval (2001) is invalid")
    assert w2.is_closed(2.0)


def test_buffered_delivery_still_happens(broker, connect):
    """T34: with output_buffer_timeout=1000 and a large RDY, a lone message is still
    flushed to the client (by the buffer timeout at the latest)."""
    c = consumer(connect, broker, "obuf", "c", rdy=100, output_buffer_timeout=1000, output_buffer_size=16384)
    p = connect(broker)
    pub(p, "obuf", b"buffered")
    m = read_message_within(c, 3.0)
    assert m is not None and m["body"] == b"buffered"


def test_not_ready_forces_flush(broker, connect):
    """T34(a): when the client is no longer ready (in_flight >= RDY) the buffer is flushed at
    once, even with a 5 s output_buffer_timeout."""
    c = consumer(connect, broker, "obufr", "c", rdy=1, output_buffer_timeout=5000)
    p = connect(broker)
    t0 = time.time()
    pub(p, "obufr", b"flush-me")
    m = read_message_within(c, 4.0)
    assert m is not None and m["body"] == b"flush-me"
    assert time.time() - t0 < 2.0


def test_unbuffered_delivery_is_immediate(brokers, connect):
    """T15/T34: output_buffer_size -1 (size 1, no timed flush) delivers every message at once
    even when the broker's default --output-buffer-timeout is 2 s and RDY is large."""
    b = brokers(args=["--output-buffer-timeout=2s"])
    c = consumer(connect, b, "nobuf", "c", rdy=100, output_buffer_size=-1)
    p = connect(b)
    for i in range(3):
        t0 = time.time()
        pub(p, "nobuf", f"u{i}".encode())
        m = read_message_within(c, 3.0)
        assert m is not None and m["body"] == f"u{i}".encode()
        assert time.time() - t0 < 0.6, time.time() - t0
        c.cmd(b"FIN " + m["id"])
