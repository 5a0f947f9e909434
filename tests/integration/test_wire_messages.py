"""Message frame layout and ids (T5, T6, T7) on raw bytes."""

import os
import re
import struct
import time

from helpers.wire import FRAME_MESSAGE, OK, consumer, mpub, mpub_body, pub, read_messages

HEX16 = re.compile(rb"^[0-9a-f]{16}$")
TWEPOCH = 1288834974288  # nsqd's snowflake epoch in ns >> 20


def test_frame_layout_exact(broker, connect):
    """T5/T6: [size][type=2][8B ns timestamp][2B attempts][16B lowercase hex id][body];
    size = 4 + 26 + len(body); timestamp close to the publish time; attempts = 1."""
    c = consumer(connect, broker, "layout", "c", rdy=1)
    p = connect(broker)
    body = bytes(range(256))
    t0 = time.time_ns()
    pub(p, "layout", body)
    t1 = time.time_ns()
    raw = c.sock.recv(4)
    while len(raw) < 4:
        raw += c.sock.recv(4 - len(raw))
    size = struct.unpack(">i", raw)[0]
    assert size == 4 + 26 + 256
    data = c._read_exact(size)
    ftype, ts, attempts = struct.unpack(">iqH", data[:14])
    assert ftype == FRAME_MESSAGE
    assert attempts == 1
    assert t0 - 2_000_000_000 <= ts <= t1 + 2_000_000_000, (t0, ts, t1)
    assert HEX16.match(data[14:30]), data[14:30]
    assert data[30:] == body


def test_binary_bodies_byte_exact(broker, connect):
    """T6: bodies with every byte value, NULs, newlines and the frame-like prefixes come back
    byte-exact through PUB, MPUB and DPUB."""
    c = consumer(connect, broker, "bin", "c", rdy=100)
    p = connect(broker)
    bodies = [
        bytes(range(256)),
        bytes(range(255, -1, -1)) * 3,
        b"\x00",
        b"\n",
        b"\r\n",
        b"PUB x\n",
        struct.pack(">ii", 6, 0) + b"OK",
        os.urandom(4096),
    ]
    for b in bodies[:3]:
        pub(p, "bin", b)
    mpub(p, "bin", bodies[3:6])
    for b in bodies[6:]:
        p.cmd("DPUB bin 0", b)
        assert p.read_frame() == OK
    got = [m["body"] for m in read_messages(c, len(bodies))]
    assert sorted(got) == sorted(bodies)


def test_body_of_exactly_max_msg_size(brokers, connect):
    """T30/T31/T6: a body of exactly --max-msg-size is accepted by PUB and MPUB and delivered
    byte-exact (the limit is inclusive)."""
    b = brokers(args=["--max-msg-size=65536"])
    c = consumer(connect, b, "max", "c", rdy=10)
    p = connect(b)
    big1 = os.urandom(65536)
    big2 = os.urandom(65536)
    pub(p, "max", big1)
    mpub(p, "max", [big2, b"small"])
    got = sorted(m["body"] for m in read_messages(c, 3))
    assert got == sorted([big1, big2, b"small"])


def test_default_max_msg_size_body(broker, connect):
    """T30: with defaults a 1 MiB (1048576 byte) body is accepted and delivered intact."""
    c = consumer(connect, broker, "mib", "c", rdy=1)
    p = connect(broker)
    body = os.urandom(1048576)
    pub(p, "mib", body)
    assert read_messages(c, 1)[0]["body"] == body


def test_message_ids_unique_and_carry_node_id(brokers, connect):
    """T7: 4000 messages on one topic get 4000 distinct 16-char lowercase hex ids; the
    snowflake layout carries --node-id in bits 12..21 and a timestamp close to now."""
    b = brokers(args=["--node-id=777"])
    c = consumer(connect, b, "ids", "c", rdy=2500)
    p = connect(b)
    n = 4000
    for start in range(0, n, 1000):
        mpub(p, "ids", [f"m{i}".encode() for i in range(start, start + 1000)])
    for i in range(0, 20):
        pub(p, "ids", f"single{i}".encode())
    msgs = read_messages(c, n + 20, timeout=20)
    ids = [m["id"] for m in msgs]
    assert all(HEX16.match(i) for i in ids)
    assert len(set(ids)) == n + 20
    assert len({m["body"] for m in msgs}) == n + 20
    now_ms = time.time_ns() >> 20
    for i in ids[:50]:
        v = int(i, 16)
        assert (v >> 12) & 0x3FF == 777, i
        ts = (v >> 22) + TWEPOCH
        assert abs(ts - now_ms) < 60_000, (i, ts, now_ms)


def test_channel_copies_keep_topic_id_and_timestamp(broker, connect):
    """T7/Q1: every channel receives the same id and timestamp for one published message."""
    c1 = consumer(connect, broker, "copy", "c1", rdy=1)
    c2 = consumer(connect, broker, "copy", "c2", rdy=1)
    p = connect(broker)
    pub(p, "copy", b"shared")
    m1 = read_messages(c1, 1)[0]
    m2 = read_messages(c2, 1)[0]
    assert m1["id"] == m2["id"]
    assert m1["timestamp"] == m2["timestamp"]
    assert m1["body"] == m2["body"] == b"shared"


def test_dpub_timestamp_is_publish_time(broker, connect):
    """T6: the timestamp is set at publish, so a DPUB deferred 1 s carries its publish time."""
    c = consumer(connect, broker, "dts", "c", rdy=1)
    p = connect(broker)
    t0 = time.time_ns()
    p.cmd("DPUB dts 1000", b"later")
    assert p.read_frame() == OK
    # Q5: nsqd scans deferred queues approximately (channel list refreshed every 5 s)
    m = read_messages(c, 1, timeout=8)[0]
    t_recv = time.time_ns()
    assert t_recv - t0 >= 900_000_000
    assert abs(m["timestamp"] - t0) < 500_000_000, (m["timestamp"], t0)


def test_mpub_many_small_messages(broker, connect):
    """T31: one MPUB of 2000 one-byte messages answers OK once and delivers all of them."""
    c = consumer(connect, broker, "many", "c", rdy=2500)
    p = connect(broker)
    bodies = [bytes([i % 251 + 1]) for i in range(2000)]
    p.cmd("MPUB many", mpub_body(bodies))
    assert p.read_frame() == OK
    got = [m["body"] for m in read_messages(c, 2000, timeout=15)]
    assert sorted(got) == sorted(bodies)
