"""Pipelined publishing (issue 11): a connection keeps reading while its earlier publishes
wait for the topic's core (or the disk), and its answers still come back strictly in command
order, with nsqd's close-on-fatal rule (T10-T15). With --cores 2 every connection publishes
to topics of both cores, so answers that come back over the ring race local ones."""

import struct
import threading
import zlib

from helpers.http_api import metric
from helpers.wire import FRAME_ERROR, FRAME_MESSAGE, FRAME_RESPONSE, Wire, cmd_bytes, mpub_body

CORES = 2


def topic_on(core, prefix):
    """A topic name owned by `core` (ringsqd's owner: crc32(name) % cores)."""
    i = 0
    while True:
        name = f"{prefix}{i}"
        if zlib.crc32(name.encode()) % CORES == core:
            return name
        i += 1


def pub(topic, body):
    return f"PUB {topic}\n".encode() + struct.pack(">i", len(body)) + body


def keep_messages(b, topics):
    """A channel on each topic (SUB, then gone), so every message published is kept."""
    for t in topics:
        w = Wire(b.tcp_address)
        w.cmd(f"SUB {t} ch")
        assert w.read_frame() == (FRAME_RESPONSE, b"OK")
        w.close()


def read_answers(w, n):
    return [w.read_frame() for _ in range(n)]


def consume(broker, topic, n):
    c = Wire(broker.tcp_address)
    c.cmd(f"SUB {topic} ch")
    assert c.read_frame() == (FRAME_RESPONSE, b"OK")
    c.cmd(f"RDY {n}")
    bodies = []
    for _ in range(n):
        m = c.read_message()
        bodies.append(m["body"])
        c.cmd(b"FIN " + m["id"])
    c.close()
    return bodies


def test_pipelined_pubs_to_both_cores_answer_in_order(brokers):
    b = brokers(cores=CORES)
    topics = [topic_on(0, "pipe_a"), topic_on(1, "pipe_b")]
    keep_messages(b, topics)
    n = 400
    w = Wire(b.tcp_address)
    # One write: every command is in the broker's buffer before any answer.
    w.send(b"".join(pub(topics[i % 2], b"m%05d" % i) for i in range(n)))
    assert read_answers(w, n) == [(FRAME_RESPONSE, b"OK")] * n
    for k, t in enumerate(topics):
        assert consume(b, t, n // 2) == [b"m%05d" % i for i in range(k, n, 2)]
    w.close()


def test_a_non_publish_answer_waits_for_the_publishes_before_it(brokers):
    b = brokers(cores=CORES)
    remote = [topic_on(0, "order_a"), topic_on(1, "order_b")]
    w = Wire(b.tcp_address)
    # PUBs to both cores, a NOP (no answer), an IDENTIFY (answers OK), one more PUB: all in
    # one write, so IDENTIFY is decoded while the PUBs may still wait for their core.
    w.send(
        pub(remote[0], b"x")
        + pub(remote[1], b"y")
        + b"NOP\n"
        + b"IDENTIFY\n"
        + struct.pack(">i", 2)
        + b"{}"
        + pub(remote[1], b"z")
    )
    assert read_answers(w, 4) == [(FRAME_RESPONSE, b"OK")] * 4
    w.close()


def test_a_fatal_error_comes_after_the_answers_before_it_and_closes(brokers):
    b = brokers(cores=CORES)
    topics = [topic_on(0, "fatal_a"), topic_on(1, "fatal_b")]
    w = Wire(b.tcp_address)
    w.send(
        pub(topics[0], b"1")
        + pub(topics[1], b"2")
        + b"PUB bad!topic\n"
        + struct.pack(">i", 1)
        + b"3"
        + pub(topics[0], b"never")
    )
    assert read_answers(w, 2) == [(FRAME_RESPONSE, b"OK")] * 2
    ftype, data = w.read_frame()
    assert (ftype, data) == (FRAME_ERROR, b"E_BAD_TOPIC PUB topic name \"bad!topic\" is not valid")
    assert w.is_closed()
    w.close()
    # The publish after the fatal error was never run.
    s = Wire(b.tcp_address)
    s.cmd(f"SUB {topics[0]} ch")
    assert s.read_frame() == (FRAME_RESPONSE, b"OK")
    s.cmd("RDY 10")
    m = s.read_message()
    assert m["body"] == b"1"
    s.sock.settimeout(0.5)
    try:
        extra = s.read_frame()
    except OSError:
        extra = None
    assert extra is None or extra[0] != FRAME_MESSAGE, extra
    s.close()


def test_pipelined_mpub_and_dpub_keep_their_place(brokers):
    b = brokers(cores=CORES)
    t = topic_on(1, "mix")
    w = Wire(b.tcp_address)
    bodies = [b"a", b"b"]
    mpub = struct.pack(">i", len(bodies)) + b"".join(struct.pack(">i", len(x)) + x for x in bodies)
    w.send(
        f"MPUB {t}\n".encode()
        + struct.pack(">i", len(mpub))
        + mpub
        + f"DPUB {t} 0\n".encode()
        + struct.pack(">i", 1)
        + b"c"
        + pub(t, b"d")
        + f"MPUB {t}\n".encode()
        + struct.pack(">i", 4)
        + struct.pack(">i", 0)  # MPUB with no message: fatal E_BAD_BODY
    )
    assert read_answers(w, 3) == [(FRAME_RESPONSE, b"OK")] * 3
    ftype, data = w.read_frame()
    assert ftype == FRAME_ERROR and data.startswith(b"E_BAD_BODY"), data
    assert w.is_closed()
    w.close()


def mpub(topic, bodies):
    return cmd_bytes(f"MPUB {topic}", mpub_body(bodies))


def test_pipelining_past_the_per_connection_limits_loses_nothing(brokers):
    """Issue 11 review: a connection holds at most 64 unanswered publishes (or 4 MiB of
    bodies) and stops reading until answers leave. Durable publishes (--sync-every=1, every
    OK after fdatasync) to both cores, pipelined far past both limits in one write, are all
    answered OK in order and all kept, exactly once."""
    b = brokers(cores=CORES, args=["--sync-every=1", "--mem-queue-size=0"])
    topics = [topic_on(0, "limit_a"), topic_on(1, "limit_b")]
    keep_messages(b, topics)
    singles = [b"s%05d" % i for i in range(1000)]  # past the count limit
    bigs = [[b"%d-%d|" % (i, k) + b"x" * (256 << 10) for k in range(4)] for i in range(12)]
    stream = b"".join(pub(topics[i % 2], x) for i, x in enumerate(singles))
    stream += b"".join(mpub(topics[i % 2], batch) for i, batch in enumerate(bigs))  # 12 MiB
    w = Wire(b.tcp_address, timeout=30)
    sender = threading.Thread(target=w.send, args=(stream,), daemon=True)
    sender.start()
    assert read_answers(w, len(singles) + len(bigs)) == [(FRAME_RESPONSE, b"OK")] * (
        len(singles) + len(bigs)
    )
    sender.join(timeout=30)
    w.close()
    for k, t in enumerate(topics):
        want = singles[k::2] + [x for batch in bigs[k::2] for x in batch]
        assert consume(b, t, len(want)) == want


def test_a_publisher_that_waits_for_each_ok_moves_to_its_topics_core(brokers):
    """Issue 11: single PUBs, each waiting for its OK, to the other core's topic move the
    connection there after 16 (MOVE_PUBLISHER_AFTER), decided between answers; every
    publish is answered once and every body arrives, in order."""
    b = brokers(cores=CORES)
    topics = [topic_on(0, "mv_a"), topic_on(1, "mv_b")]
    keep_messages(b, topics)
    w = Wire(b.tcp_address)
    for t in topics:  # one of them is on the other core
        for i in range(24):
            w.send(pub(t, b"%s-%02d" % (t.encode(), i)))
            assert w.read_frame() == (FRAME_RESPONSE, b"OK")
    assert metric(b, "ringsq_core_handoffs_in_total") >= 1, "the publisher did not move"
    w.close()
    for t in topics:
        assert consume(b, t, 24) == [b"%s-%02d" % (t.encode(), i) for i in range(24)]
