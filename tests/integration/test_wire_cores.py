"""Cross-core routing with `--cores 2` (T9, T24-T26, T30-T32, Q1, Q2): connections land on
either core (SO_REUSEPORT), topics are owned by one core each, and every command must
reach the owning core. Every message must arrive exactly once per channel, byte-exact."""

import collections
import time

from helpers.wire import (
    FRAME_MESSAGE,
    OK,
    consumer,
    mpub_body,
    read_frame_within,
    read_message_within,
    read_messages,
    sub,
)

TOPICS = [f"xc{i:02d}" for i in range(20)]
N_PUBLISHERS = 10
PER_CONN_PER_TOPIC = 3


def drain(w, expected_count, timeout=20.0):
    """Read messages (FIN each) until `expected_count` arrived."""
    got = []
    deadline = time.time() + timeout
    while len(got) < expected_count:
        left = deadline - time.time()
        assert left > 0, f"only {len(got)} of {expected_count}"
        m = read_message_within(w, left)
        assert m is not None, f"only {len(got)} of {expected_count}"
        w.cmd(b"FIN " + m["id"])
        got.append(m)
    return got


def drain_group(ws, expected_count, timeout=20.0, check_extra=True):
    """Read (and FIN) from several consumers of one channel until `expected_count` bodies
    arrived in total, then (check_extra) check that none of them gets anything more."""
    got = []
    deadline = time.time() + timeout
    while len(got) < expected_count and time.time() < deadline:
        for w in ws:
            while True:
                m = read_message_within(w, 0.02)
                if m is None:
                    break
                w.cmd(b"FIN " + m["id"])
                got.append(m["body"])
    if check_extra:
        assert_quiet(ws)
    return got


def assert_quiet(ws, wait=0.3):
    """After `wait` seconds none of the connections has an extra frame pending."""
    time.sleep(wait)
    for w in ws:
        fr = read_frame_within(w, 0.01)
        assert fr is None, f"unexpected extra frame {fr!r}"


def test_cross_core_fanout_exactly_once(brokers, connect):
    """Q1/T30-T32 across cores: 10 publisher connections x 20 topics (PUB, MPUB, DPUB 0) and
    two channels per topic, one with two consumers: each channel receives every body exactly
    once, and ids are unique per topic."""
    b = brokers(cores=2)
    # consumers first (on their own connections) so that both channels exist (Q2)
    single = {t: consumer(connect, b, t, "one", rdy=500) for t in TOPICS}
    pair = {t: [consumer(connect, b, t, "two", rdy=500) for _ in range(2)] for t in TOPICS}
    pubs = [connect(b) for _ in range(N_PUBLISHERS)]
    expected = collections.defaultdict(list)
    for ci, p in enumerate(pubs):
        pending = 0
        for t in TOPICS:
            bodies = [f"{t}|{ci}|{k}|".encode() + bytes([ci, k]) * 5 for k in range(PER_CONN_PER_TOPIC)]
            expected[t].extend(bodies)
            p.cmd(f"PUB {t}", bodies[0])
            p.cmd(f"MPUB {t}", mpub_body([bodies[1]]))
            p.cmd(f"DPUB {t} 0", bodies[2])
            pending += 3
        for _ in range(pending):
            assert p.read_frame() == OK
    n = N_PUBLISHERS * PER_CONN_PER_TOPIC
    for t in TOPICS:
        got = drain(single[t], n)
        assert sorted(m["body"] for m in got) == sorted(expected[t]), t
        assert len({m["id"] for m in got}) == n
        assert all(m["attempts"] == 1 for m in got)
        shared = drain_group(pair[t], n, check_extra=False)
        assert sorted(shared) == sorted(expected[t]), t
    assert_quiet(list(single.values()) + [w for ws in pair.values() for w in ws])


def test_cross_core_publish_from_consumer_connections(brokers, connect):
    """T9 across cores: consumer connections publish to every topic (their own and others');
    Q2: messages to topics without a channel are held until the first SUB."""
    b = brokers(cores=2)
    conns = [connect(b) for _ in range(8)]
    # publish first: no channel exists yet, topics must hold the messages (Q2)
    for ci, w in enumerate(conns):
        for t in TOPICS:
            w.cmd(f"PUB {t}", f"{t}:{ci}".encode())
    for w in conns:
        for _ in TOPICS:
            assert w.read_frame() == OK
    # now each connection subscribes to a different topic and still publishes elsewhere
    subs = {}
    for ci, w in enumerate(conns):
        t = TOPICS[ci]
        sub(w, t, "c")
        w.cmd("RDY 100")
        subs[t] = w
    for t, w in subs.items():
        got = drain(w, len(conns))
        assert sorted(m["body"] for m in got) == sorted(f"{t}:{ci}".encode() for ci in range(len(conns)))
    for ci, w in enumerate(conns):
        t_other = TOPICS[(ci + 1) % len(conns)]
        w.cmd(f"PUB {t_other}", f"late{ci}".encode())
    for t, w in subs.items():
        # each subscriber gets exactly one late message (from the previous connection); OK
        # frames for its own PUB may interleave
        frames = []
        while len([f for f in frames if f[0] == FRAME_MESSAGE]) < 1 or len([f for f in frames if f == OK]) < 1:
            fr = w.read_frame()
            frames.append(fr)
        msgs = [f for f in frames if f[0] == FRAME_MESSAGE]
        assert len(msgs) == 1
        ci = TOPICS.index(t)
        assert msgs[0][1][26:] == f"late{(ci - 1) % len(conns)}".encode()
    assert_quiet(list(subs.values()))


def test_cross_core_fin_req_touch(brokers, connect):
    """T25-T27 across cores: FIN, REQ and TOUCH from connections on any core reach the
    topic's core: REQ 0 redelivers with attempts 2, a FIN of an unknown id is
    E_FIN_FAILED, and no message is lost or duplicated."""
    b = brokers(cores=2)
    cons = {t: consumer(connect, b, t, "c", rdy=10) for t in TOPICS[:10]}
    p = connect(b)
    for t in cons:
        p.cmd(f"MPUB {t}", mpub_body([f"{t}-a".encode(), f"{t}-b".encode()]))
    for _ in cons:
        assert p.read_frame() == OK
    for t, w in cons.items():
        first = read_messages(w, 2, fin=False)
        w.cmd(b"TOUCH " + first[0]["id"])
        w.cmd(b"REQ " + first[0]["id"] + b" 0")
        w.cmd(b"FIN " + first[1]["id"])
        again = read_message_within(w, 5.0)
        assert again is not None, t
        assert (again["id"], again["attempts"], again["body"]) == (first[0]["id"], 2, first[0]["body"])
        w.cmd(b"FIN " + again["id"])
        w.cmd(b"FIN " + again["id"])
        assert w.read_frame() == (1, b"E_FIN_FAILED FIN " + again["id"] + b" failed ID not in flight")
        w.cmd(f"PUB {t}", b"x")
        fr = w.read_frame()
        if fr[0] == FRAME_MESSAGE:
            fr = w.read_frame()
        assert fr == OK


def test_cross_core_many_connections_one_topic(brokers, connect):
    """Q1 across cores: 12 publishers on both cores feeding one topic, 4 consumers of one
    channel on both cores: the union is exactly every message once."""
    b = brokers(cores=2)
    cons = [consumer(connect, b, "hot", "c", rdy=300) for _ in range(4)]
    pubs = [connect(b) for _ in range(12)]
    expected = []
    for ci, p in enumerate(pubs):
        bodies = [f"hot{ci}-{k}".encode() for k in range(50)]
        expected.extend(bodies)
        p.cmd("MPUB hot", mpub_body(bodies[:25]))
        for body in bodies[25:]:
            p.cmd("PUB hot", body)
    for p in pubs:
        for _ in range(26):
            assert p.read_frame() == OK
    got = drain_group(cons, len(expected))
    assert sorted(got) == sorted(expected)
