#!/usr/bin/env python3
"""Hand check of `ringsqd export-nsqd` against a real nsqd 1.3.0 (not run in CI).

0. nsqd 1.3.0 writes the data path first: topic `legacy` (channel c), 3000
   messages, 500 FINished, stopped; ringsqd then takes it over and FINishes 500
   more before step 1 (so the export starts inside nsqd's own files).
1. ringsqd runs on that data path: topic `orders` (channels billing, audit),
   N messages of varied sizes; billing FINishes 1000, REQs 5 for 30 min, holds 3
   in flight at shutdown; 2 DPUBs of 1 h; topic `solo` (no channel, paused) gets
   100; an ephemeral topic and channel get messages too; SIGTERM.
2. `ringsqd export-nsqd --max-bytes-per-file=...` (small, so queues span files).
3. nsqd 1.3.0 starts on the data path: /stats depths, then every channel is
   consumed (FIN) and the bodies compared with what must arrive, exactly once.
4. nsqd is stopped and started again: every depth is 0 (nothing comes back).

Usage: scripts/export_nsqd_roundtrip.py [--ringsqd target/release/ringsqd]
       [--nsqd /work/ref/bin/nsqd] [--messages 20000] [--max-bytes-per-file 1048576]
"""

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import helpers.broker  # noqa: E402
from helpers.broker import Broker, free_port  # noqa: E402
from helpers.http_api import post_ok, stats  # noqa: E402
from helpers.wait import wait_channel, wait_topic  # noqa: E402
from helpers.wire import OK, Conn, RawConsumer, publish_all  # noqa: E402


class Nsqd:
    """A real nsqd on loopback ports (same attributes the helpers use)."""

    def __init__(self, binary, data_dir, log_path, *extra):
        self.tcp_port, self.http_port = free_port(), free_port()
        self.tcp_address = f"127.0.0.1:{self.tcp_port}"
        self.cmd = [
            binary,
            f"-data-path={data_dir}",
            f"-tcp-address={self.tcp_address}",
            f"-http-address=127.0.0.1:{self.http_port}",
            "-https-address=",
            *extra,
        ]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while True:
            try:
                stats(self)
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"nsqd did not start; see {log_path}")
                time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        self.log.close()
        return rc


def say(*a):
    print(*a, flush=True)


def finish_some(broker, n, left):
    """Takes `n` messages of legacy/c, FINishes them, and waits until `left` remain."""
    cons = RawConsumer(broker, "legacy", "c", rdy=n, fin=False)
    taken = cons.take(n, quiet=0.5)
    cons.rdy(0)
    cons.finish([m.id for m in taken])
    wait_channel(broker, "legacy", "c", depth=left, in_flight_count=0)
    cons.close()
    return taken


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ringsqd", default=os.path.join(HERE, "..", "target", "release", "ringsqd"))
    ap.add_argument("--nsqd", default="/work/ref/bin/nsqd")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--max-bytes-per-file", type=int, default=1 << 20)
    args = ap.parse_args()
    os.environ["RINGSQD_BIN"] = os.path.abspath(args.ringsqd)
    helpers.broker.BIN = os.environ["RINGSQD_BIN"]
    work = tempfile.mkdtemp(prefix="ringsq-roundtrip-")
    data = os.path.join(work, "data")
    os.mkdir(data)
    rng = random.Random(12)
    n = args.messages
    bodies = [b"orders-%06d|" % i + rng.randbytes(rng.choice([0, 10, 100, 1000, 5000])) for i in range(n)]
    solo = [b"solo-%04d" % i for i in range(100)]
    dpubs = [b"dpub-1", b"dpub-2"]

    log = os.path.join(work, "nsqd.log")
    legacy = [b"legacy-%05d|" % i + rng.randbytes(rng.choice([0, 50, 500])) for i in range(3000)]
    say(f"$ nsqd -data-path={data} -max-bytes-per-file=65536   # nsqd's own data first")
    q = Nsqd(args.nsqd, data, log, "-max-bytes-per-file=65536")
    post_ok(q, "/topic/create?topic=legacy")
    post_ok(q, "/channel/create?topic=legacy&channel=c")
    publish_all(q, "legacy", legacy)
    first = finish_some(q, 500, left=2500)
    say(f"  legacy: 3000 published, 500 FIN; nsqd exit {q.stop()}; nsqd files: "
        f"{len([x for x in os.listdir(data) if x.startswith('legacy:c.diskqueue.0')])}")

    say(f"$ ringsqd --data-path={data} --cores=2   # takes nsqd's files over, then the scenario")
    b = Broker(data_dir=data, log_dir=work, cores=2)
    wait_channel(b, "legacy", "c", depth=2500)
    second = finish_some(b, 500, left=2000)
    gone = {m.body for m in first + second}
    say("  legacy: 500 more FIN by ringsqd")
    post_ok(b, "/topic/create?topic=scratch%23ephemeral")
    post_ok(b, "/channel/create?topic=scratch%23ephemeral&channel=c")
    post_ok(b, "/topic/create?topic=orders")
    for ch in ("billing", "audit"):
        post_ok(b, f"/channel/create?topic=orders&channel={ch}")
    eph = RawConsumer(b, "orders", "tail#ephemeral", rdy=0)
    publish_all(b, "scratch#ephemeral", [b"ephemeral"] * 10)
    publish_all(b, "orders", bodies)
    publish_all(b, "solo", solo)
    post_ok(b, "/topic/pause?topic=solo")
    wait_channel(b, "orders", "billing", depth=n)
    c = RawConsumer(b, "orders", "billing", rdy=1008, fin=False)
    got = c.take(1008, quiet=0.5)
    c.rdy(0)
    c.finish([m.id for m in got[:1000]])
    for m in got[1000:1005]:
        c.req(m.id, 30 * 60 * 1000)
    p = Conn(b)
    for d in dpubs:
        p.cmd(f"DPUB orders {3600 * 1000}", d)
        assert p.read_frame() == OK
    wait_channel(b, "orders", "billing", in_flight_count=3, deferred_count=7)
    say(f"  published {n} to orders, 100 to solo (paused, no channel), 10 to scratch#ephemeral")
    say("  billing: 1000 FIN, 5 REQ 30min, 3 in flight at shutdown; 2 DPUB 1h")
    assert b.stop() == 0
    for x in (c, p, eph):
        x.close()
    finished = {m.body for m in got[:1000]}

    cmd = [args.ringsqd, "export-nsqd", f"--data-path={data}", f"--max-bytes-per-file={args.max_bytes_per_file}"]
    say("$ " + " ".join(cmd))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    say(r.stdout.rstrip())
    say(f"  exit {r.returncode} in {time.time() - t0:.2f}s" + (f"; stderr: {r.stderr}" if r.stderr else ""))
    assert r.returncode == 0
    with open(os.path.join(data, "nsqd.dat")) as f:
        say("  nsqd.dat: " + f.read())

    say(f"$ {args.nsqd} -data-path={data} ...")
    q = Nsqd(args.nsqd, data, log)
    want = {
        "billing": collections.Counter(x for x in bodies if x not in finished) + collections.Counter(dpubs),
        "audit": collections.Counter(bodies + dpubs),
    }
    want_legacy = collections.Counter(x for x in legacy if x not in gone)
    for ch, w in want.items():
        wait_channel(q, "orders", ch, depth=sum(w.values()))
    wait_channel(q, "legacy", "c", depth=2000)
    wait_topic(q, "solo", depth=100, paused=True)
    say(f"  nsqd /stats: billing depth {sum(want['billing'].values())}, audit {sum(want['audit'].values())}, "
        "solo 100 (paused), as exported")
    ok = True
    for ch, w in want.items():
        cons = RawConsumer(q, "orders", ch, rdy=2500)
        msgs = cons.take(sum(w.values()), quiet=2.0, timeout=120)
        cons.close()
        g = collections.Counter(m.body for m in msgs)
        missing, extra = sum((w - g).values()), sum((g - w).values())
        say(f"  orders/{ch}: {len(msgs)} delivered, {sum(w.values())} expected, missing {missing}, "
            f"duplicate/extra {extra}")
        ok &= missing == 0 and extra == 0
    cons = RawConsumer(q, "legacy", "c", rdy=2500)
    msgs = cons.take(2000, quiet=2.0, timeout=120)
    cons.close()
    g = collections.Counter(m.body for m in msgs)
    missing, extra = sum((want_legacy - g).values()), sum((g - want_legacy).values())
    say(f"  legacy/c: {len(msgs)} delivered, 2000 expected, missing {missing}, duplicate/extra {extra}")
    ok &= missing == 0 and extra == 0
    post_ok(q, "/channel/create?topic=solo&channel=c")
    post_ok(q, "/topic/unpause?topic=solo")
    cons = RawConsumer(q, "solo", "c", rdy=200)
    msgs = [m.body for m in cons.take(100, quiet=2.0)]
    cons.close()
    say(f"  solo/c: {len(msgs)} delivered in order: {msgs == solo}")
    ok &= msgs == solo
    for ch in ("billing", "audit"):
        wait_channel(q, "orders", ch, depth=0, in_flight_count=0)
    wait_channel(q, "solo", "c", depth=0, in_flight_count=0)
    wait_channel(q, "legacy", "c", depth=0, in_flight_count=0)
    say(f"  nsqd exit {q.stop()}")

    say("$ nsqd restarted on the same data path")
    q = Nsqd(args.nsqd, data, log)
    depths = {(t["topic_name"], c["channel_name"]): c["depth"] for t in stats(q)["topics"] for c in t["channels"]}
    say(f"  depths after restart: {depths}")
    ok &= all(v == 0 for v in depths.values())
    q.stop()
    with open(log, "rb") as f:
        bad = [ln for ln in f.read().decode(errors="replace").splitlines() if "ERROR" in ln or "corrupt" in ln]
    say(f"  nsqd log lines with ERROR/corrupt: {len(bad)}" + "".join("\n    " + ln for ln in bad[:5]))
    ok &= not bad
    say("RESULT: " + ("every message delivered exactly once" if ok else "MISMATCH"))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
