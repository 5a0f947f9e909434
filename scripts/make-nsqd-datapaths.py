#!/usr/bin/env python3
"""Write small data paths with a real nsqd 1.3.0 and describe them in a manifest.

Usage:
    make-nsqd-datapaths.py NSQD_BIN OUTDIR [--case NAME ...]
    make-nsqd-datapaths.py NSQD_BIN --compare DIR_A DIR_B
    make-nsqd-datapaths.py NSQD_BIN --verify OUTDIR

For every case it starts NSQD_BIN (it never builds it) on loopback, on free ports, with
a fresh data path, drives it with raw TCP (protocol V2) and, where nsqd only offers it
over HTTP, with its HTTP API (create, pause), stops it with SIGTERM (clean shutdown,
D10) and copies the data path to OUTDIR/<case>/data/. It then reads back what nsqd
wrote (nsqd.dat, every diskqueue meta and segment file, D1-D5) and checks it against
what the case did, and writes OUTDIR/<case>/manifest.json: the queues as stored
(messages with id, timestamp, attempts, body in file order), the /stats a broker
started on the data path must show, and what a consumer must receive per channel.

--compare checks that two outputs hold the same files with the same bytes except each
record's id and timestamp (which nsqd draws from the clock). --verify starts NSQD_BIN
on a copy of each case and checks that nsqd itself shows the manifest's /stats and
delivers exactly the manifest's messages.

Row IDs (D*, T*) refer to nsqd-reference.md.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

MAGIC = b"  V2"
FRAME_RESPONSE, FRAME_ERROR, FRAME_MESSAGE = 0, 1, 2
DEFER_MS = 600_000  # 10 minutes: still deferred when nsqd shuts down


# ----------------------------------------------------------------------------- nsqd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nsqd:
    """An nsqd process on loopback with its log outside the data path."""

    def __init__(self, binary, data_path, flags, log_path):
        self.tcp = free_port()
        self.http = free_port()
        self.data_path = data_path
        cmd = [
            binary,
            f"--data-path={data_path}",
            f"--tcp-address=127.0.0.1:{self.tcp}",
            f"--http-address=127.0.0.1:{self.http}",
            "--broadcast-address=127.0.0.1",
            *flags,
        ]
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.get("/ping")[0] == 200:
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nsqd did not start")

    def request(self, method, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.http, timeout=5)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def get(self, path):
        return self.request("GET", path)

    def post(self, path):
        status, body = self.request("POST", path)
        assert status == 200, (path, status, body)

    def create_channel(self, topic, channel):
        self.post(f"/topic/create?topic={topic}")
        self.post(f"/channel/create?topic={topic}&channel={channel}")

    def stats(self):
        status, body = self.get("/stats?format=json")
        assert status == 200, body
        return json.loads(body)

    def wait_stats(self, check, what, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.stats()
            if check(st):
                return st
            time.sleep(0.02)
        raise AssertionError(f"nsqd: {what}: {json.dumps(self.stats())[:2000]}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.log.close()
        assert rc == 0, f"nsqd exited with {rc}"


def channel_of(st, topic, channel):
    for t in st["topics"]:
        if t["topic_name"] == topic:
            for c in t["channels"]:
                if c["channel_name"] == channel:
                    return c
    return None


def topic_of(st, topic):
    return next((t for t in st["topics"] if t["topic_name"] == topic), None)


class Wire:
    """A raw protocol V2 connection."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(MAGIC)
        self.buf = b""

    def cmd(self, line, body=None):
        data = line.encode() + b"\n"
        if body is not None:
            data += struct.pack(">i", len(body)) + body
        self.sock.sendall(data)

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by nsqd")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        while True:
            size = struct.unpack(">i", self._exact(4))[0]
            data = self._exact(size)
            ftype, payload = struct.unpack(">i", data[:4])[0], data[4:]
            if ftype == FRAME_RESPONSE and payload == b"_heartbeat_":
                self.cmd("NOP")
                continue
            return ftype, payload

    def ok(self):
        f = self.frame()
        assert f == (FRAME_RESPONSE, b"OK"), f

    def pub(self, topic, body):
        self.cmd(f"PUB {topic}", body)
        self.ok()

    def mpub(self, topic, bodies):
        payload = struct.pack(">i", len(bodies)) + b"".join(struct.pack(">i", len(b)) + b for b in bodies)
        self.cmd(f"MPUB {topic}", payload)
        self.ok()

    def dpub(self, topic, ms, body):
        self.cmd(f"DPUB {topic} {ms}", body)
        self.ok()

    def sub(self, topic, channel):
        self.cmd(f"SUB {topic} {channel}")
        self.ok()

    def message(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            ftype, data = self.frame()
        finally:
            self.sock.settimeout(5)
        assert ftype == FRAME_MESSAGE, (ftype, data)
        ts, attempts = struct.unpack(">qH", data[:10])
        return {"timestamp": ts, "attempts": attempts, "id": data[10:26], "body": data[26:]}

    def quiet(self, seconds):
        """True if no message arrives within `seconds`."""
        self.sock.settimeout(seconds)
        try:
            ftype, data = self.frame()
            raise AssertionError(f"unexpected frame {ftype} {data[:60]!r}")
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(5)

    def close(self):
        self.sock.close()


# ----------------------------------------------------------------------------- bodies


def body(tag, n, size):
    """A distinctive body: readable tag and number, then `size` bytes that cover every
    byte value (zeros, newlines, 0xff) in an order that depends on the tag."""
    head = f"{tag}#{n:03d}|".encode()
    seed = int(hashlib.sha256(head).hexdigest()[:8], 16)
    rest = bytes((seed + i * 131 + (i >> 8)) & 0xFF for i in range(size))
    return head + rest


SIZES = [0, 1, 5, 26, 100, 255, 256, 700, 1023, 1500, 31, 64]


def bodies(tag, count, sizes=SIZES, start=1):
    return [body(tag, start + i, sizes[(start + i) % len(sizes)]) for i in range(count)]


# ----------------------------------------------------------------------------- cases
# Each case: flags, and a function(nsqd) -> plan. The plan states what the case put
# where, as bodies: {"queues": {queue: [bodies in file order]}, "expect": [...]}; the
# generator checks nsqd's files against it before writing the manifest.


def case_topic_without_channel(n):
    """Topics nsqd writes with `"channels":null` (D1): one with a backlog, one empty
    (created over HTTP, never published to); and a channel that exists with no message."""
    w = Wire(n.tcp)
    lonely = bodies("lonely", 8)
    for b in lonely[:5]:
        w.pub("lonely", b)
    w.mpub("lonely", lonely[5:])
    n.post("/topic/create?topic=empty")
    # a channel created by SUB, its consumer gone: in nsqd.dat, no file but a meta
    w.sub("quiet", "c")
    w.close()
    n.wait_stats(lambda st: topic_of(st, "lonely") and topic_of(st, "lonely")["depth"] == 8, "lonely depth 8")
    n.wait_stats(lambda st: channel_of(st, "quiet", "c") and not channel_of(st, "quiet", "c")["clients"],
                 "quiet/c without clients")
    return {
        "queues": {"lonely": lonely, "empty": [], "quiet": [], "quiet:c": []},
        "steps": [
            "PUB lonely x5, MPUB lonely x3 (no channel ever)",
            "POST /topic/create?topic=empty",
            "SUB quiet c, then disconnect (a channel with no messages)",
            "SIGTERM",
        ],
    }


def case_paused(n):
    """A paused topic with a channel and a paused channel (D1, D2); the paused topic's
    own queue keeps a backlog behind a non-zero read position (D5)."""
    w = Wire(n.tcp)
    # ptopic: c exists first, so the topic pump moves the first messages to c
    n.create_channel("ptopic", "c")
    first = bodies("ptopic-to-c", 4)
    w.mpub("ptopic", first)
    n.wait_stats(lambda st: channel_of(st, "ptopic", "c")["depth"] == 4, "ptopic/c depth 4")
    n.post("/topic/pause?topic=ptopic")
    held = bodies("ptopic-held", 6, start=5)
    for b in held:
        w.pub("ptopic", b)
    # pchan: both channels get every message, the paused one keeps them
    n.create_channel("pchan", "held")
    n.create_channel("pchan", "open")
    before = bodies("pchan", 3)
    w.mpub("pchan", before)
    n.wait_stats(lambda st: channel_of(st, "pchan", "held")["depth"] == 3, "pchan/held depth 3")
    n.post("/channel/pause?topic=pchan&channel=held")
    after = bodies("pchan", 3, start=4)
    for b in after:
        w.pub("pchan", b)
    n.wait_stats(lambda st: channel_of(st, "pchan", "held")["depth"] == 6
                 and channel_of(st, "pchan", "open")["depth"] == 6
                 and topic_of(st, "ptopic")["depth"] == 6, "pchan depths 6, ptopic depth 6")
    w.close()
    return {
        "queues": {"ptopic": held, "ptopic:c": first, "pchan": [], "pchan:held": before + after,
                   "pchan:open": before + after},
        "steps": [
            "POST /channel/create ptopic/c; MPUB ptopic x4 (moved to ptopic:c)",
            "POST /topic/pause?topic=ptopic; PUB ptopic x6 (stay in the topic queue)",
            "POST /channel/create pchan/held and pchan/open; MPUB pchan x3",
            "POST /channel/pause?topic=pchan&channel=held; PUB pchan x3",
            "SIGTERM",
        ],
    }


def case_segments_midfile(n):
    """Several segment files (--max-bytes-per-file=2048, D6) for a channel whose reader is
    mid-file in a later segment (13 FINished, D5), one record larger than a segment, and
    a channel-less topic whose backlog spans several segments from read position 0."""
    w = Wire(n.tcp)
    sizes = [40, 300, 900, 1, 1400, 250, 3000, 77, 600, 1023, 5, 450, 820]
    msgs = bodies("seg", 40, sizes=sizes)
    n.create_channel("seg", "c")
    for i in range(0, 40, 5):
        w.mpub("seg", msgs[i:i + 5])
    n.wait_stats(lambda st: channel_of(st, "seg", "c")["depth"] == 40 and topic_of(st, "seg")["depth"] == 0,
                 "seg/c depth 40")
    c = Wire(n.tcp)
    c.sub("seg", "c")
    c.cmd("RDY 1")
    for i in range(13):
        m = c.message()
        assert m["body"] == msgs[i], (i, m["body"][:20])
        if i == 12:
            c.cmd("RDY 0")
        c.cmd(f"FIN {m['id'].decode()}")
    n.wait_stats(lambda st: channel_of(st, "seg", "c")["in_flight_count"] == 0
                 and channel_of(st, "seg", "c")["depth"] == 27, "seg/c 13 FINished")
    assert c.quiet(0.3)
    c.close()
    many = bodies("segtopic", 25, sizes=[200, 0, 700, 1100, 60])
    for b in many:
        w.pub("segtopic", b)
    w.close()
    return {
        "queues": {"seg": [], "seg:c": msgs[13:], "segtopic": many},
        "steps": [
            "POST /channel/create seg/c; MPUB seg 8 x 5 bodies of 8..3009 bytes",
            "SUB seg c, RDY 1, FIN the first 13 in order (RDY 0 before the 13th FIN), disconnect",
            "PUB segtopic x25 (no channel)",
            "SIGTERM",
        ],
    }


def case_shutdown_inflight_deferred(n):
    """nsqd's clean shutdown writes each channel's in-flight and deferred messages to its
    diskqueue after the unread ones (D10); they lose their timers and come back at once."""
    w = Wire(n.tcp)
    n.create_channel("work", "c")
    msgs = bodies("work", 8)
    w.mpub("work", msgs)
    n.wait_stats(lambda st: channel_of(st, "work", "c")["depth"] == 8, "work/c depth 8")
    c = Wire(n.tcp)
    c.sub("work", "c")
    c.cmd("RDY 1")
    m1 = c.message()
    c.cmd(f"FIN {m1['id'].decode()}")
    m2 = c.message()
    c.cmd(f"REQ {m2['id'].decode()} {DEFER_MS}")
    m3 = c.message()  # stays in flight
    assert [m1["body"], m2["body"], m3["body"]] == msgs[:3]
    # `later`: a DPUB reaches the channel's deferred queue through the topic pump
    n.create_channel("later", "c")
    now = bodies("later-now", 2)
    deferred = body("later-deferred", 1, 333)
    w.pub("later", now[0])
    # with --mem-queue-size=0 a DPUB keeps its delay only if the topic pump takes it
    # from the (unbuffered) memory channel at once: wait until the pump is idle
    n.wait_stats(lambda st: channel_of(st, "later", "c")["depth"] == 1, "later/c depth 1")
    w.dpub("later", DEFER_MS, deferred)
    w.pub("later", now[1])
    n.wait_stats(
        lambda st: (channel_of(st, "work", "c")["depth"], channel_of(st, "work", "c")["in_flight_count"],
                    channel_of(st, "work", "c")["deferred_count"], channel_of(st, "later", "c")["depth"],
                    channel_of(st, "later", "c")["deferred_count"]) == (5, 1, 1, 2, 1),
        "work/c depth 5 in flight 1 deferred 1, later/c depth 2 deferred 1")
    w.close()
    # SIGTERM with the consumer still connected: nsqd closes it, then flushes (D10)
    return {
        "queues": {"work": [], "work:c": msgs[3:] + [msgs[2], msgs[1]], "later": [],
                   "later:c": now + [deferred]},
        "keep_open": c,
        "steps": [
            "POST /channel/create work/c; MPUB work x8",
            "SUB work c, RDY 1: FIN the 1st, REQ the 2nd with 600000 ms delay, keep the 3rd in flight",
            "POST /channel/create later/c; PUB later, DPUB later 600000 ms, PUB later",
            "SIGTERM with the consumer still connected",
        ],
    }


def case_memory_flush(n):
    """With a memory queue (--mem-queue-size=4), what nsqd holds in memory at shutdown
    goes to the end of the diskqueue (D10): a channel-less topic keeps its first 4
    messages in memory, the rest on disk; the channel c of `mixed` gets the first 4 into
    its memory queue through the topic pump, the rest on disk."""
    w = Wire(n.tcp)
    solo = bodies("solo", 10)
    for b in solo:
        w.pub("solo", b)
    n.create_channel("mixed", "c")
    mixed = bodies("mixed", 10)
    for b in mixed:
        w.pub("mixed", b)
        # one at a time through the topic pump, so the channel's memory queue fills first
        n.wait_stats(lambda st: channel_of(st, "mixed", "c")["depth"] == mixed.index(b) + 1, "mixed/c depth")
    w.close()
    return {
        "queues": {"solo": solo[4:] + solo[:4], "mixed": [], "mixed:c": mixed[4:] + mixed[:4]},
        "steps": [
            "PUB solo x10 (no channel; 4 stay in the topic's memory queue)",
            "POST /channel/create mixed/c; PUB mixed x10 one at a time (4 in c's memory queue)",
            "SIGTERM (memory queues are written after the disk backlog)",
        ],
    }


MEM0 = ["--mem-queue-size=0"]
CASES = {
    "topic-without-channel": (MEM0, case_topic_without_channel),
    "paused": (MEM0 + ["--max-bytes-per-file=1024"], case_paused),
    "segments-midfile": (MEM0 + ["--max-bytes-per-file=2048"], case_segments_midfile),
    "shutdown-inflight-deferred": (MEM0, case_shutdown_inflight_deferred),
    "memory-flush": (["--mem-queue-size=4"], case_memory_flush),
}


# ----------------------------------------------------------------------------- reading nsqd's files


def read_meta(path):
    """D5: depth, readFileNum,readPos, writeFileNum,writePos."""
    with open(path) as f:
        text = f.read()
    depth, rest = text.split("\n", 1)
    (rf, rp), (wf, wp) = (tuple(int(x) for x in line.split(",")) for line in rest.strip().split("\n"))
    return {"depth": int(depth), "read_file_num": rf, "read_pos": rp, "write_file_num": wf, "write_pos": wp}


def records(data):
    """D4/T6 records of one segment: (offset, id, timestamp, attempts, body)."""
    out, off = [], 0
    while off < len(data):
        (size,) = struct.unpack(">i", data[off:off + 4])
        payload = data[off + 4:off + 4 + size]
        assert len(payload) == size >= 26, (off, size)
        ts, attempts = struct.unpack(">qH", payload[:10])
        out.append((off, payload[10:26], ts, attempts, payload[26:]))
        off += 4 + size
    return out


def read_queue(data_path, name):
    """The unread messages of one diskqueue, in order (from the read position of the read
    file to the end of the write file)."""
    meta = read_meta(os.path.join(data_path, f"{name}.diskqueue.meta.dat"))
    msgs = []
    for num in range(meta["read_file_num"], meta["write_file_num"] + 1):
        path = os.path.join(data_path, f"{name}.diskqueue.{num:06d}.dat")
        if not os.path.exists(path):
            assert num == meta["write_file_num"] and meta["write_pos"] == 0, path
            continue
        with open(path, "rb") as f:
            data = f.read()
        if num == meta["write_file_num"]:
            assert len(data) == meta["write_pos"], (path, len(data), meta)
        start = meta["read_pos"] if num == meta["read_file_num"] else 0
        for off, mid, ts, attempts, b in records(data):
            if off >= start:
                msgs.append({"id": mid.decode(), "timestamp": ts, "attempts": attempts,
                             "body_b64": base64.b64encode(b).decode(), "file": num, "offset": off})
    assert len(msgs) == meta["depth"], (name, len(msgs), meta)
    return meta, msgs


def files_of(data_path):
    out = {}
    for name in sorted(os.listdir(data_path)):
        with open(os.path.join(data_path, name), "rb") as f:
            data = f.read()
        out[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return out


# ----------------------------------------------------------------------------- manifest


def expectations(nsqd_dat, queues):
    """What a broker started on the data path shows and delivers, as nsqd 1.3.0 does:
    a channel delivers its own queue, then (unless the topic is paused: after
    /topic/unpause) the topic's queue, which the topic pump copies to every channel; a
    paused channel delivers nothing before /channel/unpause; the first channel of a
    topic without channels gets the topic's queue."""
    stats, consume = {}, []
    for t in nsqd_dat["topics"]:
        topic, tpaused, chans = t["name"], t["paused"], t["channels"] or []
        tq = [m["id"] for m in queues.get(topic, {"messages": []})["messages"]]
        moved = bool(chans) and not tpaused
        st = {"paused": tpaused, "depth": 0 if moved else len(tq), "channels": {}}
        for c in chans:
            cq = [m["id"] for m in queues.get(f"{topic}:{c['name']}", {"messages": []})["messages"]]
            st["channels"][c["name"]] = {"paused": c["paused"], "depth": len(cq) + (len(tq) if moved else 0)}
            consume.append({"topic": topic, "channel": c["name"], "new_channel": False,
                            "channel_paused": c["paused"], "topic_paused": tpaused,
                            "channel_queue": cq, "topic_queue": tq})
        if not chans:
            consume.append({"topic": topic, "channel": "first", "new_channel": True, "channel_paused": False,
                            "topic_paused": tpaused, "channel_queue": [], "topic_queue": tq})
        stats[topic] = st
    return stats, consume


def generate(binary, out_dir, name):
    flags, fn = CASES[name]
    work = tempfile.mkdtemp(prefix=f"nsqd-{name}-")
    data_path = os.path.join(work, "data")
    os.mkdir(data_path)
    n = Nsqd(binary, data_path, flags, os.path.join(work, "nsqd.log"))
    try:
        plan = fn(n)
        n.stop()
    except BaseException:
        n.proc.kill()
        sys.stderr.write(open(os.path.join(work, "nsqd.log"), errors="replace").read()[-3000:])
        raise
    if "keep_open" in plan:
        plan["keep_open"].close()

    with open(os.path.join(data_path, "nsqd.dat")) as f:
        nsqd_dat = json.load(f)
    queues = {}
    for q, want in plan["queues"].items():
        meta, msgs = read_queue(data_path, q)
        got = [base64.b64decode(m["body_b64"]) for m in msgs]
        assert got == want, f"{name}/{q}: nsqd stored {len(got)} messages, the case expected {len(want)}"
        queues[q] = {**meta, "messages": msgs}
    names = {f.split(".diskqueue.")[0] for f in os.listdir(data_path) if ".diskqueue." in f}
    assert names == set(plan["queues"]), (names, set(plan["queues"]))
    stats, consume = expectations(nsqd_dat, queues)

    dest = os.path.join(out_dir, name)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(data_path, os.path.join(dest, "data"))
    if os.environ.get("KEEP_NSQD_LOG"):
        print(f"{name}: nsqd log kept in {work}/nsqd.log")
    else:
        shutil.rmtree(work)
    manifest = {
        "case": name,
        "description": " ".join(fn.__doc__.split()),
        "nsqd": "nsqd v1.3.0 (built from source, go1.23.5), scripts/make-nsqd-datapaths.py",
        "nsqd_flags": flags,
        "steps": plan["steps"],
        "nsqd_dat": nsqd_dat,
        "files": files_of(os.path.join(dest, "data")),
        "queues": queues,
        "stats": stats,
        "consume": consume,
        "delivery_rules": " ".join(expectations.__doc__.split()) + (
            " Every message is delivered with its stored id and timestamp and attempts + 1;"
            " within channel_queue and within topic_queue the order is the order given;"
            " ids are unique within one channel."),
    }
    with open(os.path.join(dest, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{name}: " + ", ".join(f"{q}={len(v['messages'])}" for q, v in queues.items()))


# ----------------------------------------------------------------------------- compare / verify


def masked(path):
    """A segment's bytes with every record's timestamp and id zeroed."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    for off, *_ in records(bytes(data)):
        data[off + 4:off + 4 + 8] = bytes(8)
        data[off + 4 + 10:off + 4 + 26] = bytes(16)
    return bytes(data)


def compare(a, b):
    same = True
    for case in sorted(os.listdir(a)):
        da, db = os.path.join(a, case, "data"), os.path.join(b, case, "data")
        if not os.path.isdir(da):
            continue
        fa, fb = sorted(os.listdir(da)), sorted(os.listdir(db))
        # go-diskqueue renames a segment to *.bad when its reader meets EOF in a file the
        # writer has just left (a race, D8): which ones differs from run to run
        bad_a, bad_b = [f for f in fa if f.endswith(".bad")], [f for f in fb if f.endswith(".bad")]
        if bad_a or bad_b:
            print(f"{case}: *.bad files (race-dependent): {bad_a} vs {bad_b}")
        fa, fb = [f for f in fa if f not in bad_a], [f for f in fb if f not in bad_b]
        if fa != fb:
            print(f"{case}: different files: {fa} vs {fb}")
            same = False
            continue
        for f in fa:
            pa, pb = os.path.join(da, f), os.path.join(db, f)
            if ".diskqueue.0" in f:
                eq, how = masked(pa) == masked(pb), "equal except ids and timestamps"
            else:
                eq, how = open(pa, "rb").read() == open(pb, "rb").read(), "byte-identical"
            print(f"{case}/{f}: {how if eq else 'DIFFERENT'}")
            same &= eq
    return same


def verify(binary, out_dir):
    """nsqd itself, started on a copy of each case, shows the manifest's /stats and
    delivers exactly its messages."""
    for case in sorted(os.listdir(out_dir)):
        mf = os.path.join(out_dir, case, "manifest.json")
        if not os.path.exists(mf):
            continue
        with open(mf) as f:
            manifest = json.load(f)
        work = tempfile.mkdtemp(prefix=f"nsqd-verify-{case}-")
        data_path = os.path.join(work, "data")
        shutil.copytree(os.path.join(out_dir, case, "data"), data_path)
        n = Nsqd(binary, data_path, ["--mem-queue-size=0"], os.path.join(work, "nsqd.log"))
        try:
            verify_case(n, manifest)
        finally:
            n.stop()
            shutil.rmtree(work)
        print(f"verified with nsqd: {case}")


def verify_case(n, manifest):
    by_id = {}
    for q in manifest["queues"].values():
        for m in q["messages"]:
            by_id[m["id"]] = m

    def shows(st):
        for topic, t in manifest["stats"].items():
            ts = topic_of(st, topic)
            if ts is None or (ts["paused"], ts["depth"]) != (t["paused"], t["depth"]):
                return False
            for ch, c in t["channels"].items():
                cs = channel_of(st, topic, ch)
                if cs is None or (cs["paused"], cs["depth"]) != (c["paused"], c["depth"]):
                    return False
        return True

    def take(w, count):
        ids = []
        for _ in range(count):
            m = w.message()
            want = by_id[m["id"].decode()]
            assert base64.b64decode(want["body_b64"]) == m["body"]
            assert (m["timestamp"], m["attempts"]) == (want["timestamp"], want["attempts"] + 1)
            w.cmd(f"FIN {m['id'].decode()}")
            ids.append(m["id"].decode())
        return ids

    n.wait_stats(shows, "manifest stats")
    for e in manifest["consume"]:
        w = Wire(n.tcp)
        w.sub(e["topic"], e["channel"])
        w.cmd("RDY 1000")
        if e["channel_paused"]:
            assert w.quiet(0.5)
            n.post(f"/channel/unpause?topic={e['topic']}&channel={e['channel']}")
        first = e["channel_queue"] if e["topic_paused"] else e["channel_queue"] + e["topic_queue"]
        got = take(w, len(first))
        assert sorted(got) == sorted(first), (e["topic"], e["channel"], len(got), len(first))
        if e["topic_paused"]:
            assert w.quiet(0.5)
            n.post(f"/topic/unpause?topic={e['topic']}")
            got = take(w, len(e["topic_queue"]))
            assert got == e["topic_queue"], (e["topic"], e["channel"])
        assert w.quiet(0.3)
        w.close()

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("nsqd")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--case", action="append", choices=sorted(CASES))
    ap.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"))
    ap.add_argument("--verify", metavar="DIR")
    args = ap.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare) else 1)
    if args.verify:
        verify(args.nsqd, args.verify)
        return
    if not args.out:
        ap.error("OUTDIR is required")
    os.makedirs(args.out, exist_ok=True)
    for name in args.case or sorted(CASES):
        generate(args.nsqd, args.out, name)


if __name__ == "__main__":
    main()
