"""A small nsqlookupd for the lookupd tests (no nsqlookupd package installs here):
the V1 TCP protocol nsqd registers over (reference L2-L6) and the HTTP `/lookup`
consumers query, built from what nsqlookupd 1.3 does:

- TCP: magic `"  V1"`, then `NAME[ param]*\\n` commands; IDENTIFY carries a
  `[4-byte BE size][JSON]` body. Every response is `[4-byte BE size][data]`:
  the peer info JSON for IDENTIFY, `OK` for REGISTER/UNREGISTER/PING, `E_INVALID`
  text for anything else. A producer's registrations die with its connection.
- HTTP: `GET /lookup?topic=T` answers `{"channels": [...], "producers": [...]}`
  (V1 shape, producers with broadcast_address, tcp_port, http_port, version) for a
  topic some live connection registered, 404 `{"message":"TOPIC_NOT_FOUND"}` else.
  `GET /channels?topic=T` answers `{"channels": [...]}`: the registered ones plus
  those `seed_channels` adds (channels other nsqd nodes would have registered);
  `fail_channels(T)` makes it answer 500 for T.

Everything received is recorded per connection, for the tests to check. A stub
can be made on given ports (`LookupdStub(tcp_port=..., http_port=...)`), so that a
test can close one and start another where it was: an nsqlookupd restart.
"""

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Peer:
    """One nsqd connection: what it sent, in order."""

    def __init__(self, sock, addr):
        self.sock = sock
        self.remote = f"{addr[0]}:{addr[1]}"
        self.commands = []  # "IDENTIFY", "REGISTER t c", ...
        self.identify = None  # the IDENTIFY body, parsed
        self.registrations = set()  # (topic, channel or "")
        self.closed = threading.Event()


class LookupdStub:
    def __init__(self, tcp_port=0, http_port=0):
        self.lock = threading.Lock()
        self.peers = []
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", tcp_port))
        self.tcp.listen(16)
        self.tcp_port = self.tcp.getsockname()[1]
        self.tcp_address = "127.0.0.1:%d" % self.tcp_port
        self.http = ThreadingHTTPServer(("127.0.0.1", http_port), self._http_handler())
        self.http_port = self.http.server_address[1]
        self.http_address = "127.0.0.1:%d" % self.http.server_address[1]
        self._stopped = False
        self.seeded = {}  # topic -> [channel], as if other nodes registered them
        self.failing = set()  # topics whose /channels answers 500
        self.channel_queries = []  # topics asked for by /channels
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    # ------------------------------------------------------------------ TCP

    def _accept(self):
        while not self._stopped:
            try:
                sock, addr = self.tcp.accept()
            except OSError:
                return
            peer = Peer(sock, addr)
            with self.lock:
                self.peers.append(peer)
            threading.Thread(target=self._serve, args=(peer,), daemon=True).start()

    def _serve(self, peer):
        f = peer.sock.makefile("rb")
        try:
            if f.read(4) != b"  V1":
                return
            while True:
                line = f.readline()
                if not line.endswith(b"\n"):
                    return
                parts = line.rstrip(b"\n").decode().split(" ")
                name = parts[0]
                if name == "IDENTIFY":
                    size = struct.unpack(">i", f.read(4))[0]
                    peer.identify = json.loads(f.read(size))
                    self._record(peer, "IDENTIFY")
                    self._respond(peer, json.dumps({
                        "tcp_port": self.tcp.getsockname()[1],
                        "http_port": self.http.server_address[1],
                        "version": "1.3.0",
                        "broadcast_address": "127.0.0.1",
                        "hostname": "lookupd-stub",
                    }).encode())
                elif name in ("REGISTER", "UNREGISTER") and len(parts) in (2, 3):
                    key = (parts[1], parts[2] if len(parts) == 3 else "")
                    with self.lock:
                        if name == "REGISTER":
                            peer.registrations.add(key)
                        else:
                            peer.registrations.discard(key)
                            if key[1] == "":
                                peer.registrations = {
                                    r for r in peer.registrations if r[0] != key[0]}
                    self._record(peer, " ".join(parts))
                    self._respond(peer, b"OK")
                elif name == "PING":
                    self._record(peer, "PING")
                    self._respond(peer, b"OK")
                else:
                    self._record(peer, " ".join(parts))
                    self._respond(peer, b"E_INVALID invalid command")
        except (OSError, ValueError, struct.error):
            pass
        finally:
            peer.closed.set()
            try:
                peer.sock.close()
            except OSError:
                pass

    def _record(self, peer, text):
        with self.lock:
            peer.commands.append(text)

    @staticmethod
    def _respond(peer, data):
        peer.sock.sendall(struct.pack(">i", len(data)) + data)

    # ------------------------------------------------------------------ HTTP

    def _http_handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                topic = parse_qs(url.query).get("topic", [""])[0]
                if url.path == "/channels" and topic:
                    return self._channels(topic)
                if url.path != "/lookup" or not topic:
                    return self._reply(400, {"message": "MISSING_ARG_TOPIC"})
                producers, channels = [], set()
                with stub.lock:
                    for p in stub.peers:
                        if p.closed.is_set() or p.identify is None:
                            continue
                        mine = [r for r in p.registrations if r[0] == topic]
                        if not mine:
                            continue
                        channels.update(c for _, c in mine if c)
                        producers.append({
                            "remote_address": p.remote,
                            "hostname": p.identify.get("hostname"),
                            "broadcast_address": p.identify.get("broadcast_address"),
                            "tcp_port": p.identify.get("tcp_port"),
                            "http_port": p.identify.get("http_port"),
                            "version": p.identify.get("version"),
                        })
                if not producers:
                    return self._reply(404, {"message": "TOPIC_NOT_FOUND"})
                self._reply(200, {"channels": sorted(channels), "producers": producers})

            def _channels(self, topic):
                with stub.lock:
                    stub.channel_queries.append(topic)
                    if topic in stub.failing:
                        return self._reply(500, {"message": "INTERNAL_ERROR"})
                    names = set(stub.seeded.get(topic, []))
                    for p in stub.peers:
                        if not p.closed.is_set():
                            names.update(c for t, c in p.registrations if t == topic and c)
                self._reply(200, {"channels": sorted(names)})

            def _reply(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    # ------------------------------------------------------------------ for tests

    def seed_channels(self, topic, channels):
        with self.lock:
            self.seeded[topic] = list(channels)

    def fail_channels(self, topic):
        with self.lock:
            self.failing.add(topic)

    def live_peers(self):
        with self.lock:
            return [p for p in self.peers if not p.closed.is_set()]

    def all_peers(self):
        with self.lock:
            return list(self.peers)

    def commands(self, peer):
        with self.lock:
            return list(peer.commands)

    def drop_all(self):
        """Close every producer connection, as an nsqlookupd restart would."""
        for p in self.live_peers():
            try:
                p.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            p.closed.wait(5)

    def close(self):
        self._stopped = True
        try:
            # Wakes the accept thread: a plain close would leave it blocked in
            # accept() on a listener that still takes connections.
            self.tcp.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.tcp.close()
        self.drop_all()
        self.http.shutdown()
        self.http.server_close()
