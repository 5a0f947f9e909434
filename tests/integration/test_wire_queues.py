"""Memory/disk queue behaviour seen from the wire (Q2, Q3, Q14, Q15, D12)."""

import os

from helpers.wire import OK, consumer, expect_no_frame, mpub, pub, read_message_within, read_messages


def test_mem_queue_size_zero_goes_through_disk(brokers, connect):
    """Q3: with --mem-queue-size=0 normal topics/channels use the disk queue only; every
    message (including a held backlog, Q2) still arrives byte-exact, exactly once."""
    b = brokers(args=["--mem-queue-size=0"])
    p = connect(b)
    backlog = [os.urandom(200) + b"%04d" % i for i in range(300)]
    mpub(p, "disk", backlog[:150])
    for body in backlog[150:]:
        p.cmd("PUB disk", body)
    for _ in backlog[150:]:
        assert p.read_frame() == OK
    c = consumer(connect, b, "disk", "c", rdy=100)
    got = read_messages(c, 300, timeout=20)
    assert sorted(m["body"] for m in got) == sorted(backlog)
    expect_no_frame(c, 0.3)


def test_small_mem_queue_overflows_to_disk(brokers, connect):
    """Q3: with --mem-queue-size=10, 2000 messages overflow to disk and none is lost or
    duplicated for a durable channel."""
    b = brokers(args=["--mem-queue-size=10"])
    c = consumer(connect, b, "ovf", "c", rdy=0)
    p = connect(b)
    bodies = [b"o%05d" % i for i in range(2000)]
    for k in range(0, 2000, 500):
        mpub(p, "ovf", bodies[k:k + 500])
    c.cmd("RDY 2500")
    got = read_messages(c, 2000, timeout=20)
    assert sorted(m["body"] for m in got) == bodies
    expect_no_frame(c, 0.3)


def test_ephemeral_channel_overflow_dropped(brokers, connect):
    """Q15/Q3/D12: an ephemeral channel has no disk backend: with --mem-queue-size=10 and a
    consumer at RDY 0, only the 10 queued messages survive a burst of 50; a durable
    channel of the same topic keeps all 50."""
    b = brokers(args=["--mem-queue-size=10"])
    e = consumer(connect, b, "eovf", "e#ephemeral", rdy=0)
    d = consumer(connect, b, "eovf", "d", rdy=0)
    p = connect(b)
    mpub(p, "eovf", [b"e%02d" % i for i in range(50)])
    pub(p, "eovf", b"sync")
    d.cmd("RDY 100")
    assert len(read_messages(d, 51)) == 51
    e.cmd("RDY 100")
    got = []
    while True:
        m = read_message_within(e, 0.7)
        if m is None:
            break
        e.cmd(b"FIN " + m["id"])
        got.append(m["body"])
    assert len(got) == 10, len(got)
    assert len(set(got)) == len(got)


def test_ephemeral_topic_works_and_holds_backlog(broker, connect):
    """Q14/Q2: a `#ephemeral` topic accepts PUB/MPUB, holds messages until its first channel
    appears (in memory) and delivers them."""
    p = connect(broker)
    pub(p, "et#ephemeral", b"a")
    mpub(p, "et#ephemeral", [b"b", b"c"])
    c = consumer(connect, broker, "et#ephemeral", "c", rdy=10)
    assert sorted(m["body"] for m in read_messages(c, 3)) == [b"a", b"b", b"c"]
