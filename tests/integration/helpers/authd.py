"""`AuthServer`: an nsqd auth server (rows A1, A2) inside the test process, Python's
http.server on 127.0.0.1 and a free port, recording every query it gets.

Its answer is set by the test: `grant(...)` (200 and an nsqd auth JSON reply),
`answer(status, body)` (anything raw), or `hold()` / `release()` to keep queries
waiting. `queries` lists `Query(path, raw_query, params, headers)` in arrival order.
With `ssl_context` it serves HTTPS; `url` is then its `https://` address.
"""

import json
import threading
import urllib.parse
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers.wait import wait_for
from helpers.wire import FRAME_RESPONSE

Query = namedtuple("Query", "path raw_query params headers")


def authorization(topic, channels=(), permissions=()):
    return {"topic": topic, "channels": list(channels), "permissions": list(permissions)}


def reply(authorizations, ttl=3600, identity="tester", identity_url="http://id.example/tester"):
    return {"ttl": ttl, "identity": identity, "identity_url": identity_url, "authorizations": authorizations}


# Publish and subscribe on every topic and channel.
EVERYTHING = [authorization(".*", [".*"], ["publish", "subscribe"])]


class AuthServer:
    def __init__(self, ssl_context=None):
        self.queries = []
        self._lock = threading.Lock()
        self._answer = (200, json.dumps(reply(EVERYTHING)).encode())
        self._released = threading.Event()
        self._released.set()
        # False: no Content-Length, the body ends when the server closes (HTTP/1.0).
        self.content_length = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path, _, raw = self.path.partition("?")
                q = Query(path, raw, urllib.parse.parse_qs(raw, keep_blank_values=True), dict(self.headers))
                with server._lock:
                    server.queries.append(q)
                    answer = server._answer
                server._released.wait(30)
                status, body, *headers = answer(q) if callable(answer) else answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers[0] if headers else {}).items():
                    self.send_header(name, value)
                if server.content_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if ssl_context:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if ssl_context else 'http'}://{self.address}/auth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def grant(self, authorizations=EVERYTHING, **fields):
        """Answer 200 with `reply(authorizations, **fields)`."""
        self.answer(200, json.dumps(reply(authorizations, **fields)).encode())

    def answer(self, status, body):
        """Answer every query with `status` and raw `body` (bytes), or, when `status`
        is callable, with what `status(query)` returns as (status, body) or
        (status, body, {header: value})."""
        with self._lock:
            self._answer = status if callable(status) else (status, body)

    def hold(self):
        """Queries wait (recorded) until release()."""
        self._released.clear()

    def release(self):
        self._released.set()

    def count(self):
        with self._lock:
            return len(self.queries)

    def wait_queries(self, n, timeout=10.0):
        """Until at least `n` queries have arrived; returns them all."""
        wait_for(lambda: self.count() >= n, timeout=timeout, what=f"{n} auth queries")
        with self._lock:
            return list(self.queries)

    def secrets(self):
        with self._lock:
            return [q.params["secret"][0] for q in self.queries]

    def close(self):
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


def auth_broker(brokers, *addresses, args=()):
    """A broker asking the auth servers at `addresses` (--auth-http-address each)."""
    return brokers(args=[f"--auth-http-address={a}" for a in addresses] + list(args))


def do_auth(w, secret=b"s3cret"):
    """AUTH on `w`, which must succeed; returns the answer's JSON."""
    w.cmd("AUTH", secret)
    ft, data = w.read_frame()
    assert ft == FRAME_RESPONSE, (ft, data)
    return json.loads(data)
