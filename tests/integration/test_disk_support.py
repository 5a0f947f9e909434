"""Shared helpers for the disk-queue tests (test_disk_*.py).

This module holds no tests. It gives the disk tests:

- `DiskBroker`: a ringsqd process whose log lives outside its data path (the disk-full
  test fills the data path) and that can be killed with SIGKILL or stopped with SIGTERM
  and started again on the same data path;
- the `brokers` fixture: start(...) brokers, all stopped and their data removed at
  teardown; a broker that died without the test killing it fails the test;
- `RawConsumer`: a fast raw-socket consumer (large RDY, FINs batched per read) able to
  take a million messages in seconds, and `Publisher` (pipelined MPUB);
- /stats, HTTP and segment-file helpers.

Row IDs (D*, Q*, T*, H*) refer to /work/shared/nsqd-reference.md.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BIN, FRAME_ERROR, FRAME_MESSAGE, FRAME_RESPONSE, Broker, Wire, free_port  # noqa: F401
from test_http_support import find_channel, find_topic, wait_for  # noqa: F401
from test_wire_support import mpub_body  # noqa: F401

OK = (FRAME_RESPONSE, b"OK")
HEARTBEAT = b"_heartbeat_"

# Our segment files: `<topic>.ringsq.NNNNNN.dat`, `<topic>:<channel>.ringsq.NNNNNN.dat`.
SEGMENT_RE = re.compile(r"^(?P<queue>.+)\.ringsq\.(?P<num>\d{6})\.dat$")


# ----------------------------------------------------------------------------- brokers


class DiskBroker(Broker):
    """A ringsqd process on `data_dir` with its log in `log_dir` (default: a fresh
    temporary directory next to, not inside, the data path)."""

    def __init__(self, args=(), cores=2, data_dir=None, log_dir=None):
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="ringsq-disk-")
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="ringsq-disk-log-")
        self.tcp_address = f"127.0.0.1:{self.tcp_port}"
        self.args = list(args)
        self.cores = cores
        cmd = [
            BIN,
            f"--tcp-address={self.tcp_address}",
            f"--http-address=127.0.0.1:{self.http_port}",
            f"--data-path={self.data_dir}",
        ]
        if cores is not None:
            cmd.append(f"--cores={cores}")
        cmd.extend(self.args)
        self.cmd = cmd
        self.log_path = os.path.join(self.log_dir, f"ringsqd-{self.tcp_port}.log")
        self._log = open(self.log_path, "wb")
        self.stopped_on_purpose = False
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        # Recovery of a large data path may take a while.
        self._wait_ready(timeout=60.0)

    def kill9(self):
        """SIGKILL: a crash, nothing flushed (D11)."""
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def terminate(self, timeout=60):
        """SIGTERM: clean shutdown (D10); returns the exit code."""
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = "timeout"
        self._log.close()
        return rc


@pytest.fixture
def brokers():
    """start(args=(), cores=2, data_dir=None, log_dir=None) -> DiskBroker.

    Restart on the same data path with start(..., data_dir=old.data_dir) once the old
    process is gone. At teardown every process still running is stopped and every data
    path and log directory removed; a broker that exited without kill9()/terminate()
    fails the test with its log."""
    started = []

    def start(args=(), cores=2, data_dir=None, log_dir=None):
        b = DiskBroker(args=args, cores=cores, data_dir=data_dir, log_dir=log_dir)
        started.append(b)
        return b

    yield start
    died = []
    for b in started:
        if not b.stopped_on_purpose and b.proc.poll() is not None:
            died.append(f"exit {b.proc.returncode}: {b.log()[-3000:]}")
        if b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()
        if not b._log.closed:
            b._log.close()
    for d in {b.data_dir for b in started} | {b.log_dir for b in started}:
        shutil.rmtree(d, ignore_errors=True)
    assert not died, f"ringsqd died during the test: {died}"


# ----------------------------------------------------------------------------- HTTP


def http_request(b, method, path, body=None, timeout=10):
    """(status, body bytes) of one request; errors are returned, not raised."""
    conn = http.client.HTTPConnection("127.0.0.1", b.http_port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def post(b, path):
    status, body = http_request(b, "POST", path, body=b"")
    assert status == 200, (path, status, body)
    return body


def metric(b, name):
    """The sum over all label sets of one /metrics sample (ringsq_* names)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_request(b, "GET", "/metrics")
    assert status == 200, (status, body)
    total, seen = 0.0, False
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name:
                total += s.value
                seen = True
    assert seen, f"{name} missing from /metrics"
    return total


def stats(b):
    status, body = http_request(b, "GET", "/stats?format=json&include_clients=false")
    assert status == 200, (status, body)
    return json.loads(body)


def topic_stats(b, topic):
    return find_topic(stats(b), topic)


def channel_stats(b, topic, channel):
    return find_channel(stats(b), topic, channel)


def _wait_stats(lookup, expect, timeout, what, shown=lambda x: x):
    """Wait until `lookup()` (a /stats object) has the fields `expect`."""

    def check():
        x = lookup()
        if x is not None and all(x.get(k) == v for k, v in expect.items()):
            return x
        return None

    try:
        return wait_for(check, timeout=timeout, what=f"{what} {expect}")
    except pytest.fail.Exception:
        raise AssertionError(f"{what}: wanted {expect}, have {shown(lookup())}")


def wait_channel(b, topic, channel, timeout=20.0, **expect):
    """Wait until the channel's /stats fields equal `expect` (e.g. depth=10,
    in_flight_count=0); returns the channel object."""
    return _wait_stats(lambda: channel_stats(b, topic, channel), expect, timeout, f"{topic}/{channel}")


def wait_topic(b, topic, timeout=20.0, **expect):
    def without_channels(t):
        return None if t is None else {k: v for k, v in t.items() if k != "channels"}

    return _wait_stats(lambda: topic_stats(b, topic), expect, timeout, topic, without_channels)


# ----------------------------------------------------------------------------- wire




def cmd_bytes(line, body=None):
    data = line.encode() + b"\n"
    if body is not None:
        data += struct.pack(">i", len(body)) + body
    return data


def next_frame(sock, buf):
    """(type, data) of the next non-heartbeat frame on `sock`, read through `buf` (a
    bytearray kept between calls); heartbeats are answered with NOP. Raises
    socket.timeout / ConnectionError."""
    while True:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack_from(">i", buf)[0]:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed by broker")
            buf += chunk
        size, ftype = struct.unpack_from(">ii", buf)
        data = bytes(buf[8:4 + size])
        del buf[:4 + size]
        if ftype == FRAME_RESPONSE and data == HEARTBEAT:
            sock.sendall(b"NOP\n")
            continue
        return ftype, data


class Conn(Wire):
    """A raw V2 connection to broker `b` (magic sent) whose read_frame answers
    heartbeats with NOP and takes a timeout per call."""

    def __init__(self, b, timeout=10.0):
        super().__init__(f"127.0.0.1:{b.tcp_port}", timeout=timeout)
        self.buf = bytearray()

    def read_frame(self, timeout=None):
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            return next_frame(self.sock, self.buf)
        finally:
            self.sock.settimeout(self.timeout)

    def is_closed(self, timeout=3.0):
        """True if the broker closes the connection within `timeout` s."""
        return super().is_closed(timeout)


def pub(b_or_conn, topic, body):
    c = b_or_conn if isinstance(b_or_conn, Conn) else Conn(b_or_conn)
    c.cmd(f"PUB {topic}", body)
    assert c.read_frame() == OK
    return c


def publish_all(b, topic, bodies, batch=500, window=8):
    """MPUB `bodies` in order over one connection, `window` MPUBs in flight; every one
    must be answered OK. Returns nothing; raises on the first non-OK frame."""
    c = Conn(b, timeout=60)
    try:
        pending = 0
        for k in range(0, len(bodies), batch):
            c.send(cmd_bytes(f"MPUB {topic}", mpub_body(bodies[k:k + batch])))
            pending += 1
            if pending >= window:
                fr = c.read_frame()
                assert fr == OK, fr
                pending -= 1
        while pending:
            fr = c.read_frame()
            assert fr == OK, fr
            pending -= 1
    finally:
        c.close()


class Message:
    __slots__ = ("timestamp", "attempts", "id", "body", "arrived")

    def __init__(self, timestamp, attempts, mid, body, arrived):
        self.timestamp = timestamp
        self.attempts = attempts
        self.id = mid
        self.body = body
        self.arrived = arrived

    def __repr__(self):
        return f"<Message {self.id!r} att={self.attempts} body={self.body[:40]!r}>"


class RawConsumer:
    """SUB topic/channel on a raw socket and take messages fast: RDY `rdy`, every read
    parsed in one pass, FINs for a read sent in one write (fin=True)."""

    def __init__(self, b, topic, channel, rdy=2500, fin=True, identify=None):
        self.sock = socket.create_connection(("127.0.0.1", b.tcp_port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.fin = fin
        self.buf = bytearray()
        self.sock.sendall(b"  V2")
        if identify is not None:
            self.sock.sendall(cmd_bytes("IDENTIFY", json.dumps(identify).encode()))
            ft, data = self._next_frame()
            assert ft == FRAME_RESPONSE, (ft, data)
        self.sock.sendall(cmd_bytes(f"SUB {topic} {channel}"))
        fr = self._next_frame()
        assert fr == OK, fr
        if rdy:
            self.rdy(rdy)

    def rdy(self, n):
        self.sock.sendall(b"RDY %d\n" % n)

    def finish(self, ids):
        if ids:
            self.sock.sendall(b"".join(b"FIN " + i + b"\n" for i in ids))

    def req(self, mid, delay_ms):
        self.sock.sendall(b"REQ " + mid + b" %d\n" % delay_ms)

    def _next_frame(self):
        return next_frame(self.sock, self.buf)

    def _parse(self, out, on_message):
        """Parse every complete frame in the buffer; returns ids to FIN."""
        buf = self.buf
        pos = 0
        n = len(buf)
        fins = []
        now = time.time()
        unpack = struct.unpack_from
        while n - pos >= 8:
            size, ftype = unpack(">ii", buf, pos)
            end = pos + 4 + size
            if end > n:
                break
            if ftype == FRAME_MESSAGE:
                ts, att = unpack(">qH", buf, pos + 8)
                mid = bytes(buf[pos + 18:pos + 34])
                body = bytes(buf[pos + 34:end])
                if on_message is not None:
                    on_message(Message(ts, att, mid, body, now))
                else:
                    out.append(Message(ts, att, mid, body, now))
                if self.fin:
                    fins.append(mid)
            elif ftype == FRAME_RESPONSE:
                if bytes(buf[pos + 8:end]) == HEARTBEAT:
                    self.sock.sendall(b"NOP\n")
                else:
                    raise AssertionError(f"unexpected response {bytes(buf[pos + 8:end])!r}")
            else:
                raise AssertionError(f"error frame {bytes(buf[pos + 8:end])!r}")
            pos = end
        del buf[:pos]
        return fins

    def take(self, n=None, quiet=1.0, timeout=30.0, on_message=None, idle=5.0):
        """Read messages until `n` arrived (then keep listening `quiet` s more, to catch
        extra ones) or, with n=None, until nothing arrives for `quiet` s; `timeout` bounds
        the whole call, and with `n` given the call also gives up when nothing arrives
        for `idle` s (so that a test missing messages fails fast). Returns the list of
        Message (empty when on_message is given; `on_message(msg)` is then called for
        each)."""
        out = []
        count = [0]
        if on_message is not None:
            user = on_message

            def on_message(m):
                count[0] += 1
                user(m)

        deadline = time.time() + timeout
        last = time.time()
        reached_at = None
        while True:
            got = count[0] + len(out)
            now = time.time()
            if n is not None and got >= n and reached_at is None:
                reached_at = now
            if reached_at is not None and now - reached_at >= quiet:
                break
            if n is None and now - last >= quiet:
                break
            if n is not None and reached_at is None and now - last >= idle:
                break
            if now >= deadline:
                break
            wait = min(deadline - now, quiet if reached_at is None else quiet - (now - reached_at))
            if n is None:
                wait = min(wait, quiet - (now - last))
            elif reached_at is None:
                wait = min(wait, idle - (now - last))
            self.sock.settimeout(max(wait, 0.001))
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionError("closed by broker")
            self.buf += chunk
            fins = self._parse(out, on_message)
            if fins:
                self.finish(fins)
            if count[0] + len(out) > got:
                last = time.time()
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ----------------------------------------------------------------------------- files


def finish_then_stop(b, topic, channel, n, left):
    """Take `n` messages of topic/channel without FIN, FIN them in one write, wait
    until the channel holds `left` with nothing in flight, then stop the broker
    cleanly (D10). Returns the messages finished."""
    c = RawConsumer(b, topic, channel, rdy=n, fin=False)
    first = c.take(n, quiet=0.3)
    c.rdy(0)
    c.finish([m.id for m in first])
    wait_channel(b, topic, channel, depth=left, in_flight_count=0)
    assert b.terminate() == 0
    c.close()
    return first


class MpubStorm:
    """`publishers` connections MPUB 100 x 16 B to `topic` back to back until
    stop(); the first non-OK frame or exception of each (a timeout is a hang)
    lands in `errors`, OKs are counted per publisher in `counts`."""

    def __init__(self, b, topic, fill=b"x", publishers=4):
        self.stopping = threading.Event()
        self.errors = []
        self.counts = [0] * publishers
        line = f"MPUB {topic}".encode()
        body = b"\x00\x00\x00\x64" + (b"\x00\x00\x00\x10" + fill * 16) * 100

        def publisher(k):
            w = Wire(b.tcp_address, timeout=10)
            try:
                while not self.stopping.is_set():
                    w.cmd(line, body)
                    frame = w.read_frame()
                    if frame != (0, b"OK"):
                        self.errors.append(frame)
                        return
                    self.counts[k] += 1
            except Exception as e:
                self.errors.append(repr(e))
            finally:
                w.close()

        self.threads = [threading.Thread(target=publisher, args=(k,)) for k in range(publishers)]
        for t in self.threads:
            t.start()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=20)


def segment_files(data_dir, queue):
    """Our segment files of `queue` (`topic` or `topic:channel`), in number order."""
    out = []
    for name in os.listdir(data_dir):
        m = SEGMENT_RE.match(name)
        if m and m.group("queue") == queue:
            out.append((int(m.group("num")), os.path.join(data_dir, name)))
    return [p for _, p in sorted(out)]


def all_segment_files(data_dir):
    return sorted(n for n in os.listdir(data_dir) if SEGMENT_RE.match(n))


def locate(files, bodies, tag_re):
    """Find every body in the segment `files` by its unique tag: `tag_re` must capture
    the body's index. Returns {index: (path, offset of the body)}; each body must be
    present exactly once and intact."""
    where = {}
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        for m in tag_re.finditer(data):
            i = int(m.group(1))
            if i >= len(bodies):
                continue
            off = m.start()
            if data[off:off + len(bodies[i])] != bodies[i]:
                continue
            assert i not in where, f"body {i} found twice: {where[i]} and {(path, off)}"
            where[i] = (path, off)
    missing = [i for i in range(len(bodies)) if i not in where]
    assert not missing, f"{len(missing)} bodies not found in {files} (first {missing[:5]})"
    return where


def log_lines_with(b, word):
    return [line for line in b.log().splitlines() if word.lower() in line.lower()]
