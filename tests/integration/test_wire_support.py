"""Shared helpers for the raw-wire conformance tests (test_wire_*.py).

This module holds no tests; it only gives the wire test files one place for the
small protocol helpers they all use (frames, IDENTIFY/SUB/PUB, timed reads).
Reference rows (T*, Q*) are those of /work/shared/nsqd-reference.md.
"""

import json
import socket
import struct
import time

import pytest

from conftest import FRAME_ERROR, FRAME_MESSAGE, FRAME_RESPONSE, Wire  # noqa: F401

OK = (FRAME_RESPONSE, b"OK")


@pytest.fixture
def connect():
    """connect(broker, magic=b"  V2") -> Wire; every connection is closed at teardown."""
    conns = []

    def make(broker, magic=b"  V2", timeout=5.0):
        c = Wire(broker.tcp_address, magic=magic, timeout=timeout)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()


def frame_bytes(ftype, data):
    """The exact bytes of one V2 frame (T5)."""
    return struct.pack(">ii", len(data) + 4, ftype) + data


def mpub_body(messages):
    """MPUB body: [int32 count]([int32 size][data])* (T31), built in linear time."""
    parts = [struct.pack(">i", len(messages))]
    for m in messages:
        parts.append(struct.pack(">i", len(m)))
        parts.append(m)
    return b"".join(parts)


def body_cmd(line, body):
    """`line\\n` + [int32 BE len] + body (T4)."""
    return line.encode() + b"\n" + struct.pack(">i", len(body)) + body


def identify(w, **fields):
    """Send IDENTIFY with a JSON body; return the (type, data) answer."""
    w.cmd("IDENTIFY", json.dumps(fields).encode())
    return w.read_frame()


def identify_ok(w, **fields):
    ft, data = identify(w, **fields)
    assert ft == FRAME_RESPONSE, (ft, data)
    if fields.get("feature_negotiation"):
        return json.loads(data)
    assert data == b"OK"
    return None


def sub(w, topic, channel):
    w.cmd(f"SUB {topic} {channel}")
    assert w.read_frame() == OK


def pub(w, topic, body):
    w.cmd(f"PUB {topic}", body)
    assert w.read_frame() == OK


def mpub(w, topic, bodies):
    w.cmd(f"MPUB {topic}", mpub_body(bodies))
    assert w.read_frame() == OK


def read_frame_within(w, timeout):
    """Next non-heartbeat frame, or None if nothing complete arrives within `timeout` s."""
    w.sock.settimeout(timeout)
    try:
        return w.read_frame()
    except socket.timeout:
        return None
    finally:
        w.sock.settimeout(5.0)


def read_raw_frame_within(w, timeout):
    """Next frame INCLUDING heartbeats, or None on timeout."""
    w.sock.settimeout(timeout)
    try:
        return w.read_frame(skip_heartbeats=False)
    except socket.timeout:
        return None
    finally:
        w.sock.settimeout(5.0)


def decode_message(data):
    ts, attempts = struct.unpack(">qH", data[:10])
    return {"timestamp": ts, "attempts": attempts, "id": data[10:26], "body": data[26:]}


def read_message_within(w, timeout):
    """Next message frame (decoded) or None on timeout; any other frame fails the test."""
    fr = read_frame_within(w, timeout)
    if fr is None:
        return None
    assert fr[0] == FRAME_MESSAGE, fr
    return decode_message(fr[1])


def expect_no_frame(w, secs):
    fr = read_frame_within(w, secs)
    assert fr is None, f"expected nothing for {secs}s, got {fr!r}"


def read_messages(w, n, fin=True, timeout=10.0):
    """Read exactly n messages (FIN each when fin=True) within `timeout` seconds."""
    out = []
    deadline = time.time() + timeout
    while len(out) < n:
        left = deadline - time.time()
        assert left > 0, f"only {len(out)} of {n} messages arrived in {timeout}s"
        m = read_message_within(w, left)
        assert m is not None, f"only {len(out)} of {n} messages arrived in {timeout}s"
        out.append(m)
        if fin:
            w.cmd(b"FIN " + m["id"])
    return out


def expect_error(w, text, fatal=True):
    """The next frame is exactly the error `text`; then the connection is closed
    (fatal, T11) or still serves a PUB (non-fatal E_FIN/REQ/TOUCH_FAILED)."""
    expected = text.encode() if isinstance(text, str) else text
    fr = w.read_frame()
    assert fr == (FRAME_ERROR, expected), f"expected error {expected!r}, got {fr!r}"
    if fatal:
        assert w.is_closed(3.0), "connection must be closed after a fatal error"
    else:
        assert_usable(w)


def assert_usable(w):
    """A NOP (no answer) then a PUB (answer OK): the connection is still usable."""
    w.cmd("NOP")
    w.cmd("PUB usable_check", b"still-here")
    fr = w.read_frame()
    assert fr == OK, f"connection should still be usable, got {fr!r}"


def assert_broker_serves(broker):
    """A brand new connection can publish."""
    w = Wire(broker.tcp_address)
    try:
        w.cmd("PUB serves_check", b"x")
        assert w.read_frame() == OK
    finally:
        w.close()


def consumer(connect, broker, topic, channel, rdy=None, **ident):
    """Connect, IDENTIFY (when fields given), SUB, and optionally send RDY."""
    w = connect(broker)
    if ident:
        identify_ok(w, **ident)
    sub(w, topic, channel)
    if rdy is not None:
        w.cmd(f"RDY {rdy}")
    return w
