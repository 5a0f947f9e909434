"""Raw protocol V2 over TCP: `Wire` (send bytes, read frames), `Conn` (a Wire that
answers heartbeats), command and frame builders, the small command helpers the wire
tests share, pipelined publishers and `RawConsumer`, a consumer fast enough to take a
million messages in seconds. Rows T*, Q* of the reference."""

import json
import socket
import struct
import threading
import time

FRAME_RESPONSE = 0
FRAME_ERROR = 1
FRAME_MESSAGE = 2
OK = (FRAME_RESPONSE, b"OK")
HEARTBEAT = b"_heartbeat_"


def i32(n):
    """A big-endian int32, as every length on the wire (T4)."""
    return struct.pack(">i", n)


def cmd_bytes(line, body=None):
    """`line\\n`, then [int32 BE len] + body when a body is given (T4)."""
    data = line.encode() + b"\n" if isinstance(line, str) else line + b"\n"
    if body is not None:
        data += struct.pack(">i", len(body)) + body
    return data


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


def decode_message(data):
    ts, attempts = struct.unpack(">qH", data[:10])
    return {"timestamp": ts, "attempts": attempts, "id": data[10:26], "body": data[26:]}


class Wire:
    """A raw protocol V2 connection: send bytes, read frames."""

    def __init__(self, address, magic=b"  V2", timeout=5.0):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        if magic:
            self.sock.sendall(magic)

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, line, body=None):
        self.sock.sendall(cmd_bytes(line, body))

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by broker")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, skip_heartbeats=True):
        """Return (frame_type, data)."""
        while True:
            size = struct.unpack(">i", self._read_exact(4))[0]
            data = self._read_exact(size)
            ftype = struct.unpack(">i", data[:4])[0]
            payload = data[4:]
            if skip_heartbeats and ftype == FRAME_RESPONSE and payload == HEARTBEAT:
                continue
            return ftype, payload

    def read_message(self):
        ftype, data = self.read_frame()
        assert ftype == FRAME_MESSAGE, (ftype, data)
        return decode_message(data)

    def is_closed(self, timeout=2.0):
        """True if the broker closes the connection within `timeout` (no more data)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


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


# ----------------------------------------------------------------------------- commands


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


def pub(w_or_broker, topic, body):
    """PUB on connection `w`, or on a new `Conn` to a broker; the answer must be OK.
    Returns the connection."""
    w = w_or_broker if isinstance(w_or_broker, Wire) else Conn(w_or_broker)
    w.cmd(f"PUB {topic}", body)
    assert w.read_frame() == OK
    return w


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


# ----------------------------------------------------------------------------- publishers


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


# ----------------------------------------------------------------------------- consumer


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
