"""A large backlog goes to disk and comes back byte for byte, in order (Q2, Q3, Q21, D3, D4).

With --mem-queue-size=0 every message of a normal topic/channel goes through the disk
queue (Q3). One publisher connection and one channel consumer: the delivery order is the
publish order. Volumes are large on purpose (a million messages, several segment files);
the raw-socket consumer (helpers.wire.RawConsumer) takes them in a few seconds.
"""

import os
import random

import pytest

from helpers.disk import all_segment_files, segment_files
from helpers.http_api import post_ok
from helpers.wait import wait_channel, wait_topic
from helpers.wire import OK, cmd_bytes, Conn, mpub_body, RawConsumer

PATTERN = bytes(random.Random(7).randrange(256) for _ in range(4096))


def body_of(i):
    """~100 bytes (60..148), binary, unique, length varies so records straddle block
    boundaries everywhere."""
    n = 52 + (i * 7919) % 89
    off = (i * 104729) % 3900
    return b"%08d" % i + PATTERN[off:off + n]


def publish_range(b, topic, start, stop, batch=1000, window=8):
    """MPUB bodies start..stop-1 in order on one connection, pipelined."""
    c = Conn(b, timeout=120)
    try:
        pending = 0
        for k in range(start, stop, batch):
            bodies = [body_of(i) for i in range(k, min(k + batch, stop))]
            c.send(cmd_bytes(f"MPUB {topic}", mpub_body(bodies)))
            pending += 1
            if pending >= window:
                assert c.read_frame() == OK
                pending -= 1
        while pending:
            assert c.read_frame() == OK
            pending -= 1
    finally:
        c.close()


class InOrder:
    """Checks a stream of messages against body_of(start), body_of(start+1), ..."""

    def __init__(self, start=0):
        self.next = start
        self.bad = []

    def __call__(self, m):
        if m.body != body_of(self.next) and len(self.bad) < 5:
            self.bad.append((self.next, m.body[:20]))
        self.next += 1


@pytest.mark.parametrize("cores", [2, 1])
def test_million_messages_spill_to_disk_and_come_back_in_order(brokers, cores):
    """Q3, Q21, D3/D4: 1,000,000 messages of ~100 B with --mem-queue-size=0 are all on
    disk (channel depth == backend_depth == 1,000,000, topic depth 0, segment files hold
    at least the bodies' bytes), then one consumer receives every body byte for byte in
    publish order, exactly once, and the channel is empty afterwards."""
    n = 1_000_000
    b = brokers(args=["--mem-queue-size=0"], cores=cores)
    post_ok(b, "/topic/create?topic=big")
    post_ok(b, "/channel/create?topic=big&channel=ch")
    publish_range(b, "big", 0, n)

    t = wait_topic(b, "big", timeout=60, message_count=n, depth=0)
    assert t["backend_depth"] == 0
    ch = wait_channel(b, "big", "ch", timeout=60, depth=n)
    assert ch["backend_depth"] == n, ch
    assert ch["in_flight_count"] == 0 and ch["deferred_count"] == 0
    assert ch["message_count"] == n

    body_bytes = sum(len(body_of(i)) for i in range(n))
    on_disk = sum(
        os.path.getsize(p)
        for q in ("big", "big:ch")
        for p in segment_files(b.data_dir, q)
    )
    assert on_disk >= body_bytes, (on_disk, body_bytes, all_segment_files(b.data_dir))

    c = RawConsumer(b, "big", "ch", rdy=2500)
    check = InOrder()
    c.take(n, quiet=0.5, timeout=150, on_message=check)
    assert check.bad == [], f"out of order or corrupt (index, body head): {check.bad}"
    assert check.next == n, f"{check.next} of {n} delivered (no more, no less)"
    wait_channel(b, "big", "ch", depth=0, backend_depth=0, in_flight_count=0)


def test_topic_without_channel_holds_backlog_on_disk(brokers):
    """Q2, Q3, Q21: a topic without channels keeps 100,000 messages on disk (topic depth
    == backend_depth == 100,000); its first channel then receives all of them in order,
    and a second channel created afterwards receives none of them (Q1: only messages
    published after it exists)."""
    n = 100_000
    b = brokers(args=["--mem-queue-size=0"], cores=2)
    publish_range(b, "held", 0, n)
    t = wait_topic(b, "held", depth=n)
    assert t["backend_depth"] == n, {k: v for k, v in t.items() if k != "channels"}
    assert t["channels"] == []

    c = RawConsumer(b, "held", "first", rdy=2500)
    check = InOrder()
    c.take(n, quiet=0.5, timeout=60, on_message=check)
    assert check.bad == [] and check.next == n, (check.bad, check.next)
    wait_topic(b, "held", depth=0, backend_depth=0)

    late = RawConsumer(b, "held", "late", rdy=100)
    assert late.take(None, quiet=0.5) == []
    # Both channels get what is published from now on.
    publish_range(b, "held", n, n + 10)
    assert [m.body for m in c.take(10, quiet=0.3)] == [body_of(i) for i in range(n, n + 10)]
    assert [m.body for m in late.take(10, quiet=0.3)] == [body_of(i) for i in range(n, n + 10)]


def test_fan_out_from_disk_to_two_channels(brokers):
    """Q1, Q3: with --mem-queue-size=0 two channels of one topic each receive all 200,000
    messages in order from the disk queue, consumed one after the other (the second
    channel's backlog stays on disk while the first is drained)."""
    n = 200_000
    b = brokers(args=["--mem-queue-size=0"], cores=2)
    post_ok(b, "/topic/create?topic=fan")
    post_ok(b, "/channel/create?topic=fan&channel=a")
    post_ok(b, "/channel/create?topic=fan&channel=b")
    publish_range(b, "fan", 0, n)
    wait_channel(b, "fan", "a", depth=n, backend_depth=n)
    wait_channel(b, "fan", "b", depth=n, backend_depth=n)
    for ch in ("a", "b"):
        c = RawConsumer(b, "fan", ch, rdy=2500)
        check = InOrder()
        c.take(n, quiet=0.5, timeout=60, on_message=check)
        assert check.bad == [] and check.next == n, (ch, check.bad, check.next)
        c.close()
    wait_channel(b, "fan", "b", depth=0, backend_depth=0)
    wait_channel(b, "fan", "a", depth=0, backend_depth=0)


def test_small_memory_queue_overflow_keeps_every_message(brokers):
    """Q3, Q17: with --mem-queue-size=100 a 100,000-message burst overflows to disk; the
    consumer gets every body exactly once (order is not guaranteed when memory and disk
    interleave), and depth counts both (Q21)."""
    n = 100_000
    b = brokers(args=["--mem-queue-size=100"], cores=2)
    post_ok(b, "/topic/create?topic=ovf")
    post_ok(b, "/channel/create?topic=ovf&channel=c")
    publish_range(b, "ovf", 0, n)
    ch = wait_channel(b, "ovf", "c", depth=n)
    assert n - 100 <= ch["backend_depth"] <= n, ch
    c = RawConsumer(b, "ovf", "c", rdy=2500)
    seen = {}

    def record(m):
        seen[m.body] = seen.get(m.body, 0) + 1

    c.take(n, quiet=0.5, timeout=60, on_message=record)
    assert len(seen) == n and set(seen.values()) == {1}, (len(seen), max(seen.values()))
    assert all(body_of(i) in seen for i in range(n))
