"""Damaged segment files: flipped bytes, overwritten record boundaries, truncation,
garbage after the last record (D4, D8; ringsq's records carry a crc32).

Every test builds a backlog of 3,000 distinct bodies (~300 B, each starting with a
unique tag `<<NNNNNN>>`) with --mem-queue-size=0 and --max-bytes-per-file=262144 (several
segment files when the limit is honoured), stops the broker cleanly, damages the files
where the bodies are found (offsets are always beyond the 512-byte segment header,
inside the records) and restarts on the same data path. Expected, whatever the record
layout: the broker starts, logs a line containing "corrupt" that names the damaged
file, delivers no damaged or unknown body, and delivers every intact record, in publish
order (one publisher, one channel, mem-queue-size 0).
"""

import os
import random
import re

import pytest

from helpers.disk import locate, log_lines_with, segment_files
from helpers.http_api import post_ok
from helpers.wait import wait_channel, wait_topic
from helpers.wire import publish_all, RawConsumer

N = 3000
TAG_RE = re.compile(rb"<<(\d{6})>>")
ARGS = ["--mem-queue-size=0", "--max-bytes-per-file=262144"]


def bodies_for(seed=5):
    rng = random.Random(seed)
    letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;"
    return [b"<<%06d>>" % i + bytes(rng.choice(letters) for _ in range(rng.randrange(150, 450))) for i in range(N)]


def new_bodies(n):
    return [b"after-restart-%03d" % i for i in range(n)]


class Backlog:
    def __init__(self, data_dir, bodies, queue, files, where):
        self.data_dir = data_dir
        self.bodies = bodies
        self.queue = queue
        self.files = files
        self.where = where  # index -> (path, offset)

    def indices_in(self, path):
        return sorted(i for i, (p, _) in self.where.items() if p == path)


def build_backlog(brokers, kind):
    """`kind` = "topic": the backlog sits in topic `corr` (no channel, Q2); "channel":
    in channel `corr:c` (created before publishing)."""
    bodies = bodies_for()
    b = brokers(args=ARGS, cores=2)
    if kind == "channel":
        post_ok(b, "/topic/create?topic=corr")
        post_ok(b, "/channel/create?topic=corr&channel=c")
    publish_all(b, "corr", bodies)
    if kind == "channel":
        wait_channel(b, "corr", "c", depth=N)
        queue = "corr:c"
    else:
        wait_topic(b, "corr", depth=N)
        queue = "corr"
    assert b.stop() == 0, b.log()[-2000:]
    files = segment_files(b.data_dir, queue)
    assert files, f"no segment files for {queue}: {sorted(os.listdir(b.data_dir))}"
    where = locate(files, bodies, TAG_RE)
    return Backlog(b.data_dir, bodies, queue, files, where)


def middle_file(bl):
    return bl.files[len(bl.files) // 2]


def patch(path, offset, data):
    assert offset >= 512
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def restart_and_consume(brokers, bl, expected, publish_after=()):
    """Restart on the damaged data path, optionally publish more, consume everything."""
    b = brokers(args=ARGS, data_dir=bl.data_dir, cores=2)
    if publish_after:
        publish_all(b, "corr", list(publish_after))
    c = RawConsumer(b, "corr", "c", rdy=2500)
    got = [m.body for m in c.take(len(expected), quiet=1.0, timeout=60)]
    c.close()
    return b, got


def assert_delivered(got, expected, bodies):
    known = set(bodies)
    unknown = [g[:30] for g in got if g not in known and not g.startswith(b"after-restart-")]
    assert not unknown, f"damaged or unknown bodies delivered: {unknown[:3]}"
    exp_idx = [int(TAG_RE.match(x).group(1)) if x.startswith(b"<<") else x for x in expected]
    got_idx = [int(TAG_RE.match(x).group(1)) if x.startswith(b"<<") else x for x in got]
    missing = sorted(set(i for i in exp_idx if isinstance(i, int)) - set(i for i in got_idx if isinstance(i, int)))
    assert not missing, f"{len(missing)} intact records not delivered, e.g. {missing[:10]}"
    assert got == expected, f"got {len(got)} messages, expected {len(expected)} (order/duplicates differ)"


def assert_corruption_logged(b, path):
    name = os.path.basename(path)
    lines = log_lines_with(b, "corrupt")
    assert any(name in line for line in lines), f"no log line with 'corrupt' naming {name}: {lines[:5]}"


@pytest.mark.parametrize("kind", ["topic", "channel"])
def test_flipped_body_bytes_lose_only_that_record(brokers, kind):
    """D8 (ringsq: crc32 per record): 3 bytes flipped in the middle of one record's body
    in a middle segment file; after restart that record is skipped, the other 2,999 are
    delivered exactly once in order, and a 'corrupt' line names the file."""
    bl = build_backlog(brokers, kind)
    path = middle_file(bl)
    idx = bl.indices_in(path)
    k = idx[len(idx) // 2]
    _, off = bl.where[k]
    pos = off + len(bl.bodies[k]) // 2
    with open(path, "rb") as f:
        f.seek(pos)
        old = f.read(3)
    patch(path, pos, bytes(x ^ 0xFF for x in old))
    expected = [x for i, x in enumerate(bl.bodies) if i != k]
    b, got = restart_and_consume(brokers, bl, expected)
    assert_delivered(got, expected, bl.bodies)
    assert_corruption_logged(b, path)


def test_overwritten_record_boundary_loses_exactly_two_records(brokers):
    """D8: random bytes from the middle of record k's body to the middle of record k+1's
    body (so k's tail and k+1's whole header are garbage); after restart exactly k and
    k+1 are missing, every later record (same file and later files) is delivered."""
    bl = build_backlog(brokers, "channel")
    path = middle_file(bl)
    idx = bl.indices_in(path)
    k = idx[len(idx) // 2]
    assert bl.where[k + 1][0] == path
    start = bl.where[k][1] + len(bl.bodies[k]) // 2
    end = bl.where[k + 1][1] + len(bl.bodies[k + 1]) // 2
    patch(path, start, random.Random(99).randbytes(end - start))
    expected = [x for i, x in enumerate(bl.bodies) if i not in (k, k + 1)]
    b, got = restart_and_consume(brokers, bl, expected)
    assert_delivered(got, expected, bl.bodies)
    assert_corruption_logged(b, path)


def test_truncated_segment_loses_only_its_tail(brokers):
    """D8: a segment file (the first one when there are several) truncated in the middle
    of a record: the records before the cut and every record of the other files are
    delivered, in order; the cut record and the rest of that file are gone; messages
    published after the restart are delivered after the backlog."""
    bl = build_backlog(brokers, "topic")
    path = bl.files[0]
    idx = bl.indices_in(path)
    k = idx[len(idx) // 2]
    cut = bl.where[k][1] + len(bl.bodies[k]) // 2
    os.truncate(path, cut)
    lost = {i for i in idx if i >= k}
    extra = new_bodies(10)
    expected = [x for i, x in enumerate(bl.bodies) if i not in lost] + extra
    b, got = restart_and_consume(brokers, bl, expected, publish_after=extra)
    assert_delivered(got, expected, bl.bodies)
    assert_corruption_logged(b, path)


def test_garbage_after_last_record_is_ignored(brokers):
    """D8 (torn tail write): 100 random bytes right after the last record of the last
    segment; every one of the 3,000 records is delivered, then the 10 messages published
    after the restart (the writer does not lose them behind the garbage)."""
    bl = build_backlog(brokers, "channel")
    path, off = bl.where[N - 1]
    assert path == bl.files[-1]
    patch(path, off + len(bl.bodies[N - 1]), random.Random(7).randbytes(100))
    extra = new_bodies(10)
    expected = bl.bodies + extra
    b, got = restart_and_consume(brokers, bl, expected, publish_after=extra)
    assert_delivered(got, expected, bl.bodies)
    # A second clean restart: nothing comes back.
    wait_channel(b, "corr", "c", depth=0, in_flight_count=0)
    assert b.stop() == 0
    b = brokers(args=ARGS, data_dir=bl.data_dir, cores=2)
    wait_channel(b, "corr", "c", depth=0)
    c = RawConsumer(b, "corr", "c", rdy=100)
    assert c.take(None, quiet=0.5) == []


def test_unreadable_queue_files_are_set_aside_not_deleted(brokers):
    """D8: a queue whose segments cannot be read at start-up (here a directory stands
    where its next segment file would be, so reading fails) starts empty as before, but
    its files are renamed *.bad, as nsqd does with a file it cannot read, instead of
    being deleted by a later start as consumed (its fresh meta points past them). The
    queue serves new messages across restarts, and the set-aside files stay."""
    bl = build_backlog(brokers, "channel")
    last = int(re.search(r"\.(\d{6})\.dat$", bl.files[-1]).group(1))
    blocker = os.path.join(bl.data_dir, "corr:c.ringsq.%06d.dat" % (last + 1))
    os.mkdir(blocker)
    # Entries make the directory's size pass the segment header, so it is read.
    for i in range(400):
        open(os.path.join(blocker, "entry-with-a-long-name-%04d" % i), "w").close()
    assert os.path.getsize(blocker) > 4096
    sizes = {p: os.path.getsize(p) for p in bl.files}
    b = brokers(args=ARGS, data_dir=bl.data_dir, cores=2)
    fresh = new_bodies(5)
    publish_all(b, "corr", fresh)
    wait_channel(b, "corr", "c", depth=5)
    assert b.stop() == 0, b.log()[-2000:]
    b = brokers(args=ARGS, data_dir=bl.data_dir, cores=2)
    wait_channel(b, "corr", "c", depth=5)
    for path, size in sizes.items():
        assert not os.path.exists(path)
        assert os.path.getsize(path + ".bad") == size
    c = RawConsumer(b, "corr", "c", rdy=100)
    assert [m.body for m in c.take(5, quiet=0.5)] == fresh
    c.close()
