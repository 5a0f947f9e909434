"""Start-up time independent of the backlog (issue 12 item 2; D5, D8, D10, D11, H1).

The disk queue's meta file (format 2) holds the depth counted up to the end that was
synced when it was saved; start-up trusts that part and verifies with the crc only what
lies past it (nothing after a clean shutdown; the unsynced tail after kill -9). These
tests build a backlog large enough that scanning it, as start-up did before, takes
seconds on CI (1 M records of 1 KiB), and assert bounds such a scan breaks by a wide
margin. A format-1 meta (no depth) still opens, by scanning that queue. /ping (and
every listener) answers only once every core has opened its queues.

Row IDs refer to /work/shared/nsqd-reference.md.
"""

import os
import re
import struct
import threading
import time
import zlib

import pytest

from helpers.disk import finish_then_stop, log_lines_with
from helpers.http_api import channel_stats, post_ok, request
from helpers.wait import wait_channel, wait_for
from helpers.wire import cmd_bytes, Conn, mpub_body, publish_all, RawConsumer

ARGS = ["--mem-queue-size=0"]
BIG = 1_000_000
BATCH = 1000
# A full scan of BIG 1 KiB records took 3.5 s (clean) and 5.3 s (kill -9) on 2 cores (the
# binary before meta format 2); with the meta: 0.03 s and 0.16 s.
START_BOUND = 1.0
META_RE = re.compile(r"^(?P<queue>.+)\.ringsq\.meta\.dat$")


def fill_backlog(b, topic, n, size=100):
    """`n` copies of one `size`-byte body into `topic` (channel `c` made first), sent as
    pipelined MPUBs of BATCH over two connections; waits for the depth."""
    post_ok(b, f"/topic/create?topic={topic}")
    post_ok(b, f"/channel/create?topic={topic}&channel=c")
    frame = cmd_bytes(f"MPUB {topic}", mpub_body([b"m" * size] * BATCH))
    batches = n // BATCH
    errors = []

    def send(k):
        c = Conn(b, timeout=60)
        try:
            mine = range(k, batches, 2)
            window = 0
            for _ in mine:
                c.send(frame)
                window += 1
                if window >= 16:
                    fr = c.read_frame()
                    if fr != (0, b"OK"):
                        errors.append(fr)
                        return
                    window -= 1
            while window:
                fr = c.read_frame()
                if fr != (0, b"OK"):
                    errors.append(fr)
                    return
                window -= 1
        finally:
            c.close()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    wait_channel(b, topic, "c", depth=n, timeout=120)


def time_to_depth(b, topic, depth, started, timeout=120):
    """Seconds from `started` until /stats shows the channel's exact depth."""

    def shown():
        try:
            ch = channel_stats(b, topic, "c")
        except OSError:
            return None
        return ch if ch is not None and ch["depth"] == depth else None

    ch = wait_for(shown, timeout=timeout, interval=0.01, what=f"{topic}/c depth {depth}")
    assert ch["backend_depth"] == depth, ch
    return time.time() - started


def restart_timed(brokers, data_dir, args=ARGS):
    started = time.time()
    b = brokers(args=args, data_dir=data_dir, cores=2)
    return b, started


def opened_lines(b, queue):
    return [line for line in log_lines_with(b, "disk queue opened") if f"queue={queue} " in line or f'queue="{queue}"' in line]


def to_format_1(data_dir):
    """Rewrites every meta file as format 1 (consume position only), as ringsqd before
    format 2 left it: same sequence number and position, the other slot empty."""
    done = 0
    for name in os.listdir(data_dir):
        if not META_RE.match(name):
            continue
        path = os.path.join(data_dir, name)
        with open(path, "rb") as f:
            data = f.read()
        slots = []
        for k in range(2):
            s = data[k * 4096:(k + 1) * 4096]
            if len(s) >= 60 and s[:8] == b"RSQMETA2" and struct.unpack_from("<I", s, 56)[0] == zlib.crc32(s[:56]):
                slots.append(struct.unpack_from("<QQQ", s, 8))
        assert slots, f"no valid format-2 slot in {name}"
        seq, seg, off = max(slots)
        head = b"RSQMETA1" + struct.pack("<QQQ", seq, seg, off)
        slot = head + struct.pack("<I", zlib.crc32(head))
        with open(path, "wb") as f:
            f.write(slot.ljust(4096, b"\0") + b"\0" * 4096)
        done += 1
    assert done, f"no meta files in {sorted(os.listdir(data_dir))}"


def test_clean_restart_with_a_large_backlog_is_quick_and_ping_waits_for_every_core(brokers):
    """D10/D5: 1 M messages of 1 KiB queued in one channel, clean shutdown, restart: /stats shows
    the exact depth (and backend_depth) within START_BOUND of exec, and no queue logs
    that it read records (a scan or a verified tail). Then the same data path with format-1
    meta files (no depth): start-up falls back to scanning (slow), and H1: no /ping is
    answered OK before every core has opened its queues, i.e. /stats with the exact
    depth answers right after the first OK."""
    b = brokers(args=ARGS, cores=2)
    fill_backlog(b, "big", BIG, size=1024)
    assert b.stop() == 0, b.log()[-2000:]

    b, started = restart_timed(brokers, b.data_dir)
    took = time_to_depth(b, "big", BIG, started)
    print(f"clean restart: {took:.3f}s")
    assert took < START_BOUND, f"start-up took {took:.2f}s with {BIG} messages queued"
    # Nothing was read: no queue reports a scan or a verified tail.
    assert not opened_lines(b, "big:c"), opened_lines(b, "big:c")
    assert b.stop() == 0, b.log()[-2000:]

    to_format_1(b.data_dir)
    started = time.time()
    b = brokers(args=ARGS, data_dir=b.data_dir, cores=2)
    first_ok = None
    while first_ok is None and time.time() < started + 120:
        try:
            r = request(b, "GET", "/ping", timeout=0.3)
            status, body = r.status, r.body
        except OSError:
            continue
        assert (status, body) == (200, b"OK"), (status, body)
        first_ok = time.time()
    assert first_ok is not None, "no /ping answered"
    took = time_to_depth(b, "big", BIG, first_ok)
    print(f"format-1 restart: first ping OK {first_ok - started:.3f}s, then depth {took:.3f}s")
    assert took < 0.5, f"/ping said OK {took:.2f}s before /stats had the depth"
    lines = opened_lines(b, "big:c")
    assert lines and "Scan" in lines[-1], lines


def test_format_1_meta_falls_back_to_the_scan(brokers):
    """A meta file written before format 2 (consume position only): the queue opens by
    scanning from that position, the depth is exact, every message is delivered once in
    order, and the next clean stop writes format 2 again."""
    b = brokers(args=ARGS + ["--max-bytes-per-file=65536"], cores=2)
    post_ok(b, "/topic/create?topic=old")
    post_ok(b, "/channel/create?topic=old&channel=c")
    bodies = [b"old-%06d" % i for i in range(5000)]
    publish_all(b, "old", bodies)
    wait_channel(b, "old", "c", depth=5000)
    first = [m.body for m in finish_then_stop(b, "old", "c", 1000, 4000)]
    assert first == bodies[:1000]

    to_format_1(b.data_dir)
    b = brokers(args=ARGS + ["--max-bytes-per-file=65536"], data_dir=b.data_dir, cores=2)
    wait_channel(b, "old", "c", depth=4000, timeout=30)
    lines = opened_lines(b, "old:c")
    assert lines and "Scan" in lines[-1], lines
    c = RawConsumer(b, "old", "c", rdy=2500)
    rest = [m.body for m in c.take(4000, quiet=1.0)]
    c.close()
    assert rest == bodies[1000:]
    wait_channel(b, "old", "c", depth=0, in_flight_count=0)
    assert b.stop() == 0, b.log()[-2000:]
    with open(os.path.join(b.data_dir, "old:c.ringsq.meta.dat"), "rb") as f:
        data = f.read()
    assert b"RSQMETA2" in (data[:8], data[4096:4104]), data[:8]


def body(i, fill=b"k"):
    return b"%08d" % i + fill * 1016


def test_kill9_restart_is_quick_and_loses_no_acknowledged_message(brokers):
    """D11 (ringsq, --sync-every=1: OK only once on disk): 1 M distinct 1 KiB messages
    queued, then more published durably until kill -9 mid-stream. The restart verifies
    only the tail written since the last meta save: /stats shows every acknowledged
    message (plus at most the one batch in flight at the kill) within START_BOUND, and
    consuming the channel yields every acknowledged message exactly once."""
    args = ARGS + ["--sync-every=1"]
    b = brokers(args=args, cores=2)
    post_ok(b, "/topic/create?topic=crash")
    post_ok(b, "/channel/create?topic=crash&channel=c")
    c = Conn(b, timeout=60)
    window = 0
    for k in range(0, BIG, BATCH):
        c.send(cmd_bytes("MPUB crash", mpub_body([body(i) for i in range(k, k + BATCH)])))
        window += 1
        if window >= 16:
            assert c.read_frame() == (0, b"OK")
            window -= 1
    while window:
        assert c.read_frame() == (0, b"OK")
        window -= 1
    c.close()

    # Durable publishing still under way at the kill.
    acked = [BIG]  # every index below acked[0] was acknowledged
    in_flight = [0]
    stop = threading.Event()

    def storm():
        c = Conn(b, timeout=10)
        try:
            while not stop.is_set():
                n = acked[0]
                in_flight[0] = 100
                c.cmd("MPUB crash", mpub_body([body(i, b"s") for i in range(n, n + 100)]))
                if c.read_frame() != (0, b"OK"):
                    return
                acked[0] = n + 100
                in_flight[0] = 0
        except OSError:
            pass
        finally:
            c.close()

    t = threading.Thread(target=storm)
    t.start()
    wait_for(lambda: acked[0] >= BIG + 20_000, timeout=120, what="20,000 durable publishes acknowledged")
    b.kill9()
    stop.set()
    t.join()
    total = acked[0]

    b, started = restart_timed(brokers, b.data_dir, args)

    def recovered():
        ch = channel_stats(b, "crash", "c")
        return ch if ch is not None and ch["depth"] >= total else None

    ch = wait_for(recovered, timeout=120 - (time.time() - started), interval=0.01, what=f"crash/c depth >= {total}")
    took = time.time() - started
    print(f"kill -9 restart: {took:.3f}s")
    depth = ch["depth"]
    assert depth in (total, total + in_flight[0]), (depth, total)
    assert took < START_BOUND, f"start-up after kill -9 took {took:.2f}s"

    seen = bytearray(depth)
    bad = []

    def check(m):
        i = int(m.body[:8])
        if m.body != body(i, b"k" if i < BIG else b"s") or i >= depth or seen[i]:
            bad.append(m.body[:20])
        else:
            seen[i] = 1

    c = RawConsumer(b, "crash", "c", rdy=2500)
    c.take(depth, quiet=2.0, timeout=180, on_message=check)
    c.close()
    assert not bad, f"{len(bad)} duplicate or damaged messages, e.g. {bad[:3]}"
    missing = seen[:total].count(0)
    assert not missing, f"{missing} acknowledged messages lost (first {seen.index(0)})"
    wait_channel(b, "crash", "c", depth=0, in_flight_count=0)


def nsqd_queue(d, tail=0, depth=None):
    """Topic `legacy` with channel `c` as nsqd 1.3.0 leaves it: 3 diskqueue files of 40
    records, 10 already read; `tail` records appended to the write file past nsqd's
    writePos (written, not yet synced when nsqd died); `depth` overrides the meta's."""
    from nsqd_fixture import Msg, write_diskqueue, write_metadata

    def msg(i):
        return Msg(b"%016x" % (0xA000 + i), 1_700_000_000_000_000_000 + i, 1, b"legacy-%04d" % i)

    msgs = [msg(i) for i in range(130 + tail)]
    qf = write_diskqueue(d, "legacy:c", [msgs[10:40], msgs[40:80], msgs[80:120]], consumed=msgs[:10])
    with open(qf.paths[-1], "ab") as f:
        f.write(b"".join(m.record() for m in msgs[130:130 + tail]))
    if depth is not None:
        with open(qf.meta_path, "w") as f:
            f.write("%d\n%d,%d\n%d,%d\n" % (depth, qf.read_file_num, qf.read_pos, qf.write_file_num, qf.write_pos))
    write_metadata(d, [("legacy", False, [("c", False)])])
    return [m.body for m in msgs[10:120] + msgs[130:130 + tail]]


@pytest.mark.parametrize(
    "depth", [None, 5, -3, 1_000_000], ids=["nsqd-depth", "short-depth", "negative-depth", "impossible-depth"]
)
def test_nsqd_files_are_counted_not_trusted(brokers, depth):
    """D3-D5, D8: taking over nsqd's files, their records are counted once (nsqd's meta
    depth is not trusted: after a crash nsqd's reader salvages records past writePos
    against a depth that never had them, so a later clean stop can save a short or even
    negative depth, or one the bytes cannot hold); a crash tail past writePos is read
    too. /stats shows the exact
    depth and every unread message is delivered once, in order."""
    import tempfile

    d = tempfile.mkdtemp(prefix="ringsq-nsqd-")
    expected = nsqd_queue(d, tail=7, depth=depth)
    b = brokers(data_dir=d, cores=2)
    wait_channel(b, "legacy", "c", depth=len(expected))
    lines = opened_lines(b, "legacy:c")
    assert lines and "Scan" in lines[-1], lines
    c = RawConsumer(b, "legacy", "c", rdy=200)
    got = [m.body for m in c.take(len(expected), quiet=1.0)]
    c.close()
    assert got == expected
