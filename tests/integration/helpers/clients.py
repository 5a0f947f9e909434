"""Real-client drivers. pynsq 0.9.1 is tornado based: every test gets its own fresh
IOLoop (`PynsqLoop`, the `loop` fixture) and drives it with `run_until(predicate,
timeout)`, so no thread or global loop is shared between tests. gnsq is gevent based:
its tests run a generated script in a subprocess (`run_gnsq_script`) so gevent never
touches this interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import nsq
from tornado.ioloop import IOLoop, PeriodicCallback

HEX = set(b"0123456789abcdef")


class PynsqLoop:
    """A private tornado IOLoop for one test; run it until a condition holds."""

    def __init__(self):
        self.io = IOLoop()
        self.io.make_current()
        self.clients = []

    def run_until(self, pred, timeout):
        """Run the loop until pred() is true or `timeout` seconds pass; return pred()."""
        deadline = time.monotonic() + timeout

        def check():
            if pred() or time.monotonic() >= deadline:
                self.io.stop()

        pc = PeriodicCallback(check, 5)
        pc.start()
        self.io.start()
        pc.stop()
        return pred()

    def sleep(self, seconds):
        """Keep the loop (and so the clients: heartbeats, FIN, ...) running for `seconds`."""
        self.run_until(lambda: False, seconds)

    def reader(self, address, topic, channel, handler=None, **kwargs):
        r = TrackedReader(
            topic=topic,
            channel=channel,
            message_handler=handler or (lambda m: True),
            nsqd_tcp_addresses=[address],
            max_tries=0,
            **kwargs,
        )
        self.clients.append(r)
        return r

    def writer(self, address, **kwargs):
        w = TrackedWriter([address], reconnect_interval=60.0, **kwargs)
        self.clients.append(w)
        return w

    def wait_subscribed(self, readers, timeout=10.0):
        """Wait until every reader got `OK` for its SUB (so the channel exists)."""
        ok = self.run_until(lambda: all(r.sub_ok >= 1 for r in readers), timeout)
        assert ok, "SUB not acknowledged: %r" % [(r.topic, r.channel, r.sub_ok, r.errors) for r in readers]

    def wait_connected(self, writers, timeout=10.0):
        ok = self.run_until(lambda: all(w.conns for w in writers), timeout)
        assert ok, "writer(s) did not connect"

    def publish(self, writer, ops, timeout=10.0):
        """Send ops = [("pub", topic, body) | ("mpub", topic, [bodies]) | ("dpub", topic, ms, body)]
        back to back on one writer connection; return the list of responses in order
        (b"OK" or an nsq.Error)."""
        results = [None] * len(ops)
        done = [0]

        def cb(i):
            def f(conn, data):
                results[i] = data
                done[0] += 1
            return f

        for i, op in enumerate(ops):
            if op[0] == "pub":
                writer.pub(op[1], op[2], callback=cb(i))
            elif op[0] == "mpub":
                writer.mpub(op[1], list(op[2]), callback=cb(i))
            elif op[0] == "dpub":
                writer.dpub(op[1], op[2], op[3], callback=cb(i))
            else:
                raise ValueError(op)
        assert self.run_until(lambda: done[0] == len(ops), timeout), "no answer to publish: %r" % results
        return results

    def close(self):
        for c in self.clients:
            try:
                if isinstance(c, nsq.Reader):
                    if c.redist_periodic is not None:
                        c.close()
                    else:
                        for conn in list(c.conns.values()):
                            conn.close()
                else:
                    for conn in list(c.conns.values()):
                        conn.close()
            except Exception:
                pass
        try:
            self.sleep(0.05)
        except Exception:
            pass
        IOLoop.clear_current()
        self.io.close(all_fds=True)


class TrackedReader(nsq.Reader):
    """nsq.Reader that records SUB acknowledgements, errors, heartbeats and closes."""

    def __init__(self, *args, **kwargs):
        self.sub_ok = 0
        self.responses = []
        self.errors = []
        self.heartbeats = 0
        self.closed_conns = 0
        super().__init__(*args, **kwargs)

    def _on_connection_ready(self, conn, **kwargs):
        conn.on("response", self._tracked_response)
        super()._on_connection_ready(conn, **kwargs)

    def _tracked_response(self, conn, data, **kwargs):
        self.responses.append(data)
        if data == b"OK":
            self.sub_ok += 1

    def _on_connection_error(self, conn, error, **kwargs):
        self.errors.append(error)
        super()._on_connection_error(conn, error, **kwargs)

    def _on_connection_close(self, conn, **kwargs):
        self.closed_conns += 1
        super()._on_connection_close(conn, **kwargs)

    def heartbeat(self, conn):
        self.heartbeats += 1


class TrackedWriter(nsq.Writer):
    def __init__(self, *args, **kwargs):
        self.errors = []
        self.closed_conns = 0
        self.identify_data = None
        super().__init__(*args, **kwargs)

    def _on_connection_identify_response(self, conn, data, **kwargs):
        self.identify_data = data
        super()._on_connection_identify_response(conn, data, **kwargs)

    def _on_connection_error(self, conn, error, **kwargs):
        self.errors.append(error)
        super()._on_connection_error(conn, error, **kwargs)

    def _on_connection_close(self, conn, **kwargs):
        self.closed_conns += 1
        super()._on_connection_close(conn, **kwargs)


class Collector:
    """A message handler that records (id, body, attempts, arrival time) and FINs."""

    def __init__(self, finish=True):
        self.got = []
        self.finish = finish

    def __call__(self, message):
        self.got.append((bytes(message.id), bytes(message.body), message.attempts, time.monotonic()))
        return True if self.finish else None

    @property
    def bodies(self):
        return [g[1] for g in self.got]


def error_text(err):
    """Text of an nsq.Error delivered to a callback (pynsq wraps the frame body)."""
    if isinstance(err, (bytes, bytearray)):
        return bytes(err).decode(errors="replace")
    if err.args:
        a = err.args[0]
        return a.decode(errors="replace") if isinstance(a, (bytes, bytearray)) else str(a)
    return str(err)


def assert_valid_message_id(mid):
    """T6/T7: 16 lowercase hex ASCII characters."""
    assert len(mid) == 16, mid
    assert set(mid) <= HEX, mid


def binary_bodies():
    """Bodies that trip up any text handling: every byte value, NUL/CR/LF, frame-like bytes."""
    return [
        bytes(range(256)),
        bytes(range(255, -1, -1)),
        b"\x00",
        b"\n",
        b"\r\n\r\n",
        b"PUB x\n\x00\x00\x00\x01",
        b"_heartbeat_",
        b"\xff" * 1000,
        os.urandom(3000),
        "héllo wörld ✓".encode(),
    ]


def run_gnsq_script(source, timeout=40.0, **params):
    """Run gnsq code in a fresh interpreter; the script prints one JSON line that is returned.

    `params` are available to the script as the dict `P`."""
    prelude = "import json, sys, time\nP = json.loads(sys.argv[1])\n"
    code = prelude + textwrap.dedent(source)
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(params)],
        capture_output=True,
        timeout=timeout,
    )
    out = proc.stdout.decode(errors="replace").strip().splitlines()
    assert proc.returncode == 0 and out, "gnsq script failed (rc=%s):\n%s\n%s" % (
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )
    return json.loads(out[-1])
