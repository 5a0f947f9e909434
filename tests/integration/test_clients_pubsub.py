"""Publish / consume through pynsq 0.9.1 (Reader + Writer): bodies, sizes, fan-out, load balancing.

Reference rows: nsqd-reference.md section 1 (T*) and 2 (Q*).
"""

import os
import time

import pytest

from helpers.clients import assert_valid_message_id, binary_bodies, Collector, error_text


@pytest.mark.parametrize("cores", [1, 2])
def test_pub_mpub_roundtrip_byte_exact(brokers, loop, cores):
    """T30/T31/T6/T7: PUB and MPUB bodies arrive byte-exact, once, with attempts 1, a
    16-lowercase-hex id (unique) and a nanosecond publish timestamp; on 1 and 2 cores."""
    b = brokers(cores=cores)
    topic = "roundtrip"
    col = Collector()
    r = loop.reader(b.tcp_address, topic, "ch", col, max_in_flight=20)
    loop.wait_subscribed([r])

    w = loop.writer(b.tcp_address)
    loop.wait_connected([w])
    singles = binary_bodies()
    batch1 = [b"mpub-a-%d-" % i + bytes([i]) * (i + 1) for i in range(50)]
    batch2 = [os.urandom(1 + (i * 37) % 700) for i in range(20)] + [bytes(range(256))]
    ops = [("pub", topic, body) for body in singles] + [("mpub", topic, batch1), ("mpub", topic, batch2)]
    res = loop.publish(w, ops)
    assert res == [b"OK"] * len(ops), [error_text(x) if not isinstance(x, bytes) else x for x in res]

    expected = singles + batch1 + batch2
    assert loop.run_until(lambda: len(col.got) >= len(expected), 15), (len(col.got), len(expected))
    loop.sleep(0.3)  # any duplicate would show up now
    assert sorted(col.bodies) == sorted(expected)
    ids = [g[0] for g in col.got]
    for mid in ids:
        assert_valid_message_id(mid)
    assert len(set(ids)) == len(ids), "message ids must be unique"
    assert all(g[2] == 1 for g in col.got), [g[2] for g in col.got]
    assert not r.errors, r.errors


def test_message_timestamp_is_publish_time_ns(broker, loop):
    """T6: the 8-byte timestamp is the publish time in nanoseconds (Unix epoch)."""
    got = []

    def handler(m):
        got.append(m.timestamp)
        return True

    r = loop.reader(broker.tcp_address, "ts", "ch", handler)
    loop.wait_subscribed([r])
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    t0 = time.time_ns()
    assert loop.publish(w, [("pub", "ts", b"x")]) == [b"OK"]
    t1 = time.time_ns()
    assert loop.run_until(lambda: got, 5)
    # allow 1 s of clock slop on each side; a seconds or ms value would be off by 10^6+
    assert t0 - 10**9 <= got[0] <= t1 + 10**9, (t0, got[0], t1)


def test_max_msg_size_boundary(brokers, loop):
    """T30/T31: with --max-msg-size=4096 a 4096-byte PUB and an MPUB of 4096-byte bodies are
    delivered byte-exact; a 4097-byte PUB and an MPUB holding one 4097-byte body are rejected
    with E_BAD_MESSAGE (fatal: connection closed) and nothing of them is delivered."""
    b = brokers(args=["--max-msg-size=4096"])
    topic = "sizes"
    col = Collector()
    r = loop.reader(b.tcp_address, topic, "ch", col, max_in_flight=10)
    loop.wait_subscribed([r])

    exact = bytes(i % 256 for i in range(4096))
    exact_b = os.urandom(4096)
    w = loop.writer(b.tcp_address)
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", topic, exact), ("mpub", topic, [exact_b, b"small"])]) == [b"OK", b"OK"]

    # one byte over: PUB
    w_bad = loop.writer(b.tcp_address)
    loop.wait_connected([w_bad])
    res = loop.publish(w_bad, [("pub", topic, b"P" * 4097)])
    assert not isinstance(res[0], bytes), "oversized PUB must not be acknowledged: %r" % res
    assert error_text(res[0]).startswith("E_BAD_MESSAGE"), error_text(res[0])
    assert loop.run_until(lambda: w_bad.closed_conns >= 1, 5), "E_BAD_MESSAGE is fatal (T11): connection must close"

    # one byte over inside an MPUB: the whole batch is refused (validated before enqueue)
    w_bad2 = loop.writer(b.tcp_address)
    loop.wait_connected([w_bad2])
    res = loop.publish(w_bad2, [("mpub", topic, [b"mpub-ok-1", b"M" * 4097, b"mpub-ok-2"])])
    assert not isinstance(res[0], bytes), "oversized MPUB member must not be acknowledged: %r" % res
    assert error_text(res[0]).startswith("E_BAD_MESSAGE"), error_text(res[0])
    assert loop.run_until(lambda: w_bad2.closed_conns >= 1, 5)

    # a marker published afterwards on the good connection proves ordering of arrival
    assert loop.publish(w, [("pub", topic, b"marker")]) == [b"OK"]
    assert loop.run_until(lambda: b"marker" in col.bodies and len(col.got) >= 4, 10), col.bodies
    loop.sleep(0.5)
    assert sorted(col.bodies) == sorted([exact, exact_b, b"small", b"marker"])
    # the valid 4096-byte bodies are byte-exact
    assert exact in col.bodies and exact_b in col.bodies


def test_channels_each_get_every_message(broker, loop):
    """Q1: a topic copies every message to every channel (3 channels, 120 messages)."""
    topic = "fanout"
    cols = {c: Collector() for c in ("c1", "c2", "c3")}
    readers = [loop.reader(broker.tcp_address, topic, c, cols[c], max_in_flight=10) for c in cols]
    loop.wait_subscribed(readers)

    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    bodies = [b"fan-%03d-" % i + os.urandom(i % 40) for i in range(120)]
    res = loop.publish(w, [("pub", topic, x) for x in bodies[:60]] + [("mpub", topic, bodies[60:])])
    assert all(x == b"OK" for x in res)
    assert loop.run_until(lambda: all(len(c.got) >= len(bodies) for c in cols.values()), 15), {
        k: len(v.got) for k, v in cols.items()
    }
    loop.sleep(0.3)
    for name, c in cols.items():
        assert sorted(c.bodies) == sorted(bodies), name
    # channel copies keep the topic's message id (T7)
    ids = [sorted(g[0] for g in c.got) for c in cols.values()]
    assert ids[0] == ids[1] == ids[2]


def test_consumers_on_one_channel_share_the_messages(broker, loop):
    """Q1: within a channel each message goes to exactly one consumer: the union of two
    consumers equals the published set, with no duplicate and no loss; both get some."""
    topic = "share"
    cols = [[], []]

    def make_handler(i):
        def handler(m):
            cols[i].append(bytes(m.body))
            m.enable_async()
            # hold each message briefly so the other consumer is the ready one
            loop.io.call_later(0.005, m.finish)
        return handler

    readers = [loop.reader(broker.tcp_address, topic, "workers", make_handler(i)) for i in range(2)]
    loop.wait_subscribed(readers)

    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    bodies = [b"job-%04d" % i for i in range(200)]
    res = loop.publish(w, [("mpub", topic, bodies[:100])] + [("pub", topic, x) for x in bodies[100:]])
    assert all(x == b"OK" for x in res)
    assert loop.run_until(lambda: len(cols[0]) + len(cols[1]) >= len(bodies), 20), (len(cols[0]), len(cols[1]))
    loop.sleep(0.5)
    union = cols[0] + cols[1]
    assert len(union) == len(bodies), "duplicates or loss: %d delivered for %d published" % (len(union), len(bodies))
    assert sorted(union) == sorted(bodies)
    assert cols[0] and cols[1], "both consumers must get some messages: %d / %d" % (len(cols[0]), len(cols[1]))


def test_max_in_flight_window_many_messages(broker, loop):
    """T24/Q4: a pynsq Reader with max_in_flight=50 (RDY 50) that holds messages and FINs in
    batches of 25 receives up to 50 unfinished messages at once, never more, and gets all
    1000 messages exactly once."""
    topic = "window"
    state = {"pending": [], "max_unfinished": 0, "seen": []}

    def handler(m):
        m.enable_async()
        state["seen"].append(bytes(m.body))
        state["pending"].append(m)
        state["max_unfinished"] = max(state["max_unfinished"], len(state["pending"]))
        if len(state["pending"]) >= 25:
            for p in state["pending"]:
                p.finish()
            state["pending"] = []

    r = loop.reader(broker.tcp_address, topic, "ch", handler, max_in_flight=50)
    loop.wait_subscribed([r])
    w = loop.writer(broker.tcp_address)
    loop.wait_connected([w])
    bodies = [b"w%04d" % i for i in range(1000)]
    res = loop.publish(w, [("mpub", topic, bodies[i:i + 100]) for i in range(0, 1000, 100)])
    assert res == [b"OK"] * 10
    assert loop.run_until(lambda: len(state["seen"]) >= 1000, 30), len(state["seen"])
    loop.sleep(0.3)
    assert len(state["seen"]) == 1000
    assert sorted(state["seen"]) == sorted(bodies)
    assert state["max_unfinished"] >= 25, "more than one message must be in flight at once"
    assert state["max_unfinished"] <= 50, "the broker exceeded RDY 50: %d unfinished" % state["max_unfinished"]
    assert not r.errors, r.errors
