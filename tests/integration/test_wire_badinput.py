"""Hostile and sloppy clients on raw bytes (T2-T4, T11, T30, T31, T34, Q1): the broker answers
as nsqd 1.3.0 does, never crashes (brokers asserts it is alive at teardown) and
keeps serving new connections."""

import random
import socket
import struct
import threading
import time

import pytest

from helpers.wire import (
    FRAME_ERROR,
    OK,
    assert_broker_serves,
    cmd_bytes,
    consumer,
    expect_error,
    expect_no_frame,
    i32,
    mpub,
    pub,
    read_message_within,
    read_messages,
)


def test_garbage_after_magic(broker, connect):
    """T3/T12: binary garbage terminated by \\n is an unknown command: the error echoes the
    first space-separated token byte-exact, then the connection is closed."""
    rng = random.Random(1234)
    garbage = bytes(rng.choice([b for b in range(256) if b not in (0x0A, 0x0D, 0x20)]) for _ in range(300))
    w = connect(broker)
    w.send(garbage + b" more stuff\n")
    expect_error(w, b"E_INVALID invalid command " + garbage, fatal=True)
    assert_broker_serves(broker)


def test_overlong_line_without_newline_closes(broker, connect):
    """T3: a 1 MiB command line with no newline does not make the broker buffer forever:
    nsqd drops the connection once its 16 KiB line buffer is full."""
    w = connect(broker)
    try:
        w.send(b"A" * (1 << 20))
    except OSError:
        pass  # the broker may already have closed the connection
    assert w.is_closed(3.0)
    assert_broker_serves(broker)


def test_pub_length_int32_max_then_stream(broker, connect):
    """T30: a PUB body length of 2^31-1 is refused at once with
    `E_BAD_MESSAGE PUB message too big 2147483647 > 1048576` and the connection is closed,
    even while the client keeps streaming bytes."""
    w = connect(broker)
    w.send(b"PUB big\n" + i32(2**31 - 1) + b"x" * 1024)
    expect_error(w, "E_BAD_MESSAGE PUB message too big 2147483647 > 1048576", fatal=True)
    assert_broker_serves(broker)


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"PUB trunc\n" + i32(100) + b"x" * 50, b"E_BAD_MESSAGE PUB failed to read message body"),
        (b"PUB trunc\n" + b"\x00\x00", b"E_BAD_MESSAGE PUB failed to read message body size"),
        (b"DPUB trunc 0\n" + i32(10) + b"abc", b"E_BAD_MESSAGE DPUB failed to read message body"),
        (b"MPUB trunc\n" + i32(100) + i32(2) + i32(3) + b"abc" + i32(10) + b"ab",
         b"E_BAD_MESSAGE MPUB failed to read message body"),
        (b"MPUB trunc\n" + i32(100) + i32(2) + i32(3) + b"abc" + b"\x00",
         b"E_BAD_MESSAGE MPUB failed to read message(1) body size"),
        (b"MPUB trunc\n" + i32(100) + b"\x00", b"E_BAD_BODY MPUB failed to read message count"),
        (b"MPUB trunc\n", b"E_BAD_BODY MPUB failed to read body size"),
        (b"IDENTIFY\n" + i32(50) + b'{"client_id"', b"E_BAD_BODY IDENTIFY failed to read body"),
        (b"IDENTIFY\n" + b"\x00", b"E_BAD_BODY IDENTIFY failed to read body size"),
    ],
    ids=["pub-body", "pub-size", "dpub-body", "mpub-body", "mpub-msg-size", "mpub-count", "mpub-body-size",
         "identify-body", "identify-size"],
)
def test_truncated_body_then_half_close(broker, connect, raw, expected):
    """T4/T30-T32/T13: a body cut short by the client's EOF (write side shut down) is answered
    with nsqd's `failed to read ...` error, the connection is closed, and nothing of the
    partial command is published."""
    w = connect(broker)
    w.send(raw)
    w.sock.shutdown(socket.SHUT_WR)
    fr = w.read_frame()
    assert fr == (FRAME_ERROR, expected), fr
    assert w.is_closed(3.0)
    c = consumer(connect, broker, "trunc", "c", rdy=10)
    p = connect(broker)
    pub(p, "trunc", b"marker")
    assert [m["body"] for m in read_messages(c, 1)] == [b"marker"]
    expect_no_frame(c, 0.3)


@pytest.mark.parametrize("raw", [b"PUB trunc\n" + i32(100) + b"x" * 50, b"SUB trunc", b"PUB trunc\n" + i32(5)])
def test_truncated_then_abrupt_close(broker, connect, raw):
    """T4: a client vanishing mid-command (full close) leaves the broker serving and
    publishes nothing."""
    w = connect(broker)
    w.send(raw)
    w.close()
    c = consumer(connect, broker, "trunc", "c", rdy=10)
    p = connect(broker)
    pub(p, "trunc", b"marker")
    assert [m["body"] for m in read_messages(c, 1)] == [b"marker"]
    expect_no_frame(c, 0.3)


def test_thousands_of_tiny_frames_in_one_send(broker, connect):
    """T29/T30: 5000 NOPs and 5000 PUBs in a single sendall: exactly 5000 OK frames come
    back (NOP answers nothing) and all 5000 messages are delivered once."""
    n = 5000
    c = consumer(connect, broker, "flood", "c", rdy=2500)
    p = connect(broker)
    payload = b"".join(b"NOP\n" + cmd_bytes("PUB flood", f"f{i}".encode()) for i in range(n))
    err = []

    def sender():
        try:
            p.send(payload)
        except OSError as e:  # pragma: no cover - reported below
            err.append(e)

    t = threading.Thread(target=sender)
    t.start()
    oks = 0
    while oks < n:
        fr = p.read_frame()
        assert fr == OK, fr
        oks += 1
    t.join(10)
    assert not err
    expect_no_frame(p, 0.3)
    got = read_messages(c, n, timeout=30)
    assert len({m["body"] for m in got}) == n


def test_stalled_reader_does_not_block_other_channel(broker, connect):
    """T34/Q1: a consumer that subscribes with RDY 2500 on a big backlog and never reads
    (its socket buffers fill) must not hold up another channel of the same topic, which
    still receives every message."""
    body = b"z" * 1000
    n = 20000
    slow = consumer(connect, broker, "stall", "slow", rdy=2500)
    fast = consumer(connect, broker, "stall", "fast", rdy=2500)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    p = connect(broker)
    for start in range(0, n, 5000):
        mpub(p, "stall", [b"%06d" % i + body for i in range(start, start + 5000)])
    seen = set()
    deadline = time.time() + 30
    while len(seen) < n:
        assert time.time() < deadline, f"fast channel got {len(seen)} of {n}"
        m = read_message_within(fast, max(0.1, deadline - time.time()))
        assert m is not None, f"fast channel stalled at {len(seen)} of {n}"
        fast.cmd(b"FIN " + m["id"])
        seen.add(m["body"][:6])
    assert len(seen) == n
    # the broker is still responsive for everyone else
    pub(p, "stall", b"after")
    assert_broker_serves(broker)
    slow.close()


def test_publisher_closing_without_reading_ok(broker, connect):
    """T30: a PUB whose client closes right after sending (never reading OK) is still
    published."""
    c = consumer(connect, broker, "fire", "c", rdy=10)
    for i in range(5):
        w = connect(broker)
        w.send(cmd_bytes("PUB fire", f"fire{i}".encode()))
        w.sock.shutdown(socket.SHUT_WR)
        w.is_closed(2.0)
        w.close()
    got = sorted(m["body"] for m in read_messages(c, 5))
    assert got == [f"fire{i}".encode() for i in range(5)]


def test_many_short_lived_connections(broker, connect):
    """T1/T2: 300 connections that connect and go away at every stage (no magic, magic
    only, reset while subscribed with messages in flight) leave the broker serving."""
    p = connect(broker)
    mpub(p, "churn", [b"c%d" % i for i in range(200)])
    for i in range(300):
        s = socket.create_connection(("127.0.0.1", broker.tcp_port), timeout=5)
        stage = i % 3
        if stage >= 1:
            s.sendall(b"  V2")
        if stage == 2:
            s.sendall(b"SUB churn c\nRDY 5\n")
            s.recv(64)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        s.close()
    assert_broker_serves(broker)


def test_random_bytes_fuzz(broker, connect):
    """T3/T11: 60 connections sending seeded random bytes (after a valid magic) never crash
    the broker; every answer is a well-formed frame."""
    rng = random.Random(42)
    words = [b"PUB ", b"MPUB ", b"SUB ", b"RDY ", b"FIN ", b"REQ ", b"TOUCH ", b"IDENTIFY\n", b"NOP\n",
             b"CLS\n", b"DPUB ", b"AUTH\n", b"\n", b" ", b"\xff\xff\xff\xff", b"\x00\x00\x00\x10"]
    conns = []
    for _ in range(60):
        w = connect(broker)
        data = b"".join(rng.choice(words) if rng.random() < 0.5 else bytes([rng.randrange(256)])
                        for _ in range(rng.randrange(10, 400)))
        try:
            w.send(data)
        except OSError:
            pass
        conns.append(w)
    for w in conns:
        w.sock.settimeout(0.3)
        try:
            while True:
                chunk = w.sock.recv(65536)
                if not chunk:
                    break
                w.buf += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        # whatever came back parses as frames of type 0/1/2
        buf = w.buf
        while len(buf) >= 8:
            size, ftype = struct.unpack(">ii", buf[:8])
            assert 4 <= size and ftype in (0, 1, 2), (size, ftype)
            if len(buf) < 4 + size:
                break
            buf = buf[4 + size:]
        w.close()
    assert_broker_serves(broker)
