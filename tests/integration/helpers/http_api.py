"""The HTTP side: a small real HTTP client (http.client, one connection per call
unless a keep-alive connection is asked for), /stats and /metrics readers, and a raw
protocol V2 consumer used to check what /pub and /mpub actually deliver.

Rows H*, T*, Q*, X* of the reference; the exact bodies and codes were read from
nsqd v1.3.0 (nsqd/http.go, internal/http_api).
"""

import http.client
import json
import re
import socket
import time

import pytest

from helpers.wire import FRAME_RESPONSE, Wire, mpub_body

V1_HEADER = "nsq; version=1.0"
JSON_CT = "application/json; charset=utf-8"
HEX16 = re.compile(rb"^[0-9a-f]{16}$")
SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-cased name -> value
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"<Resp {self.status} {self.headers} {self.body[:300]!r}>"


def _read(resp):
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    return Resp(resp.status, headers, body)


def request(broker, method, path, body=None, headers=None, chunked=False, conn=None, timeout=10):
    """One HTTP request; a fresh connection unless `conn` is given."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", broker.http_port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if chunked:
            hdrs.setdefault("Transfer-Encoding", "chunked")

            def gen(data=body, step=7):
                for i in range(0, len(data), step):
                    yield data[i:i + step]

            conn.request(method, path, body=gen(), headers=hdrs, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=hdrs)
        return _read(conn.getresponse())
    finally:
        if own:
            conn.close()


def get(broker, path, **kw):
    return request(broker, "GET", path, **kw)


def post(broker, path, body=b"", **kw):
    return request(broker, "POST", path, body=body, **kw)


def put(broker, path, body=b"", **kw):
    return request(broker, "PUT", path, body=body, **kw)


def assert_error(resp, status, code):
    """An H2 error envelope: exact status, exact JSON body, both headers."""
    assert resp.status == status, resp
    assert resp.body == json.dumps({"message": code}, separators=(",", ":")).encode(), resp
    assert resp.header("X-NSQ-Content-Type") == V1_HEADER, resp
    assert resp.header("Content-Type") == JSON_CT, resp


def assert_ok_empty(resp):
    """H2: 200 + nil => empty body, V1 header."""
    assert resp.status == 200, resp
    assert resp.body == b"", resp
    assert resp.header("X-NSQ-Content-Type") == V1_HEADER, resp


def assert_ok_text(resp, text=b"OK"):
    assert resp.status == 200, resp
    assert resp.body == text, resp
    assert resp.header("X-NSQ-Content-Type") == V1_HEADER, resp


def stats(broker, **params):
    """GET /stats?format=json[&...] and return the decoded document."""
    q = "&".join(f"{k}={v}" for k, v in {"format": "json", **params}.items())
    r = get(broker, "/stats?" + q)
    assert r.status == 200, r
    assert r.header("Content-Type") == JSON_CT, r
    return r.json()


def find_topic(doc, name):
    for t in doc["topics"] or []:
        if t["topic_name"] == name:
            return t
    return None


def find_channel(doc, topic, channel):
    t = find_topic(doc, topic)
    if t is None:
        return None
    for c in t["channels"]:
        if c["channel_name"] == channel:
            return c
    return None


def topic_stats(b, topic):
    """The topic's /stats object, or None while it does not exist."""
    return find_topic(stats(b, include_clients="false"), topic)


def channel_stats(b, topic, channel):
    """The channel's /stats object, or None while it does not exist."""
    return find_channel(stats(b, include_clients="false"), topic, channel)


def topic_stat(b, topic, key):
    t = topic_stats(b, topic)
    return None if t is None else t[key]


def channel_stat(b, topic, channel, key):
    c = channel_stats(b, topic, channel)
    return None if c is None else c[key]


def post_ok(broker, path):
    """POST with an empty body that must answer 200; returns the body."""
    r = post(broker, path)
    assert r.status == 200, (path, r.status, r.body)
    return r.body


def metric(b, name):
    """The sum over all label sets of one /metrics sample (ringsq_* names)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = get(b, "/metrics")
    assert r.status == 200, r
    total, seen = 0.0, False
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == name:
                total += s.value
                seen = True
    assert seen, f"{name} missing from /metrics"
    return total


def read_http_response(f):
    """Parse one HTTP/1.1 response from a binary file object (Content-Length or chunked)."""
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(f.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += f.read(size)
            f.readline()
    else:
        body = b""
    return status, headers, body


def chunk_encode(data, step=7):
    out = b""
    for i in range(0, len(data), step):
        c = data[i:i + step]
        out += b"%x\r\n" % len(c) + c + b"\r\n"
    return out + b"0\r\n\r\n"


def raw_chunked_post(broker, path, body):
    """POST a chunked body written in one send, then read one response. Used where the
    server may answer (and close) before reading the whole body, which makes
    http.client fail with EPIPE while it is still writing."""
    s = socket.create_connection(("127.0.0.1", broker.http_port), timeout=10)
    try:
        req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               .encode() + chunk_encode(body))
        try:
            s.sendall(req)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, rbody = read_http_response(s.makefile("rb"))
        return Resp(status, headers, rbody)
    finally:
        s.close()


# ------------------------------------------------------------------ TCP side


class Consumer:
    """A raw V2 connection (helpers.wire.Wire) with the few commands the HTTP tests need."""

    def __init__(self, broker, identify=None):
        self.w = Wire(broker.tcp_address)
        if identify is not None:
            self.w.cmd("IDENTIFY", json.dumps(identify).encode())
            ftype, data = self.w.read_frame()
            assert ftype == FRAME_RESPONSE, (ftype, data)

    @property
    def local_port(self):
        return self.w.sock.getsockname()[1]

    def sub(self, topic, channel, rdy=None):
        self.w.cmd(f"SUB {topic} {channel}")
        assert self.w.read_frame() == (FRAME_RESPONSE, b"OK")
        if rdy is not None:
            self.rdy(rdy)
        return self

    def rdy(self, n):
        self.w.cmd(f"RDY {n}")

    def fin(self, msg_id):
        self.w.cmd(b"FIN " + msg_id)

    def req(self, msg_id, timeout_ms=0):
        self.w.cmd(b"REQ " + msg_id + b" " + str(timeout_ms).encode())

    def pub(self, topic, body):
        self.w.cmd(f"PUB {topic}", body)
        assert self.w.read_frame() == (FRAME_RESPONSE, b"OK")

    def mpub(self, topic, bodies):
        self.w.cmd(f"MPUB {topic}", mpub_body(bodies))
        assert self.w.read_frame() == (FRAME_RESPONSE, b"OK")

    def dpub(self, topic, defer_ms, body):
        self.w.cmd(f"DPUB {topic} {defer_ms}", body)
        assert self.w.read_frame() == (FRAME_RESPONSE, b"OK")

    def read_message(self, timeout=5.0):
        self.w.sock.settimeout(timeout)
        try:
            return self.w.read_message()
        finally:
            self.w.sock.settimeout(5.0)

    def read_messages(self, n, timeout=5.0):
        return [self.read_message(timeout) for _ in range(n)]

    def expect_nothing(self, seconds):
        """Assert no frame other than a heartbeat arrives within `seconds`."""
        deadline = time.time() + seconds
        while True:
            left = deadline - time.time()
            if left <= 0:
                return
            self.w.sock.settimeout(left)
            try:
                ftype, data = self.w.read_frame()
            except socket.timeout:
                return
            finally:
                self.w.sock.settimeout(5.0)
            pytest.fail(f"unexpected frame while expecting silence: {ftype} {data[:80]!r}")

    def read_frame(self, timeout=5.0):
        self.w.sock.settimeout(timeout)
        try:
            return self.w.read_frame()
        finally:
            self.w.sock.settimeout(5.0)

    def is_closed(self, timeout=3.0):
        return self.w.is_closed(timeout)

    def close(self):
        self.w.close()


def check_message_header(msg, now_ns=None, attempts=1):
    """T6/T7: 16 lowercase hex id, attempts, timestamp in ns close to now."""
    now_ns = now_ns or time.time_ns()
    assert HEX16.match(msg["id"]), msg["id"]
    assert msg["attempts"] == attempts, msg
    assert abs(msg["timestamp"] - now_ns) < 10 * 10**9, (msg["timestamp"], now_ns)
