"""Cross-core routing with real pynsq clients on a `--cores=2` broker.

ringsq owns each topic on one core; a PUB arriving on another core is forwarded and a
subscriber is handed to the owning core. Whatever core a connection lands on, nsqd's
observable contract must hold: every message exactly once per channel (Q1), byte-exact
(T6, T30/T31), attempts 1 (Q7), and the OK of SUB means the channel exists (T23).
"""

import hashlib
import os
import time

from helpers.clients import assert_valid_message_id


def _body(topic, writer, i):
    # a prefix that names the message, then bytes covering every value, varying length
    tail = os.urandom((i * 131 + writer * 17) % 900)
    return b"%s|w%02d|%04d|" % (topic.encode(), writer, i) + bytes(range(256))[(i % 256):] + tail


def test_many_topics_many_connections_exactly_once(brokers, loop):
    """Q1/T23/T30/T31/Q7 across cores: 24 topics x 2 channels (48 consumer connections) and
    12 publisher connections, each publishing to every topic with PUB and MPUB. Every
    channel receives every message of its topic exactly once, byte-exact, attempts 1."""
    b = brokers(cores=2)
    topics = ["xc-%02d" % t for t in range(24)]
    channels = ["alpha", "beta"]
    received = {(t, c): [] for t in topics for c in channels}

    def make_handler(key):
        def handler(m):
            received[key].append((bytes(m.id), bytes(m.body), m.attempts))
            return True
        return handler

    readers = []
    for t in topics:
        for c in channels:
            readers.append(loop.reader(b.tcp_address, t, c, make_handler((t, c)), max_in_flight=16))
    loop.wait_subscribed(readers, timeout=20)

    writers = [loop.writer(b.tcp_address) for _ in range(12)]
    loop.wait_connected(writers, timeout=20)

    expected = {t: [] for t in topics}
    pending = []
    for wi, w in enumerate(writers):
        ops = []
        for ti, t in enumerate(topics):
            # 2 single PUBs and one MPUB of 3 per (writer, topic)
            b0, b1 = _body(t, wi, 0), _body(t, wi, 1)
            batch = [_body(t, wi, 2 + k) for k in range(3)]
            ops += [("pub", t, b0), ("mpub", t, batch), ("pub", t, b1)]
            expected[t] += [b0, b1] + batch
        pending.append((w, ops))

    # fire every writer's commands before waiting, so publishes interleave across cores
    results = {}
    done = [0]
    total_ops = sum(len(ops) for _, ops in pending)

    def cb(key):
        def f(conn, data):
            results[key] = data
            done[0] += 1
        return f

    for wi, (w, ops) in enumerate(pending):
        for oi, op in enumerate(ops):
            if op[0] == "pub":
                w.pub(op[1], op[2], callback=cb((wi, oi)))
            else:
                w.mpub(op[1], op[2], callback=cb((wi, oi)))
    assert loop.run_until(lambda: done[0] == total_ops, 30), "%d of %d publishes answered" % (done[0], total_ops)
    bad = {k: v for k, v in results.items() if v != b"OK"}
    assert not bad, "publish failures: %r" % list(bad.items())[:5]

    per_topic = len(expected[topics[0]])
    assert per_topic == 12 * 5
    want_total = per_topic * len(topics) * len(channels)
    assert loop.run_until(lambda: sum(len(v) for v in received.values()) >= want_total, 40), (
        "%d of %d deliveries" % (sum(len(v) for v in received.values()), want_total)
    )
    loop.sleep(0.5)  # duplicates, if any, arrive now

    problems = []
    for (t, c), got in received.items():
        bodies = sorted(g[1] for g in got)
        if bodies != sorted(expected[t]):
            missing = len(set(expected[t]) - set(bodies))
            extra = len(got) - len(set(bodies))
            foreign = [x[:12] for x in bodies if not x.startswith(t.encode() + b"|")][:3]
            problems.append((t, c, len(got), "missing=%d dup=%d foreign=%r" % (missing, extra, foreign)))
        if any(g[2] != 1 for g in got):
            problems.append((t, c, "attempts", sorted({g[2] for g in got})))
        for g in got:
            assert_valid_message_id(g[0])
        if len({g[0] for g in got}) != len(got):
            problems.append((t, c, "duplicate ids"))
    assert not problems, problems[:10]

    # both channels of a topic carry the same ids (channel copies keep the topic's id, T7)
    for t in topics:
        a = sorted(g[0] for g in received[(t, "alpha")])
        bb = sorted(g[0] for g in received[(t, "beta")])
        assert a == bb, t
    # ids are unique across one topic's messages and bodies map 1:1 to ids
    for t in topics:
        pairs = {g[0]: hashlib.sha1(g[1]).digest() for g in received[(t, "alpha")]}
        pairs_b = {g[0]: hashlib.sha1(g[1]).digest() for g in received[(t, "beta")]}
        assert pairs == pairs_b, "same id must carry the same body on every channel (%s)" % t
    assert all(not r.errors for r in readers), [r.errors for r in readers if r.errors][:3]


def test_consumer_and_publisher_on_other_cores_share_channel(brokers, loop):
    """Q1 across cores: 6 consumers on one channel of one topic (their connections land on
    both cores) and 6 publishers: union == published, no duplicate, each message once."""
    b = brokers(cores=2)
    topic = "xc-shared"
    got = []

    def handler(m):
        got.append(bytes(m.body))
        return True

    readers = [loop.reader(b.tcp_address, topic, "pool", handler, max_in_flight=4) for _ in range(6)]
    loop.wait_subscribed(readers)
    writers = [loop.writer(b.tcp_address) for _ in range(6)]
    loop.wait_connected(writers)
    bodies = []
    answers = []
    for wi, w in enumerate(writers):
        mine = [b"s%d-%03d-" % (wi, i) + os.urandom(i % 50) for i in range(100)]
        bodies += mine
        w.mpub(topic, mine[:50], callback=lambda c, d: answers.append(d))
        for x in mine[50:]:
            w.pub(topic, x, callback=lambda c, d: answers.append(d))
    assert loop.run_until(lambda: len(answers) == 6 * 51, 20)
    assert all(a == b"OK" for a in answers), [a for a in answers if a != b"OK"][:3]
    assert loop.run_until(lambda: len(got) >= len(bodies), 30), (len(got), len(bodies))
    loop.sleep(0.5)
    assert len(got) == len(bodies), "duplicates: %d deliveries for %d messages" % (len(got), len(bodies))
    assert sorted(got) == sorted(bodies)


def test_handed_over_consumers_fin_req_timeout_dpub(brokers, loop):
    """T25/T26/T27/T32/Q6/Q7/Q8 across cores: 8 topics (owned by both cores), one consumer
    each (msg_timeout 1 s) whose connection may land on the non-owning core, DPUBs from 4
    publisher connections. Per topic: a FIN'd message arrives once; a REQ'd (500 ms)
    message comes back once with attempts 2; an unanswered message times out and comes back
    with attempts 2; a DPUB (500 ms) arrives once, not before its defer."""

    # Q5: nsqd may process a new channel's timeouts/deferreds only after its 5 s refresh
    slack = 5.5
    b = brokers(cores=2)
    topics = ["hand-%d" % i for i in range(8)]
    seen = {t: [] for t in topics}

    def make_handler(t):
        def handler(m):
            seen[t].append((bytes(m.body), m.attempts, time.monotonic()))
            kind = bytes(m.body).split(b"|")[1]
            if kind == b"req" and m.attempts == 1:
                m.requeue(backoff=False, time_ms=500)
                return None
            if kind == b"timeout" and m.attempts == 1:
                m.enable_async()
                return None
            return True
        return handler

    readers = [loop.reader(b.tcp_address, t, "ch", make_handler(t), max_in_flight=8, msg_timeout=1) for t in topics]
    loop.wait_subscribed(readers)
    writers = [loop.writer(b.tcp_address) for _ in range(4)]
    loop.wait_connected(writers)
    t0 = time.monotonic()
    answers = []
    for i, t in enumerate(topics):
        w = writers[i % 4]
        for kind in (b"fin", b"req", b"timeout"):
            w.pub(t, t.encode() + b"|" + kind + b"|" + bytes(range(256)), callback=lambda c, d: answers.append(d))
        writers[(i + 1) % 4].dpub(t, 500, t.encode() + b"|dpub|\x00\xff", callback=lambda c, d: answers.append(d))
    assert loop.run_until(lambda: len(answers) == 4 * len(topics), 10)
    assert all(a == b"OK" for a in answers), answers

    def complete():
        return all(len(v) >= 6 for v in seen.values())

    assert loop.run_until(complete, 3 + slack), {t: [(x[0].split(b"|")[1], x[1]) for x in v] for t, v in seen.items()}
    loop.sleep(1.5)  # nothing more may arrive: everything was FIN'd
    for t in topics:
        got = sorted((x[0].split(b"|")[1], x[1]) for x in seen[t])
        assert got == [(b"dpub", 1), (b"fin", 1), (b"req", 1), (b"req", 2), (b"timeout", 1), (b"timeout", 2)], (t, got)
        for x in seen[t]:
            kind = x[0].split(b"|")[1]
            if kind == b"dpub":
                assert x[0] == t.encode() + b"|dpub|\x00\xff"
                assert x[2] - t0 >= 0.45, "DPUB 500 ms delivered after %.3fs" % (x[2] - t0)
            else:
                assert x[0] == t.encode() + b"|" + kind + b"|" + bytes(range(256))
        req = [x for x in seen[t] if x[0].split(b"|")[1] == b"req"]
        assert req[1][2] - req[0][2] >= 0.45, "REQ 500 ms came back after %.3fs" % (req[1][2] - req[0][2])
        tmo = [x for x in seen[t] if x[0].split(b"|")[1] == b"timeout"]
        # RDY 8: the first delivery may sit up to 250 ms in the output buffer (T34)
        assert tmo[1][2] - tmo[0][2] >= 0.7, "1 s msg_timeout fired after %.3fs" % (tmo[1][2] - tmo[0][2])
    assert all(not r.errors for r in readers), [r.errors for r in readers if r.errors]
