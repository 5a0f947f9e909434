#!/usr/bin/env python3
"""nsqd's start-up time against its backlog (the nsqd side of issue 12's restart bench).

Usage:
    nsqd-startup-bench.py fill NSQD_BIN DATA_PATH COUNT [--size=1024]
    nsqd-startup-bench.py measure NSQD_BIN DATA_PATH [--runs=5]

fill: starts NSQD_BIN with --mem-queue-size=0 on an empty DATA_PATH (loopback, free
ports), creates topic `t` and channel `c`, publishes COUNT messages of --size bytes
(MPUB of 500, pipelined) and waits until c holds all of them (the topic pump has moved
them from t's diskqueue to c's), then stops nsqd with SIGTERM (clean shutdown, D10).

measure: runs NSQD_BIN on DATA_PATH `--runs` times, each time measuring the time from
exec until `/stats` answers with c's depth equal to the backlog (polled without pause),
then SIGTERM. Prints each run and min/median/max. The backlog is never consumed, so the
data path stays the same between runs.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

FLAGS = ["--mem-queue-size=0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, data_path, log):
    tcp, http_port = free_port(), free_port()
    cmd = [binary, f"--data-path={data_path}", f"--tcp-address=127.0.0.1:{tcp}",
           f"--http-address=127.0.0.1:{http_port}", "--broadcast-address=127.0.0.1", *FLAGS]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return proc, t0, tcp, http_port


def channel_depth(http_port):
    """c's depth from /stats, or None while nsqd does not answer."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    try:
        conn.request("GET", "/stats?format=json&topic=t&channel=c&include_clients=false")
        r = conn.getresponse()
        st = json.loads(r.read())
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    for t in st.get("topics") or []:
        for c in t.get("channels") or []:
            if t["topic_name"] == "t" and c["channel_name"] == "c":
                return c["depth"]
    return None


def post(http_port, path):
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    conn.request("POST", path, body=b"")
    r = conn.getresponse()
    assert r.status == 200, (path, r.status, r.read())
    conn.close()


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=600)
    assert rc == 0, rc


def fill(binary, data_path, count, size):
    os.makedirs(data_path, exist_ok=True)
    assert not os.listdir(data_path), f"{data_path} is not empty"
    with open(data_path.rstrip("/") + ".fill.log", "wb") as log:
        proc, _, tcp, http_port = start(binary, data_path, log)
        while channel_depth(http_port) is None:
            try:
                post(http_port, "/topic/create?topic=t")
                post(http_port, "/channel/create?topic=t&channel=c")
            except OSError:
                time.sleep(0.05)
        sock = socket.create_connection(("127.0.0.1", tcp))
        sock.sendall(b"  V2")
        body = bytes(range(256)) * (size // 256) + bytes(size % 256)
        batch = 500
        cmd = b"MPUB t\n" + struct.pack(">ii", 4 + batch * (4 + size), batch) + (struct.pack(">i", size) + body) * batch
        sent = pending = 0
        buf = b""
        t0 = time.time()

        def read_ok():
            """Read one OK, answering heartbeats (nsqd sends them to producers too)."""
            nonlocal buf
            while True:
                while len(buf) < 4 or len(buf) < 4 + struct.unpack(">i", buf[:4])[0]:
                    chunk = sock.recv(65536)
                    assert chunk, "nsqd closed the connection"
                    buf += chunk
                size = struct.unpack(">i", buf[:4])[0]
                frame, buf = buf[4:4 + size], buf[4 + size:]
                if frame == struct.pack(">i", 0) + b"_heartbeat_":
                    sock.sendall(b"NOP\n")
                    continue
                assert frame == struct.pack(">i", 0) + b"OK", frame[:60]
                return

        while sent < count:
            assert count % batch == 0, "COUNT must be a multiple of 500"
            sock.sendall(cmd)
            sent += batch
            pending += 1
            if pending >= 16:
                read_ok()
                pending -= 1
        while pending:
            read_ok()
            pending -= 1
        sock.close()
        print(f"published {count} x {size} B in {time.time() - t0:.1f} s; waiting for the topic pump")
        while channel_depth(http_port) != count:
            time.sleep(0.5)
        stop(proc)
    total = sum(os.path.getsize(os.path.join(data_path, f)) for f in os.listdir(data_path))
    print(f"filled {data_path}: {count} messages, {total / 1e9:.2f} GB on disk, {time.time() - t0:.1f} s")


def measure(binary, data_path, runs):
    with open(os.path.join(data_path, "t:c.diskqueue.meta.dat")) as f:
        want = int(f.readline())
    times = []
    with open(data_path.rstrip("/") + ".measure.log", "wb") as log:
        i, retries = 0, 0
        while i < runs:
            proc, t0, _, http_port = start(binary, data_path, log)
            while True:
                d = channel_depth(http_port)
                if d == want:
                    took = time.perf_counter() - t0
                    break
                if proc.poll() is not None:
                    break
            if proc.returncode is not None:
                # a free port taken by someone else in between: bind fails, try again
                retries += 1
                if retries > 3:
                    sys.exit(f"nsqd exited with {proc.returncode}")
                continue
            i += 1
            # nsqd (go-svc) installs its SIGTERM handler only after it has started
            # serving: a SIGTERM in its first milliseconds kills it without a flush
            time.sleep(0.5)
            stop(proc)
            times.append(took)
            print(f"run {i}: /stats shows depth {want} {took * 1000:.1f} ms after exec")
    print(f"min {min(times) * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms over {runs} runs")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["fill", "measure"])
    ap.add_argument("nsqd")
    ap.add_argument("data_path")
    ap.add_argument("count", nargs="?", type=int)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if a.mode == "fill":
        fill(a.nsqd, a.data_path, a.count, a.size)
    else:
        measure(a.nsqd, a.data_path, a.runs)


if __name__ == "__main__":
    main()
