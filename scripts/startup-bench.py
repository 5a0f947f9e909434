#!/usr/bin/env python3
"""Start-up time against backlog size, ringsqd and nsqd 1.3.0 (issue 12 item 2).

    scripts/startup-bench.py [--ringsqd target/release/ringsqd] [--nsqd /work/ref/bin/nsqd]
                             [--sizes 1,5,10] [--runs 3] [--dir /work/bigdata/startup-bench] [--out FILE]
                             [--only ringsqd|nsqd] [--label NAME] [--no-kill9] [--cold]

For each broker a backlog of 1 KiB messages in one topic with one channel
(--mem-queue-size=0: everything through the disk queue) is grown to each size in GB
(1e9 bytes of bodies) with pipelined MPUBs, the broker is stopped cleanly (SIGTERM), and
then started `--runs` times: the time from exec to the first /stats answer showing the
channel's exact depth is measured, and the broker stopped cleanly again. The median is
reported. For ringsqd a kill -9 variant follows at each size: start, publish 64 MiB more
(default --sync-every/--sync-timeout, so part of it is not synced yet), kill -9 right
after the last OK, and time exec -> first /stats answer (whose depth is then final: no
listener accepts before every queue is open); the depth found is reported too.

Data goes to --dir/<broker> (default /work/bigdata/startup-bench) and is deleted at the end. Plain sockets only (no packages).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request

TOPIC = "startup"
CHANNEL = "c"
BODY = 1024
BATCH = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, name, binary, data_dir, extra=()):
        self.name = name
        self.binary = binary
        self.data_dir = data_dir
        self.extra = list(extra)
        self.proc = None

    def start(self):
        self.tcp = free_port()
        self.http = free_port()
        cmd = [
            self.binary,
            f"--tcp-address=127.0.0.1:{self.tcp}",
            f"--http-address=127.0.0.1:{self.http}",
            f"--data-path={self.data_dir}",
            "--mem-queue-size=0",
        ] + self.extra
        log = open(os.path.join(os.path.dirname(self.data_dir), f"{self.name}.log"), "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return started

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=600)
        if sig == signal.SIGTERM and rc != 0:
            raise RuntimeError(f"{self.name} exited with {rc}")

    def request(self, method, path, timeout=600):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def depth(self, timeout=600, with_topic=False):
        """The channel's depth from /stats (plus the topic's own, not yet handed to the
        channel, `with_topic`); waits for the listener (retries refused
        connections, a connection in the listen backlog waits for the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                doc = json.loads(self.request("GET", f"/stats?format=json&topic={TOPIC}", timeout))
                break
            except (ConnectionError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        doc = doc.get("data", doc)
        for t in doc.get("topics") or []:
            if t["topic_name"] == TOPIC:
                for c in t.get("channels") or []:
                    if c["channel_name"] == CHANNEL:
                        return c["depth"] + (t["depth"] if with_topic else 0)
        return None


def mpub_frame(n):
    body = b"x" * BODY
    payload = struct.pack(">i", n) + (struct.pack(">i", BODY) + body) * n
    return f"MPUB {TOPIC}\n".encode() + struct.pack(">i", len(payload)) + payload


def read_frame(sock, buf):
    while len(buf) < 4 or len(buf) < 4 + struct.unpack_from(">i", buf)[0]:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    size, ftype = struct.unpack_from(">ii", buf)
    data = bytes(buf[8:4 + size])
    del buf[:4 + size]
    return ftype, data


def await_oks(sock, buf, n, errors):
    """Reads `n` OKs (answering heartbeats); False, with the error kept, on anything else."""
    while n:
        ft, data = read_frame(sock, buf)
        if data == b"_heartbeat_":
            sock.sendall(b"NOP\n")
            continue
        if (ft, data) != (0, b"OK"):
            errors.append(data)
            return False
        n -= 1
    return True


def publish(b, messages, conns=4, window=8):
    """`messages` 1 KiB messages over `conns` pipelined connections; returns when every
    MPUB has been answered OK."""
    frame = mpub_frame(BATCH)
    batches = messages // BATCH
    errors = []

    def run(k):
        s = socket.create_connection(("127.0.0.1", b.tcp), timeout=600)
        s.sendall(b"  V2")
        buf = bytearray()
        pending = 0
        try:
            for _ in range(k, batches, conns):
                s.sendall(frame)
                pending += 1
                if pending >= window and not await_oks(s, buf, pending - window + 1, errors):
                    return
                pending = min(pending, window - 1)
            if not await_oks(s, buf, pending, errors):
                return
        finally:
            s.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"publish failed: {errors[:3]}")
    return batches * BATCH


def grow(b, depth, target):
    """Start, publish up to `target` messages, wait for the depth, stop cleanly."""
    b.start()
    b.depth()
    b.request("POST", f"/topic/create?topic={TOPIC}")
    b.request("POST", f"/channel/create?topic={TOPIC}&channel={CHANNEL}")
    t0 = time.monotonic()
    if target > depth:
        depth += publish(b, target - depth)
    while b.depth() != depth:
        time.sleep(0.1)
    took = time.monotonic() - t0
    b.stop()
    return depth, took


def timed_start(b, want):
    """Seconds from exec to /stats showing depth `want` (None: the first answer, with
    the topic's depth added)."""
    started = b.start()
    while True:
        d = b.depth(with_topic=want is None)
        if want is None or d == want:
            return time.monotonic() - started, d
        time.sleep(0.002)


def drop_caches(enabled):
    if enabled:
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)


def bench(name, binary, sizes, runs, root, out, kill9, cold):
    data_dir = os.path.join(root, name, "data")
    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    os.makedirs(data_dir)
    b = Broker(name, binary, data_dir)
    depth = 0
    rows = []
    try:
        for gb in sizes:
            target = int(gb * 1e9) // BODY // BATCH * BATCH
            depth, fill = grow(b, depth, target)
            du = subprocess.run(["du", "-sb", data_dir], capture_output=True, text=True).stdout.split()[0]
            times = []
            for _ in range(runs):
                drop_caches(cold)
                took, _ = timed_start(b, depth)
                times.append(took)
                b.stop()
            row = {"broker": name, "gb": gb, "messages": depth, "disk_bytes": int(du), "fill_s": round(fill, 1),
                   "clean_start_s": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3)}
            if kill9:
                k9 = []
                for _ in range(runs):
                    b.start()
                    b.depth()
                    added = publish(b, 64 * 1000)
                    b.stop(signal.SIGKILL)
                    drop_caches(cold)
                    took, found = timed_start(b, None)
                    k9.append((took, found - depth, added))
                    # The topic hands what it kept to the channel.
                    while b.depth() != found:
                        time.sleep(0.05)
                    depth = found
                    b.stop()
                row["kill9_start_s"] = [round(t, 3) for t, _, _ in k9]
                row["kill9_median_s"] = round(statistics.median(t for t, _, _ in k9), 3)
                row["kill9_kept_of_added"] = [f"{kept}/{added}" for _, kept, added in k9]
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
            out.flush()
    finally:
        if b.proc is not None and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ringsqd", default="target/release/ringsqd")
    ap.add_argument("--nsqd", default="/work/ref/bin/nsqd")
    ap.add_argument("--sizes", default="1,5,10")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/work/bigdata/startup-bench")
    ap.add_argument("--out", default="/dev/stdout")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each start (root)")
    ap.add_argument("--only", choices=["ringsqd", "nsqd"])
    ap.add_argument("--label", default="ringsqd", help="name of the ringsqd build in the results")
    ap.add_argument("--no-kill9", action="store_true", help="skip ringsqd's kill -9 variant")
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    brokers = []
    if args.only in (None, "ringsqd"):
        brokers.append((args.label, args.ringsqd, not args.no_kill9))
    if args.only in (None, "nsqd"):
        if os.path.exists(args.nsqd):
            brokers.append(("nsqd", args.nsqd, False))
        else:
            print(f"no nsqd at {args.nsqd}: measuring ringsqd only", file=sys.stderr)
    with open(args.out, "a") as out:
        for name, binary, kill9 in brokers:
            bench(name, os.path.abspath(binary), sizes, args.runs, args.dir, out, kill9, args.cold)


if __name__ == "__main__":
    main()
