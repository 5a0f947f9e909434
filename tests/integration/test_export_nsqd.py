"""`ringsqd export-nsqd`: the way back to nsqd 1.3 (D1, D3-D6, D10, C6).

A ringsq data path is built by running ringsqd (publish known bodies, consume some,
REQ one with a long delay, DPUB one, stop cleanly), exported, and the nsqd files are
parsed here per the reference rows: records `[4B BE len][8B ts ns][2B attempts][16B
id][body]` (D4), meta text `"%d\\n%d,%d\\n%d,%d\\n"` (D5), files rolled as
go-diskqueue's writeOne rolls them (D6), nsqd.dat exactly as nsqd 1.3.0 marshals it
(D1: struct field order, `"channels":null` for a topic with no channel). Deferred
messages go into the channel's queue as nsqd's own shutdown puts them (D10). ringsqd
started on the exported data path takes the nsqd files over and delivers each message
exactly once. The export refuses to run while a broker holds the data path (C6), and
an export interrupted before or after its commit point loses nothing and duplicates
nothing when run again.
"""

import os
import re
import shutil
import struct
import subprocess
import tempfile

from nsqd_fixture import Msg, diskqueue_file, diskqueue_meta, write_diskqueue, write_metadata
from helpers.broker import BIN
from helpers.disk import finish_then_stop, locate, segment_files
from helpers.http_api import post_ok
from helpers.wait import wait_channel, wait_topic
from helpers.wire import OK, Conn, publish_all, RawConsumer

META_RE = re.compile(rb"^(\d+)\n(\d+),(\d+)\n(\d+),(\d+)\n$")
HOUR_MS = 3600 * 1000

NSQD_DAT = (
    b'{"topics":[{"name":"orders","paused":false,"channels":[{"name":"audit","paused":true},'
    b'{"name":"billing","paused":false}]},{"name":"solo","paused":true,"channels":null}],'
    b'"version":"1.3.0"}'
)


def export(data_dir, *args):
    """Runs the export; data_dir None: the data path comes from `args` (--config)."""
    path = [] if data_dir is None else [f"--data-path={data_dir}"]
    return subprocess.run(
        [BIN, "export-nsqd", *path, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_queue(data_dir, name):
    """(meta text, [Msg], [file sizes]) of one nsqd diskqueue, parsed per D3-D5: every
    file from readFileNum to writeFileNum, records back to back up to the file end, the
    write file's size equal to writePos, depth equal to the record count."""
    with open(diskqueue_meta(data_dir, name), "rb") as f:
        meta = f.read()
    m = META_RE.match(meta)
    assert m, meta
    depth, rf, rp, wf, wp = map(int, m.groups())
    records, sizes = [], []
    for num in range(rf, wf + 1):
        with open(diskqueue_file(data_dir, name, num), "rb") as f:
            data = f.read()
        pos = rp if num == rf else 0
        while pos < len(data):
            (size,) = struct.unpack_from(">i", data, pos)
            assert 26 <= size <= len(data) - pos - 4, (name, num, pos, size)
            ts, attempts = struct.unpack_from(">qH", data, pos + 4)
            records.append(Msg(data[pos + 14:pos + 30], ts, attempts, data[pos + 30:pos + 4 + size]))
            pos += 4 + size
        sizes.append(len(data))
    assert depth == len(records) and wp == sizes[-1], (meta, len(records), sizes)
    return meta.decode(), records, sizes


def files_of(data_dir):
    return {n: open(os.path.join(data_dir, n), "rb").read() for n in sorted(os.listdir(data_dir))}


def order_bodies():
    # Binary bodies: zero bytes and newlines must come through untouched.
    return [b"order-%02d\x00\n|" % i + bytes(range(i * 7)) for i in range(10)]


SOLO = [b"solo-%d" % i for i in range(3)]
DPUB = b"dpub-late\x00"


def build_ringsq_data_path(brokers):
    """Runs ringsqd and stops it cleanly; returns (data_dir, the 4 messages billing
    saw). orders/billing: 10 published, 0-2 FINished, 3 REQ'd for 30 min, 4-9 never
    delivered; orders/audit (paused): all 10; both channels hold the DPUB (1 h);
    solo (paused, no channel): 3. An ephemeral topic and an ephemeral channel hold
    messages too."""
    b = brokers(cores=2)
    post_ok(b, "/topic/create?topic=orders")
    post_ok(b, "/channel/create?topic=orders&channel=billing")
    post_ok(b, "/channel/create?topic=orders&channel=audit")
    post_ok(b, "/topic/create?topic=scratch%23ephemeral")
    post_ok(b, "/channel/create?topic=scratch%23ephemeral&channel=c")
    eph = RawConsumer(b, "orders", "tail#ephemeral", rdy=0)
    bodies = order_bodies()
    publish_all(b, "orders", bodies)
    publish_all(b, "solo", SOLO)
    publish_all(b, "scratch#ephemeral", [b"gone-1", b"gone-2"])
    wait_channel(b, "orders", "billing", depth=10)
    c = RawConsumer(b, "orders", "billing", rdy=4, fin=False)
    seen = c.take(4, quiet=0.3)
    assert [m.body for m in seen] == bodies[:4]
    c.rdy(0)
    c.finish([m.id for m in seen[:3]])
    c.req(seen[3].id, HOUR_MS // 2)
    p = Conn(b)
    p.cmd(f"DPUB orders {HOUR_MS}", DPUB)
    assert p.read_frame() == OK
    post_ok(b, "/channel/pause?topic=orders&channel=audit")
    post_ok(b, "/topic/pause?topic=solo")
    wait_channel(b, "orders", "billing", depth=6, in_flight_count=0, deferred_count=2)
    wait_channel(b, "orders", "audit", depth=10, deferred_count=1)
    wait_topic(b, "solo", depth=3)
    assert b.stop() == 0, b.log()[-2000:]
    for x in (c, p, eph):
        x.close()
    return b.data_dir, seen


def expected_queues(seen):
    """What each exported queue must hold, in order: the channel's queue, then its
    deferred messages (D10), ids/timestamps/attempts kept."""
    bodies = order_bodies()
    return {
        "orders:billing": [(x, 0) for x in bodies[4:]] + [(bodies[3], 1), (DPUB, 0)],
        "orders:audit": [(x, 0) for x in bodies] + [(DPUB, 0)],
        "solo": [(x, 0) for x in SOLO],
    }


def test_export_writes_nsqd_files_byte_for_byte(brokers):
    """D1, D3-D5, D10, D12: after the export the data path holds nsqd's files only
    (and the files of the ephemeral topic's durable channel, which nsqd never reads):
    nsqd.dat exactly as nsqd 1.3.0 writes it (paused flags kept, `"channels":null` for
    the channel-less topic, no ephemeral topic or channel), one diskqueue per non-empty
    queue with the exact records in order (deferred ones last, attempts 0/1 as
    delivered, ids and timestamps those the consumer saw and the same in both
    channels), meta text exact; the summary counts them; ringsq's files are gone."""
    d, seen = build_ringsq_data_path(brokers)
    assert any(".ringsq." in n for n in os.listdir(d)), os.listdir(d)
    r = export(d)
    assert r.returncode == 0, r.stderr
    want = expected_queues(seen)
    messages = sum(len(v) for v in want.values())
    nbytes = sum(30 + len(x) for v in want.values() for x, _ in v)
    assert r.stdout.splitlines()[-1] == (
        f"exported 3 queues: {messages} messages, {nbytes} bytes, 3 files written; "
        "0 queues already in nsqd's format; 0 damaged ranges skipped (0 bytes)"
    ), r.stdout
    assert "  orders:billing: 8 messages (2 deferred), " in r.stdout, r.stdout
    assert "  orders: empty" in r.stdout, r.stdout
    assert "nsqd.dat: 2 topics, 2 channels" in r.stdout, r.stdout

    # nsqd gives the durable channel c of the ephemeral topic a diskqueue too, but
    # leaves the topic out of nsqd.dat and never reads it back: not exported.
    assert (
        "  scratch#ephemeral:c: ephemeral topic, not exported (nsqd does not restore it); "
        "its files are left in place" in r.stdout
    ), r.stdout
    files = files_of(d)
    assert files["nsqd.dat"] == NSQD_DAT
    nsqd_files = sorted(n for n in files if not n.startswith("scratch#ephemeral:c.ringsq."))
    assert nsqd_files == sorted(
        ["nsqd.dat"]
        + [f"{q}.diskqueue.{s}.dat" for q in want for s in ("000000", "meta")]
    ), sorted(files)
    got = {}
    for q, expect in want.items():
        meta, records, sizes = read_queue(d, q)
        assert [(m.body, m.attempts) for m in records] == expect, q
        assert meta == "%d\n0,0\n0,%d\n" % (len(expect), sizes[0])
        got[q] = {m.body: m for m in records}
    billing, audit = got["orders:billing"], got["orders:audit"]
    for m in seen:
        assert audit[m.body].id == m.id and audit[m.body].timestamp == m.timestamp
    assert billing[seen[3].body].id == seen[3].id
    for body, m in billing.items():
        assert (m.id, m.timestamp) == (audit[body].id, audit[body].timestamp)
    # Ids are unique per topic (T7: each topic has its own id factory, as in nsqd).
    for q, n in (("orders:audit", 11), ("solo", 3)):
        ids = [m.id for m in got[q].values()]
        assert len(set(ids)) == len(ids) == n
        assert all(re.fullmatch(rb"[0-9a-f]{16}", i) for i in ids)


def test_ringsqd_on_the_exported_path_delivers_each_message_once(brokers):
    """Round trip: ringsqd started on the exported data path takes over the nsqd files
    (D3-D5) and nsqd.dat (paused flags): billing delivers its 8 (the REQ'd and the
    DPUB'd at once: their timers are gone, D10), audit its 11 once unpaused, solo its
    3 to a new channel once unpaused; nothing is delivered twice, and after a clean
    restart every queue is empty."""
    d, seen = build_ringsq_data_path(brokers)
    assert export(d).returncode == 0
    want = expected_queues(seen)
    b = brokers(data_dir=d, cores=2)
    wait_channel(b, "orders", "billing", depth=8, paused=False)
    wait_channel(b, "orders", "audit", depth=11, paused=True)
    wait_topic(b, "solo", depth=3, paused=True)
    c = RawConsumer(b, "orders", "billing", rdy=100)
    assert [m.body for m in c.take(8, quiet=0.5)] == [x for x, _ in want["orders:billing"]]
    post_ok(b, "/channel/unpause?topic=orders&channel=audit")
    a = RawConsumer(b, "orders", "audit", rdy=100)
    assert [m.body for m in a.take(11, quiet=0.5)] == [x for x, _ in want["orders:audit"]]
    post_ok(b, "/channel/create?topic=solo&channel=c")
    post_ok(b, "/topic/unpause?topic=solo")
    s = RawConsumer(b, "solo", "c", rdy=100)
    assert [m.body for m in s.take(3, quiet=0.5)] == SOLO
    for ch in ("billing", "audit"):
        wait_channel(b, "orders", ch, depth=0, in_flight_count=0)
    wait_channel(b, "solo", "c", depth=0, in_flight_count=0)
    assert b.stop() == 0
    for x in (c, a, s):
        x.close()
    b = brokers(data_dir=d, cores=2)
    for t, ch in (("orders", "billing"), ("orders", "audit"), ("solo", "c")):
        wait_channel(b, t, ch, depth=0, deferred_count=0)


def test_export_refuses_a_held_or_bad_data_path(brokers):
    """C6: while a broker holds the data path the export exits 1 with nsqd's flock
    error (the broker's own text) and touches nothing; a missing path, a file and a
    directory with no ringsq data are refused with one line each."""
    b = brokers(cores=2)
    publish_all(b, "t", [b"x"])
    before = files_of(b.data_dir)
    r = export(b.data_dir)
    assert r.returncode == 1
    assert r.stderr == (
        f"ringsqd export-nsqd: cannot flock directory {b.data_dir} - Resource temporarily "
        "unavailable (os error 11) (possibly in use by another instance of nsqd)\n"
    )
    assert r.stdout == ""
    assert files_of(b.data_dir) == before

    base = tempfile.mkdtemp(prefix="ringsq-export-bad-")
    try:
        missing = os.path.join(base, "missing")
        r = export(missing)
        assert (r.returncode, r.stderr) == (
            1,
            f"ringsqd export-nsqd: data path {missing}: No such file or directory (os error 2)\n",
        )
        plain = os.path.join(base, "file")
        open(plain, "w").close()
        r = export(plain)
        assert (r.returncode, r.stderr) == (1, f"ringsqd export-nsqd: data path {plain}: not a directory\n")
        empty = os.path.join(base, "empty")
        os.mkdir(empty)
        r = export(empty)
        assert (r.returncode, r.stderr) == (
            1,
            f"ringsqd export-nsqd: no ringsq data in {empty}: neither nsqd.dat nor queue "
            "files (wrong --data-path?)\n",
        )
        assert os.listdir(empty) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fixed(tag, i, attempts=0):
    """A 50-byte body: every record is 80 bytes on disk."""
    body = (b"%s-%03d-" % (tag, i)).ljust(50, b".")
    return Msg(b"%016x" % (0xE0000 + i), 1703548800 * 10**9 + i, attempts, body)


def test_export_of_a_takeover_in_progress_with_durable_dpub(brokers):
    """D4-D6: ringsqd was still taking over nsqd files (legacy:c, files 3 and 4, nsqd's
    read position after one record) and had FINished 3 more of them; a durable DPUB
    (--sync-every=1, stored with its due time) followed. The export writes, from
    ringsq's position, the 7 nsqd records left (ids, timestamps, attempts kept) and the
    DPUB as a plain message, numbered after nsqd's files (5..8), rolled at
    max_bytes_per_file = 200 (from the --config file, with the data path; other broker
    flags accepted) as writeOne rolls (2 records of 80 bytes per file), and
    removes the files taken over. ringsqd on the result delivers exactly those 8."""
    d = tempfile.mkdtemp(prefix="ringsq-export-legacy-")
    legacy = [fixed(b"legacy", i, attempts=i % 3) for i in range(11)]
    write_diskqueue(d, "legacy:c", [legacy[1:6], legacy[6:]], consumed=[legacy[0]], first_file_num=3)
    write_metadata(d, [("legacy", False, [("c", False)])])
    b = brokers(args=["--sync-every=1"], data_dir=d, cores=2)
    dpub = (b"dpub-%03d-" % 0).ljust(50, b".")
    p = Conn(b)
    p.cmd(f"DPUB legacy {HOUR_MS}", dpub)
    assert p.read_frame() == OK
    p.close()
    wait_channel(b, "legacy", "c", depth=11)
    done = finish_then_stop(b, "legacy", "c", 3, left=8)
    assert [m.body for m in done] == [m.body for m in legacy[1:4]]

    # nsqd's config file, as the unit passes it (C1): data_path and max_bytes_per_file.
    cfg = os.path.join(d + "-nsqd.cfg")
    with open(cfg, "w") as f:
        f.write(f'data_path = "{d}"\nmax_bytes_per_file = 200\nmem_queue_size = 5\n')
    r = export(None, f"-config={cfg}", "-tcp-address=127.0.0.1:1")
    os.remove(cfg)
    assert r.returncode == 0, r.stderr
    assert "  legacy:c: 8 messages (0 deferred), 640 bytes, 4 files" in r.stdout, r.stdout
    meta, records, sizes = read_queue(d, "legacy:c")
    assert meta == "8\n5,0\n8,160\n"
    assert sizes == [160, 160, 160, 160]
    assert [(m.id, m.timestamp, m.attempts, m.body) for m in records[:7]] == [
        (m.id, m.timestamp, m.attempts, m.body) for m in legacy[4:]
    ]
    assert (records[7].body, records[7].attempts) == (dpub, 0)
    names = sorted(os.listdir(d))
    assert [n for n in names if n.startswith("legacy:c.")] == [
        "legacy:c.diskqueue.000005.dat",
        "legacy:c.diskqueue.000006.dat",
        "legacy:c.diskqueue.000007.dat",
        "legacy:c.diskqueue.000008.dat",
        "legacy:c.diskqueue.meta.dat",
    ]
    assert not [n for n in names if ".ringsq." in n], names

    b = brokers(data_dir=d, cores=2)
    c = RawConsumer(b, "legacy", "c", rdy=100)
    assert [m.body for m in c.take(8, quiet=0.5)] == [m.body for m in legacy[4:]] + [dpub]
    c.close()


def journal(renames, deletes):
    lines = ["ringsq export-nsqd journal 1"]
    lines += [f"rename {a} {b}" for a, b in renames]
    lines += [f"delete {x}" for x in deletes]
    return "\n".join(lines + ["end", ""])


def test_an_interrupted_export_loses_nothing_and_duplicates_nothing(brokers):
    """Crash safety: (1) killed before its commit point (temp files written, no
    journal): a re-run removes the temp files and writes exactly what an uninterrupted
    export writes; (2) killed after committing orders:billing (journal in place, its
    nsqd files renamed, ringsq's files not yet deleted): a re-run finishes that queue
    first, then exports the rest, and the result is again byte-identical; (3) the
    same state started with ringsqd instead: it finishes the journal first and
    billing delivers its 8 messages once."""
    d, seen = build_ringsq_data_path(brokers)
    base = tempfile.mkdtemp(prefix="ringsq-export-crash-")
    try:
        pristine = os.path.join(base, "pristine")
        shutil.copytree(d, pristine)
        assert export(d).returncode == 0
        reference = files_of(d)

        before_commit = os.path.join(base, "before")
        shutil.copytree(pristine, before_commit)
        for n in ("orders:billing.diskqueue.000000.dat", "orders:billing.diskqueue.meta.dat", "ringsq-export.journal"):
            with open(os.path.join(before_commit, n + ".export-tmp"), "wb") as f:
                f.write(b"half written")
        r = export(before_commit)
        assert r.returncode == 0, r.stderr
        assert files_of(before_commit) == reference

        for run in ("export", "ringsqd"):
            after = os.path.join(base, "after-" + run)
            shutil.copytree(pristine, after)
            q = "orders:billing"
            ringsq_files = sorted(n for n in os.listdir(after) if n.startswith(q + ".ringsq."))
            assert ringsq_files, os.listdir(after)
            for n in (f"{q}.diskqueue.000000.dat", f"{q}.diskqueue.meta.dat"):
                with open(os.path.join(after, n), "wb") as f:
                    f.write(reference[n])
            with open(os.path.join(after, "ringsq-export.journal"), "w") as f:
                f.write(
                    journal(
                        [(f"{q}.diskqueue.000000.dat.export-tmp", f"{q}.diskqueue.000000.dat"),
                         (f"{q}.diskqueue.meta.dat.export-tmp", f"{q}.diskqueue.meta.dat")],
                        ringsq_files,
                    )
                )
            if run == "export":
                r = export(after)
                assert r.returncode == 0, r.stderr
                assert "  orders:billing: already in nsqd's format, left as it is" in r.stdout, r.stdout
                assert files_of(after) == reference
            else:
                b = brokers(data_dir=after, cores=2)
                wait_channel(b, "orders", "billing", depth=8)
                c = RawConsumer(b, "orders", "billing", rdy=100)
                got = [m.body for m in c.take(8, quiet=0.5)]
                assert got == [x for x, _ in expected_queues(seen)["orders:billing"]]
                c.close()
                assert not os.path.exists(os.path.join(after, "ringsq-export.journal"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_damaged_records_are_skipped_and_counted(brokers):
    """The export reads with the broker's reader: a record whose crc fails (one body
    byte flipped in ringsq's segment) is skipped as the broker would skip it, the
    summary counts the damaged range and its bytes, and the 19 others are exported in
    order."""
    b = brokers(cores=2)
    post_ok(b, "/topic/create?topic=dmg")
    post_ok(b, "/channel/create?topic=dmg&channel=c")
    bodies = [b"dmg-%03d-" % i + b"y" * 40 for i in range(20)]
    publish_all(b, "dmg", bodies)
    wait_channel(b, "dmg", "c", depth=20)
    assert b.stop() == 0
    where = locate(segment_files(b.data_dir, "dmg:c"), bodies, re.compile(rb"dmg-(\d{3})-"))
    path, off = where[7]
    with open(path, "r+b") as f:
        f.seek(off + 10)
        byte = f.read(1)
        f.seek(off + 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = export(b.data_dir)
    assert r.returncode == 0, r.stderr
    # ringsq's record: 8-byte prefix + 27 fixed bytes + body.
    skipped = 8 + 27 + len(bodies[7])
    assert f"  dmg:c: 19 messages (0 deferred), {19 * 78} bytes, 1 files; 1 damaged ranges skipped ({skipped} bytes)" in r.stdout, r.stdout
    assert r.stdout.splitlines()[-1].endswith(f"; 1 damaged ranges skipped ({skipped} bytes)"), r.stdout
    _, records, _ = read_queue(b.data_dir, "dmg:c")
    assert [m.body for m in records] == bodies[:7] + bodies[8:]


def test_export_killed_at_any_point_then_rerun_gives_the_same_files(brokers):
    """Crash safety with real kills: an export of 6 channels (2 MB each) is SIGKILLed
    as soon as the data path shows a given stage (temp files written: before a commit;
    the journal in place: right after one; the first queue's meta renamed: mid-apply;
    the second queue's temp files: after a whole queue), then run again: every time
    the result is byte for byte what an uninterrupted export writes."""
    b = brokers(cores=2)
    post_ok(b, "/topic/create?topic=many")
    channels = [f"c{i}" for i in range(6)]
    for ch in channels:
        post_ok(b, f"/channel/create?topic=many&channel={ch}")
    publish_all(b, "many", [b"many-%05d-" % i + b"z" * 1000 for i in range(2000)])
    for ch in channels:
        wait_channel(b, "many", ch, depth=2000)
    assert b.stop() == 0
    base = tempfile.mkdtemp(prefix="ringsq-export-kill-")
    try:
        pristine = os.path.join(base, "pristine")
        shutil.copytree(b.data_dir, pristine)
        assert export(b.data_dir).returncode == 0
        reference = files_of(b.data_dir)
        stages = {
            "temp files": lambda names: any(n.endswith(".export-tmp") for n in names),
            "journal": lambda names: "ringsq-export.journal" in names,
            "first meta renamed": lambda names: "many:c0.diskqueue.meta.dat" in names,
            "second queue": lambda names: any(n.startswith("many:c1.diskqueue.") for n in names),
        }
        killed = []
        for stage, seen in stages.items():
            d = os.path.join(base, stage.replace(" ", "-"))
            shutil.copytree(pristine, d)
            p = subprocess.Popen([BIN, "export-nsqd", f"--data-path={d}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while p.poll() is None and not seen(os.listdir(d)):
                pass
            p.kill()
            if p.wait() == -9:
                killed.append(stage)
            r = export(d)
            assert r.returncode == 0, (stage, r.stderr)
            assert files_of(d) == reference, stage
        assert killed, "no export was interrupted"
    finally:
        shutil.rmtree(base, ignore_errors=True)
