"""Hostile and odd input found in review: the broker answers as nsqd would,
keeps serving everyone else, and never runs out of memory or stalls a core."""

import json
import socket
import struct
import time
import zlib

import snappy

from helpers.http_api import find_topic, stats
from helpers.wait import wait_for
from helpers.wire import Wire, cmd_bytes, mpub_body


def negotiate(w, **features):
    body = json.dumps({"feature_negotiation": True, "heartbeat_interval": 1000, **features}).encode()
    w.cmd("IDENTIFY", body)
    ftype, data = w.read_frame()
    assert ftype == 0, data
    return json.loads(data)


def assert_serves(broker, topic="alive"):
    """Another client still gets a prompt answer."""
    w = Wire(broker.tcp_address, timeout=2.0)
    start = time.time()
    w.cmd(f"PUB {topic}", b"still here")
    assert w.read_frame() == (0, b"OK")
    assert time.time() - start < 1.5
    w.close()


def test_snappy_chunk_claiming_4gib_is_refused(broker):
    """T19: a snappy chunk whose header claims 4 GiB closes that connection only."""
    w = Wire(broker.tcp_address)
    assert negotiate(w, snappy=True)["snappy"] is True
    w.send(b"\xff\x06\x00\x00sNaPpY")
    w.send(b"\x00\x09\x00\x00" + b"\x00\x00\x00\x00" + b"\xff\xff\xff\xff\x0f")
    assert w.is_closed(timeout=3)
    assert_serves(broker)


def test_snappy_chunk_with_a_bad_checksum_closes_the_connection(broker):
    """T19: Go's snappy reader checks each chunk's masked crc32c and nsqd closes a
    connection whose chunk fails it; the PUB inside is never run. The same stream with
    its checksum intact publishes."""
    def stream(topic):
        return bytearray(snappy.StreamCompressor().compress(cmd_bytes(f"PUB {topic}", b"body")))

    w = Wire(broker.tcp_address)
    assert negotiate(w, snappy=True)["snappy"] is True
    bad = stream("crc_bad")
    bad[14] ^= 0x01  # the first data chunk's crc: after the identifier and its header
    w.send(bytes(bad))
    assert w.is_closed(timeout=3)
    ok = Wire(broker.tcp_address)
    assert negotiate(ok, snappy=True)["snappy"] is True
    ok.send(bytes(stream("crc_good")))
    wait_for(lambda: find_topic(stats(broker), "crc_good") is not None, what="crc_good published")
    assert find_topic(stats(broker), "crc_good")["message_count"] == 1
    assert find_topic(stats(broker), "crc_bad") is None


def test_deflate_bomb_does_not_stall_the_core(broker):
    """T19: 8 MiB of NOPs in ~10 KiB of deflate are handled without blocking others."""
    w = Wire(broker.tcp_address)
    assert negotiate(w, deflate=True)["deflate"] is True
    inflate = zlib.decompressobj(-15)
    enc = zlib.compressobj(9, zlib.DEFLATED, -15)
    # The server's compressed OK (it may have arrived with the IDENTIFY answer).
    got = inflate.decompress(w.buf)
    w.buf = b""
    deadline = time.time() + 3
    while b"OK" not in got and time.time() < deadline:
        got += inflate.decompress(w.sock.recv(4096))
    assert got.endswith(struct.pack(">ii", 6, 0) + b"OK")
    bomb = enc.compress(b"NOP\n" * (2 << 20)) + enc.compress(b"PUB bombed\n" + struct.pack(">i", 2) + b"hi")
    bomb += enc.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 64 * 1024
    w.send(bomb)
    assert_serves(broker)
    # ... and the bomb's own PUB is answered once the NOPs are through.
    got = b""
    deadline = time.time() + 20
    while struct.pack(">ii", 6, 0) + b"OK" not in got and time.time() < deadline:
        got += inflate.decompress(w.sock.recv(4096))
    assert struct.pack(">ii", 6, 0) + b"OK" in got


def test_dpub_and_req_delays_wrap_like_nsqd(broker):
    """T26, T32: nsqd multiplies ms into a wrapping int64 of ns; 2^58 ms wraps to 0."""
    w = Wire(broker.tcp_address)
    w.cmd("DPUB wrap 288230376151711744", b"now")
    assert w.read_frame() == (0, b"OK")
    c = Wire(broker.tcp_address)
    c.cmd("SUB wrap ch")
    assert c.read_frame() == (0, b"OK")
    c.cmd("RDY 1")
    m = c.read_message()
    assert m["body"] == b"now"
    # REQ with the same wrapping value requeues at once (clamped to 0).
    c.cmd(b"REQ " + m["id"] + b" 288230376151711744")
    again = c.read_message()
    assert again["id"] == m["id"] and again["attempts"] == 2


def test_ephemeral_channel_delivers_with_zero_memory_queue(brokers):
    """Q3, Q15: --mem-queue-size=0 still hands ephemeral messages to a ready consumer."""
    b = brokers(args=["--mem-queue-size=0"])
    c = Wire(b.tcp_address)
    c.cmd("SUB eph live#ephemeral")
    assert c.read_frame() == (0, b"OK")
    c.cmd("RDY 10")
    c.cmd("NOP")
    time.sleep(0.1)
    p = Wire(b.tcp_address)
    p.cmd("MPUB eph", mpub_body([b"a", b"b", b"c"]))
    assert p.read_frame() == (0, b"OK")
    got = [c.read_message()["body"] for _ in range(3)]
    assert sorted(got) == [b"a", b"b", b"c"]


def test_identify_null_fields_are_ignored(broker):
    """T13: Go's JSON decoding leaves fields alone for null values."""
    w = Wire(broker.tcp_address)
    w.cmd("IDENTIFY", b'{"heartbeat_interval": null, "client_id": null, "feature_negotiation": null}')
    assert w.read_frame() == (0, b"OK")
    w.cmd("NOP")
    w.cmd("PUB t", b"x")
    assert w.read_frame() == (0, b"OK")


def test_repeated_touch_keeps_message_and_memory_flat(brokers):
    """T27: thousands of TOUCHes on a capped message are harmless."""
    b = brokers(args=["--max-msg-timeout=2s", "--msg-timeout=2s"])
    p = Wire(b.tcp_address)
    p.cmd("PUB touchy", b"x")
    assert p.read_frame() == (0, b"OK")
    c = Wire(b.tcp_address)
    c.cmd("SUB touchy ch")
    assert c.read_frame() == (0, b"OK")
    c.cmd("RDY 1")
    m = c.read_message()
    c.send((b"TOUCH " + m["id"] + b"\n") * 20000)
    c.cmd(b"FIN " + m["id"])
    c.cmd("NOP")
    # Every TOUCH and the FIN succeeded (no error frame), and nothing is
    # redelivered after the 2 s timeout.
    assert c.is_closed(timeout=3) is False
    assert c.buf == b""


def test_client_that_never_reads_its_answers_is_not_read_forever(brokers):
    """A publisher pipelining PUBs without reading OKs is throttled, not buffered without end."""
    b = brokers()
    s = socket.create_connection(("127.0.0.1", b.tcp_port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"  V2" + b'IDENTIFY\n' + struct.pack(">i", 25) + b'{"heartbeat_interval":-1}')
    s.settimeout(0.2)
    frame = b"PUB flood\n" + struct.pack(">i", 1) + b"x"
    sent = 0
    deadline = time.time() + 10
    try:
        while time.time() < deadline:
            s.send(frame * 1000)
            sent += 1000
    except (socket.timeout, BlockingIOError):
        pass
    # The broker stopped reading at some point (our send blocked) ...
    assert time.time() < deadline, "the broker kept reading without end"
    # ... and keeps serving others meanwhile.
    assert_serves(b)
    s.close()
