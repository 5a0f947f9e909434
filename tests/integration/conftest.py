"""Shared fixtures: start the real `ringsqd` binary on free loopback ports.

The binary is taken from $RINGSQD_BIN, else target/release/ringsqd.
Every test gets a fresh broker and a fresh data path; nothing is mocked.
"""

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("RINGSQD_BIN", str(ROOT / "target" / "release" / "ringsqd"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A running ringsqd process."""

    def __init__(self, args=(), cores=None, data_dir=None):
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="ringsq-test-")
        self.tcp_address = f"127.0.0.1:{self.tcp_port}"
        cmd = [
            BIN,
            f"--tcp-address={self.tcp_address}",
            f"--http-address=127.0.0.1:{self.http_port}",
            f"--data-path={self.data_dir}",
        ]
        if cores is not None:
            cmd.append(f"--cores={cores}")
        cmd.extend(args)
        self.cmd = cmd
        self.log_path = os.path.join(self.data_dir, "ringsqd.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ringsqd exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"ringsqd did not listen in {timeout}s: {self.log()}")

    def log(self):
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def cleanup(self):
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture
def broker_factory():
    """Start brokers with custom flags: broker_factory(args=[...], cores=N)."""
    started = []

    def make(args=(), cores=None):
        b = Broker(args=args, cores=cores)
        started.append(b)
        return b

    yield make
    dead = []
    for b in started:
        alive = b.alive()
        b.stop()
        if not alive:
            dead.append(b.log())
        b.cleanup()
    # The broker must never die on input: a crash in any test is a failure.
    assert not dead, f"ringsqd died during the test: {dead}"


@pytest.fixture
def broker(broker_factory):
    """A broker with default flags on every CPU."""
    return broker_factory()


# ---------------------------------------------------------------- raw wire helpers

FRAME_RESPONSE = 0
FRAME_ERROR = 1
FRAME_MESSAGE = 2


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
        data = line.encode() + b"\n" if isinstance(line, str) else line + b"\n"
        if body is not None:
            data += struct.pack(">i", len(body)) + body
        self.sock.sendall(data)

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
            if skip_heartbeats and ftype == FRAME_RESPONSE and payload == b"_heartbeat_":
                continue
            return ftype, payload

    def read_message(self):
        ftype, data = self.read_frame()
        assert ftype == FRAME_MESSAGE, (ftype, data)
        ts, attempts = struct.unpack(">qH", data[:10])
        return {"timestamp": ts, "attempts": attempts, "id": data[10:26], "body": data[26:]}

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


def mpub_body(messages):
    out = struct.pack(">i", len(messages))
    for m in messages:
        out += struct.pack(">i", len(m)) + m
    return out


@pytest.fixture
def wire(broker):
    """A raw connection to the default broker, magic already sent."""
    conns = []

    def make(magic=b"  V2"):
        c = Wire(broker.tcp_address, magic=magic)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()
