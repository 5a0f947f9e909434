"""IDENTIFY feature negotiation (T13-T19) on raw bytes."""

import json
import re
import struct
import zlib

import pytest

from helpers.wire import FRAME_MESSAGE, FRAME_RESPONSE, OK, assert_usable, cmd_bytes, identify, identify_ok

NSQD_KEYS = {
    "max_rdy_count",
    "version",
    "max_msg_timeout",
    "msg_timeout",
    "tls_v1",
    "deflate",
    "deflate_level",
    "max_deflate_level",
    "snappy",
    "sample_rate",
    "auth_required",
    "output_buffer_size",
    "output_buffer_timeout",
}


def test_feature_negotiation_defaults(broker, connect):
    """T17 / X6: with feature_negotiation the answer is a JSON response frame with exactly
    nsqd 1.3.0's keys and the default values; the connection then works normally."""
    w = connect(broker)
    ft, data = identify(w, feature_negotiation=True, client_id="c", hostname="h", user_agent="raw/1.0")
    assert ft == FRAME_RESPONSE
    resp = json.loads(data)
    assert set(resp) == NSQD_KEYS
    assert re.match(r"^\d+\.\d+\.\d+", resp["version"]), resp["version"]
    expected = {
        "max_rdy_count": 2500,
        "max_msg_timeout": 900000,
        "msg_timeout": 60000,
        "tls_v1": False,
        "deflate": False,
        "deflate_level": 6,
        "max_deflate_level": 6,
        "snappy": False,
        "sample_rate": 0,
        "auth_required": False,
        "output_buffer_size": 16384,
        "output_buffer_timeout": 250,
    }
    assert {k: resp[k] for k in expected} == expected
    for k in expected:
        assert type(resp[k]) is type(expected[k]), (k, resp[k])
    assert_usable(w)


def test_feature_negotiation_reflects_flags(brokers, connect):
    """T17: max_rdy_count, max_msg_timeout, msg_timeout and output_buffer_timeout come from
    --max-rdy-count, --max-msg-timeout, --msg-timeout, --output-buffer-timeout (in ms)."""
    b = brokers(
        args=["--max-rdy-count=100", "--max-msg-timeout=30s", "--msg-timeout=20s", "--output-buffer-timeout=100ms"]
    )
    w = connect(b)
    resp = identify_ok(w, feature_negotiation=True)
    assert resp["max_rdy_count"] == 100
    assert resp["max_msg_timeout"] == 30000
    assert resp["msg_timeout"] == 20000
    assert resp["output_buffer_timeout"] == 100
    assert resp["output_buffer_size"] == 16384


def test_feature_negotiation_echoes_client_values(broker, connect):
    """T15-T17: client-chosen msg_timeout, sample_rate, output_buffer_size/_timeout are echoed."""
    w = connect(broker)
    resp = identify_ok(
        w,
        feature_negotiation=True,
        msg_timeout=5000,
        sample_rate=42,
        output_buffer_size=1024,
        output_buffer_timeout=100,
        heartbeat_interval=10000,
    )
    assert resp["msg_timeout"] == 5000
    assert resp["sample_rate"] == 42
    assert resp["output_buffer_size"] == 1024
    assert resp["output_buffer_timeout"] == 100
    assert_usable(w)


def test_keys_match_in_any_case(broker, connect):
    """T13: nsqd decodes IDENTIFY with Go's encoding/json, which matches keys to fields
    case-insensitively: "Feature_Negotiation", "MSG_TIMEOUT" and "Client_ID" count."""
    w = connect(broker)
    w.cmd(
        "IDENTIFY",
        b'{"Feature_Negotiation":true,"MSG_TIMEOUT":7000,"Sample_Rate":3,"Client_ID":"mixed","Other":1}',
    )
    ft, data = w.read_frame()
    assert ft == FRAME_RESPONSE, (ft, data)
    resp = json.loads(data)
    assert (resp["msg_timeout"], resp["sample_rate"]) == (7000, 3)
    assert_usable(w)


@pytest.mark.parametrize(
    "fields,size,timeout",
    [
        ({"output_buffer_size": -1}, 1, 0),
        ({"output_buffer_size": -1, "output_buffer_timeout": 500}, 1, 0),
        ({"output_buffer_timeout": -1}, 16384, 0),
        ({"output_buffer_size": 0, "output_buffer_timeout": 0}, 16384, 250),
        ({"output_buffer_size": 64, "output_buffer_timeout": 25}, 64, 25),
    ],
    ids=["size-minus-1", "size-minus-1-overrides-timeout", "timeout-minus-1", "zeros-default", "minimums"],
)
def test_output_buffer_special_values(broker, connect, fields, size, timeout):
    """T15: output_buffer_size -1 means size 1 and timeout 0; timeout -1 means 0; 0 means default."""
    w = connect(broker)
    resp = identify_ok(w, feature_negotiation=True, **fields)
    assert (resp["output_buffer_size"], resp["output_buffer_timeout"]) == (size, timeout)


def test_tls_requested_without_tls_config(broker, connect):
    """T17/T18: tls_v1 requested on a broker without --tls-cert answers tls_v1 false and
    the connection stays plain (next frames are unencrypted)."""
    w = connect(broker)
    resp = identify_ok(w, feature_negotiation=True, tls_v1=True)
    assert resp["tls_v1"] is False
    assert_usable(w)


def test_auth_required_false_and_identify_twice(broker, connect):
    """T17/T22: auth_required is false without --auth-http-address; a second IDENTIFY in
    `init` negotiates again (T13)."""
    w = connect(broker)
    r1 = identify_ok(w, feature_negotiation=True, msg_timeout=2000)
    assert r1["auth_required"] is False and r1["msg_timeout"] == 2000
    r2 = identify_ok(w, feature_negotiation=True, msg_timeout=3000)
    assert r2["msg_timeout"] == 3000


class Deflated:
    """Raw DEFLATE both ways (T19)."""

    def __init__(self, w, level):
        self.w = w
        self.d = zlib.decompressobj(-15)
        self.c = zlib.compressobj(level, zlib.DEFLATED, -15)
        self.plain = w.buf  # anything read past the JSON frame is compressed already
        self.plain_in = self.d.decompress(self.plain)
        w.buf = b""

    def send(self, raw):
        self.w.sock.sendall(self.c.compress(raw) + self.c.flush(zlib.Z_SYNC_FLUSH))

    def read_frame(self):
        while True:
            if len(self.plain_in) >= 4:
                size = struct.unpack(">i", self.plain_in[:4])[0]
                if len(self.plain_in) >= 4 + size:
                    frame = self.plain_in[4 : 4 + size]
                    self.plain_in = self.plain_in[4 + size :]
                    ftype = struct.unpack(">i", frame[:4])[0]
                    if (ftype, frame[4:]) == (FRAME_RESPONSE, b"_heartbeat_"):
                        continue
                    return ftype, frame[4:]
            chunk = self.w.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.plain_in += self.d.decompress(chunk)


class Snappied:
    """Snappy framing format both ways (T19)."""

    def __init__(self, w):
        import snappy

        self.w = w
        self.d = snappy.StreamDecompressor()
        self.c = snappy.StreamCompressor()
        self.plain_in = self.d.decompress(w.buf) if w.buf else b""
        w.buf = b""

    def send(self, raw):
        self.w.sock.sendall(self.c.add_chunk(raw))

    read_frame = Deflated.read_frame


@pytest.mark.parametrize("req_level,level", [(0, 6), (3, 3), (9, 6)], ids=["default", "3", "clamped-to-max"])
def test_deflate_negotiation(broker, connect, req_level, level):
    """T19: deflate requested -> deflate true, level = requested (>0) clamped to
    --max-deflate-level (6), default 6; then a deflate-compressed `OK` follows and the
    stream is raw DEFLATE both ways."""
    w = connect(broker)
    fields = {"feature_negotiation": True, "deflate": True}
    if req_level:
        fields["deflate_level"] = req_level
    resp = identify_ok(w, **fields)
    assert resp["deflate"] is True and resp["snappy"] is False
    assert resp["deflate_level"] == level and resp["max_deflate_level"] == 6
    z = Deflated(w, level)
    assert z.read_frame() == OK
    z.send(b"NOP\n" + cmd_bytes("PUB dt", b"deflated body"))
    assert z.read_frame() == OK
    z.send(b"SUB dt c\n")
    assert z.read_frame() == OK
    z.send(b"RDY 1\n")
    ft, data = z.read_frame()
    assert ft == FRAME_MESSAGE and data[26:] == b"deflated body"


def test_snappy_negotiation(broker, connect):
    """T19: snappy requested -> snappy true, then a snappy-framed `OK`; the stream is the
    snappy framing format both ways."""
    w = connect(broker)
    resp = identify_ok(w, feature_negotiation=True, snappy=True)
    assert resp["snappy"] is True and resp["deflate"] is False
    z = Snappied(w)
    assert z.read_frame() == OK
    z.send(cmd_bytes("PUB st", b"snappy body " * 20))
    assert z.read_frame() == OK
    z.send(b"SUB st c\nRDY 1\n")
    assert z.read_frame() == OK
    ft, data = z.read_frame()
    assert ft == FRAME_MESSAGE and data[26:] == b"snappy body " * 20


def test_compression_disabled_by_flags(brokers, connect):
    """T19: with --deflate=false --snappy=false a request for either answers false and the
    connection stays uncompressed."""
    b = brokers(args=["--deflate=false", "--snappy=false"])
    w = connect(b)
    resp = identify_ok(w, feature_negotiation=True, deflate=True)
    assert resp["deflate"] is False and resp["snappy"] is False
    assert_usable(w)
    w2 = connect(b)
    resp = identify_ok(w2, feature_negotiation=True, snappy=True)
    assert resp["snappy"] is False
    assert_usable(w2)
