"""Write a data path as nsqd 1.3.0 leaves it: nsqd.dat plus go-diskqueue files.

This module holds no tests. It builds, byte for byte, what nsqd 1.3.0 (go-diskqueue
v1.1.0) writes in `--data-path` (reference rows D1, D3, D4, D5, T6):

- `nsqd.dat`: JSON `{"topics":[{"name","paused","channels":[{"name","paused"}]}],
  "version":"1.3.0"}` (D1);
- per queue (`<topic>` or `<topic>:<channel>`): `<name>.diskqueue.%06d.dat` files of
  records `[4B BE int32 length][8B BE timestamp ns][2B BE attempts][16B id][body]`
  (D4, T6) and `<name>.diskqueue.meta.dat` with the text
  `"%d\\n%d,%d\\n%d,%d\\n"` = depth, readFileNum,readPos, writeFileNum,writePos (D5).

A queue's backlog can be split over several files and start at a non-zero read
position: the records before it were consumed by nsqd and must never be delivered
again; files before the read file were deleted by nsqd (D6) and do not exist.

`make_standard_fixture(path)` writes the scenario the migration tests use and returns
what must (and must not) be delivered. It was validated by hand against the real nsqd
1.3.0 binary: nsqd delivers exactly `expected` for every channel, keeps ids and
timestamps, delivers attempts+1, and never delivers `consumed`.
"""

import json
import os
import random
import struct
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Msg:
    """One nsqd message as stored on disk (T6)."""

    id: bytes  # 16 bytes, lowercase hex as nsqd generates them (T7)
    timestamp: int  # ns
    attempts: int
    body: bytes

    def encode(self):
        return struct.pack(">qH", self.timestamp, self.attempts) + self.id + self.body

    def record(self):
        payload = self.encode()
        return struct.pack(">i", len(payload)) + payload


@dataclass
class QueueFiles:
    """What write_diskqueue wrote for one queue."""

    name: str
    paths: list
    meta_path: str
    depth: int
    read_file_num: int
    read_pos: int
    write_file_num: int
    write_pos: int


def diskqueue_file(data_path, name, num):
    """`<name>.diskqueue.%06d.dat` (D3)."""
    return os.path.join(data_path, "%s.diskqueue.%06d.dat" % (name, num))


def diskqueue_meta(data_path, name):
    """`<name>.diskqueue.meta.dat` (D3)."""
    return os.path.join(data_path, "%s.diskqueue.meta.dat" % name)


def write_diskqueue(data_path, name, chunks, consumed=(), first_file_num=0):
    """Write one go-diskqueue: `chunks` is a list of lists of unread messages, one list
    per file, starting with file `first_file_num`; `consumed` messages are written at the
    start of the first file, before the read position (already read by nsqd). The last
    file is the write file; its size equals writePos, as after a clean nsqd exit (D8)."""
    assert chunks, "a diskqueue has at least one (write) file"
    paths = []
    read_pos = 0
    write_pos = 0
    for k, chunk in enumerate(chunks):
        data = b""
        if k == 0:
            data = b"".join(m.record() for m in consumed)
            read_pos = len(data)
        data += b"".join(m.record() for m in chunk)
        path = diskqueue_file(data_path, name, first_file_num + k)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
        write_pos = len(data)
    depth = sum(len(c) for c in chunks)
    write_file_num = first_file_num + len(chunks) - 1
    meta_path = diskqueue_meta(data_path, name)
    with open(meta_path, "w") as f:
        f.write("%d\n%d,%d\n%d,%d\n" % (depth, first_file_num, read_pos, write_file_num, write_pos))
    return QueueFiles(name, paths, meta_path, depth, first_file_num, read_pos, write_file_num, write_pos)


def write_metadata(data_path, topics):
    """nsqd.dat (D1). `topics`: [(name, paused, [(channel, paused), ...]), ...]. A topic
    without channels gets `"channels":null`, as nsqd 1.3.0 writes it (Go marshals a nil
    slice as null; see tests/data/nsqd-1.3.0)."""
    meta = {
        "topics": [
            {
                "channels": [{"name": c, "paused": cp} for c, cp in channels] or None,
                "name": t,
                "paused": tp,
            }
            for t, tp, channels in topics
        ],
        "version": "1.3.0",
    }
    with open(os.path.join(data_path, "nsqd.dat"), "w") as f:
        json.dump(meta, f)


class MessageMaker:
    """Distinct messages with nsqd-like ids, increasing timestamps and varied bodies
    (about 20 bytes to 100 KiB, binary, including zero bytes and newlines)."""

    def __init__(self, seed=1303):
        self.rng = random.Random(seed)
        self.n = 0
        # 2023-12-26 (nsqd 1.3.0's release day) in ns: timestamps in the past, as on disk.
        self.ts = 1703548800 * 10**9

    def __call__(self, tag, attempts=0, size=None):
        self.n += 1
        self.ts += self.rng.randrange(1, 10**9)
        mid = b"%016x" % ((0x0C1A0B5E << 32) | self.n)
        head = b"%s#%05d|" % (tag.encode(), self.n)
        if size is None:
            size = self.rng.choice([1, 7, 26, 100, 300, 1000, 1500, 4000])
        rest = bytes(self.rng.randrange(256) for _ in range(min(size, 4096)))
        if size > 4096:
            rest = (rest * (size // 4096 + 1))[:size]
        return Msg(mid, self.ts, attempts, head + rest)

    def many(self, tag, n, attempts=0):
        return [self(tag, attempts=attempts) for _ in range(n)]


@dataclass
class Fixture:
    """The standard nsqd 1.3 data path and what a broker must do with it."""

    data_path: str
    # (topic, paused, [(channel, paused)]) as in nsqd.dat
    topics: list
    # (topic, channel) -> messages the channel must deliver (its own unread backlog plus
    # the topic's unread backlog, which the topic pump copies to every channel, Q1/Q2)
    expected: dict
    # topic -> the topic's own unread backlog (what a first channel of a topic without
    # channels receives, Q2)
    topic_backlog: dict
    # messages before a read position: nsqd consumed them, they must never come back
    consumed: list
    # every diskqueue file (data and meta) written
    files: list = field(default_factory=list)
    queues: dict = field(default_factory=dict)

    def all_expected_bodies(self):
        return {m.body for msgs in self.expected.values() for m in msgs}


def make_standard_fixture(data_path, seed=1303):
    """Write the scenario used by test_disk_migration.py:

    - topic `orders` (not paused), topic backlog of 125 messages over files 2, 3, 4
      (files 0-1 gone, 7 records consumed at the start of file 2, readPos > 0) and one
      100 KiB message; channels:
        - `billing`: own backlog 50 over files 0, 1 (3 consumed, requeued ones with
          attempts 2); expects 50 + 125;
        - `audit` (paused): own backlog 10 in file 5 (2 consumed); expects 10 + 125;
        - `fresh`: no diskqueue files at all; expects 125;
    - topic `idle` (no channels): topic backlog 80 in file 0 with readPos 0 (Q2);
    - topic `held` (paused) with channel `c`: topic backlog 20 (single file 7, 4
      consumed), channel backlog 5; `c` expects 5 while the topic is paused, 25 after
      /topic/unpause (Q9).
    """
    mk = MessageMaker(seed)
    topics = [
        ("held", True, [("c", False)]),
        ("idle", False, []),
        ("orders", False, [("audit", True), ("billing", False), ("fresh", False)]),
    ]
    write_metadata(data_path, topics)
    consumed = []
    queues = {}

    # orders (topic queue)
    c_orders = mk.many("orders-consumed", 7)
    big = mk("orders-big", size=100 * 1024)
    orders_chunks = [mk.many("orders", 39) + [big], mk.many("orders", 60), mk.many("orders", 25)]
    queues["orders"] = write_diskqueue(data_path, "orders", orders_chunks, c_orders, first_file_num=2)
    consumed += c_orders
    orders = [m for c in orders_chunks for m in c]

    # orders:billing
    c_billing = mk.many("billing-consumed", 3)
    billing_chunks = [
        mk.many("billing", 10) + mk.many("billing-requeued", 5, attempts=2) + mk.many("billing", 15),
        mk.many("billing", 20),
    ]
    queues["orders:billing"] = write_diskqueue(data_path, "orders:billing", billing_chunks, c_billing)
    consumed += c_billing
    billing = [m for c in billing_chunks for m in c]

    # orders:audit (paused)
    c_audit = mk.many("audit-consumed", 2)
    audit_chunks = [mk.many("audit", 10, attempts=1)]
    queues["orders:audit"] = write_diskqueue(data_path, "orders:audit", audit_chunks, c_audit, first_file_num=5)
    consumed += c_audit
    audit = audit_chunks[0]

    # idle (no channels)
    idle_chunks = [mk.many("idle", 80)]
    queues["idle"] = write_diskqueue(data_path, "idle", idle_chunks)
    idle = idle_chunks[0]

    # held (paused topic) and held:c
    c_held = mk.many("held-consumed", 4)
    held_chunks = [mk.many("held", 20)]
    queues["held"] = write_diskqueue(data_path, "held", held_chunks, c_held, first_file_num=7)
    consumed += c_held
    held_c_chunks = [mk.many("held-c", 5)]
    queues["held:c"] = write_diskqueue(data_path, "held:c", held_c_chunks)
    held_c = held_c_chunks[0]

    files = []
    for q in queues.values():
        files.extend(q.paths)
        files.append(q.meta_path)
    expected = {
        ("orders", "billing"): billing + orders,
        ("orders", "audit"): audit + orders,
        ("orders", "fresh"): list(orders),
        ("held", "c"): held_c,  # + topic backlog `held` after /topic/unpause
    }
    return Fixture(
        data_path=data_path,
        topics=topics,
        expected=expected,
        topic_backlog={"orders": orders, "idle": idle, "held": held_chunks[0]},
        consumed=consumed,
        files=files,
        queues=queues,
    )
