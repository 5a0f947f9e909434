"""Disk queue corner cases beyond crash survival, found in review and in CI:
a durable DPUB held by a paused topic keeps its due time; emptying a channel
under durable load never wedges the core's group commit; and emptying,
deleting and re-creating a queue while its segment files are being created
or opened for reading never takes the broker down (glommio's open panics
when a file vanishes under it) (D7 ringsq extension, Q9, Q11, Q12)."""

import threading
import time

from helpers.http_api import metric, post_ok
from helpers.wait import wait_for
from helpers.wire import MpubStorm, Wire

DURABLE = ["--sync-every=1"]


def test_durable_dpub_held_by_a_paused_topic_keeps_its_due_time(brokers):
    """A DPUB of 6 s to a paused topic (held on disk), a clean restart (the
    message is then read back from the topic's segment file), unpause: it must
    not arrive before its due time, and must arrive after it."""
    b = brokers(args=DURABLE, cores=2)
    post_ok(b, "/topic/create?topic=held")
    post_ok(b, "/channel/create?topic=held&channel=c")
    post_ok(b, "/topic/pause?topic=held")
    p = Wire(b.tcp_address)
    sent = time.time()
    p.cmd(b"DPUB held 6000", b"later")
    assert p.read_frame() == (0, b"OK")
    p.close()
    assert b.stop() == 0
    b = brokers(args=DURABLE, data_dir=b.data_dir, cores=2)
    c = Wire(b.tcp_address, timeout=10)
    c.cmd(b"SUB held c")
    assert c.read_frame() == (0, b"OK")
    c.cmd(b"RDY 1")
    post_ok(b, "/topic/unpause?topic=held")
    msg = c.read_message()
    arrived = time.time() - sent
    assert msg["body"] == b"later"
    assert arrived >= 5.9, f"delivered {arrived:.2f}s after a 6 s DPUB"
    c.cmd(b"FIN " + msg["id"])
    c.close()


def test_emptying_a_channel_under_durable_load_never_blocks_publishing(brokers):
    """Q12 /channel/empty while 4 publishers MPUB in durable mode: every
    publish keeps getting OK, and one after the storm still does."""
    b = brokers(args=DURABLE + ["--mem-queue-size=0"], cores=1)
    post_ok(b, "/topic/create?topic=t")
    post_ok(b, "/channel/create?topic=t&channel=c")
    storm = MpubStorm(b, "t")
    for _ in range(30):
        post_ok(b, "/channel/empty?topic=t&channel=c")
        time.sleep(0.03)
    storm.stop()
    assert not storm.errors, storm.errors[:3]
    assert all(n > 0 for n in storm.counts), storm.counts
    w = Wire(b.tcp_address, timeout=5)
    w.cmd(b"PUB t", b"after")
    assert w.read_frame() == (0, b"OK")
    w.close()


def test_deleting_and_recreating_a_topic_under_load_keeps_the_broker_whole(brokers):
    """Q11/Q12 while 4 publishers MPUB in durable mode: the topic is
    deleted and re-created (and its channel emptied) 100 times each while segment
    files are being created. The broker must stay up (glommio's open used to
    panic when a file vanished under it), publishers must never hang, and the
    last incarnation's files must be intact: a message published after the
    storm is delivered."""
    b = brokers(args=DURABLE + ["--mem-queue-size=0"], cores=1)
    post_ok(b, "/topic/create?topic=churn")
    storm = MpubStorm(b, "churn", fill=b"y")
    for i in range(200):
        if i % 2:
            post_ok(b, "/channel/empty?topic=churn&channel=c")
        else:
            post_ok(b, "/topic/delete?topic=churn")
            post_ok(b, "/topic/create?topic=churn")
            post_ok(b, "/channel/create?topic=churn&channel=c")
        time.sleep(0.01)
    storm.stop()
    assert not storm.errors, storm.errors[:3]
    assert all(n > 0 for n in storm.counts), storm.counts
    assert b.proc.poll() is None, b.log()[-3000:]

    post_ok(b, "/topic/delete?topic=churn")
    c = Wire(b.tcp_address, timeout=10)
    c.cmd(b"SUB churn c")
    assert c.read_frame() == (0, b"OK")
    p = Wire(b.tcp_address, timeout=10)
    p.cmd(b"PUB churn", b"after the storm")
    assert p.read_frame() == (0, b"OK")
    c.cmd(b"RDY 1")
    msg = c.read_message()
    assert msg["body"] == b"after the storm"
    c.cmd(b"FIN " + msg["id"])
    p.close()
    c.close()


def test_emptying_a_channel_while_its_backlog_is_read_keeps_the_broker_whole(brokers):
    """Q12 while a consumer drains a backlog spread over many small segments
    (--max-bytes-per-file=65536): each /channel/empty drops segment files the
    reader may be opening right then. The broker must stay up and go on
    delivering: a message published after the storm arrives, byte for byte."""
    b = brokers(args=["--mem-queue-size=0", "--max-bytes-per-file=65536"], cores=1)
    post_ok(b, "/topic/create?topic=drain")
    post_ok(b, "/channel/create?topic=drain&channel=c")
    p = Wire(b.tcp_address, timeout=10)
    batch = b"\x00\x00\x00\xc8" + (b"\x00\x00\x00\x64" + b"z" * 100) * 200

    def refill(n):
        for _ in range(n):
            p.cmd(b"MPUB drain", batch)
            assert p.read_frame() == (0, b"OK")

    refill(50)
    stop = threading.Event()
    errors = []
    received = [0]

    def consumer():
        c = Wire(b.tcp_address, timeout=10)
        try:
            c.cmd(b"SUB drain c")
            assert c.read_frame() == (0, b"OK")
            c.cmd(b"RDY 200")
            c.sock.settimeout(0.5)
            while not stop.is_set():
                try:
                    ftype, data = c.read_frame()
                except TimeoutError:
                    continue
                if ftype == 1:
                    # Emptied between delivery and FIN: nsqd's non-fatal answer.
                    assert data.startswith(b"E_FIN_FAILED"), data
                    continue
                assert ftype == 2, (ftype, data)
                received[0] += 1
                c.cmd(b"FIN " + data[10:26])
        except Exception as e:
            errors.append(repr(e))
        finally:
            c.close()

    t = threading.Thread(target=consumer)
    t.start()
    for _ in range(100):
        time.sleep(0.01)
        post_ok(b, "/channel/empty?topic=drain&channel=c")
        refill(5)
    stop.set()
    t.join(timeout=20)
    assert not errors, errors[:3]
    assert received[0] > 0
    assert b.proc.poll() is None, b.log()[-3000:]

    post_ok(b, "/channel/empty?topic=drain&channel=c")
    c = Wire(b.tcp_address, timeout=10)
    c.cmd(b"SUB drain c")
    assert c.read_frame() == (0, b"OK")
    p.cmd(b"PUB drain", b"after the drain storm")
    assert p.read_frame() == (0, b"OK")
    c.cmd(b"RDY 1")
    msg = c.read_message()
    assert msg["body"] == b"after the drain storm"
    p.close()
    c.close()


def test_durable_publishes_show_in_the_disk_metrics(brokers):
    """/metrics (ringsq's addition): 50 PUBs one after another in durable mode
    each wait for a group commit of their own, so the rounds and queue syncs
    counted are at least 50, none failed, the time spent is counted, and
    nothing is left waiting for the disk. An idle broker with the default
    policy counts no round at all."""
    idle = brokers(cores=1)
    assert metric(idle, "ringsq_core_disk_sync_rounds_total") == 0
    assert metric(idle, "ringsq_disk_failing_queues") == 0

    b = brokers(args=DURABLE, cores=1)
    p = Wire(b.tcp_address, timeout=10)
    for i in range(50):
        p.cmd(b"PUB m", b"durable %d" % i)
        assert p.read_frame() == (0, b"OK")
    p.close()
    assert metric(b, "ringsq_core_disk_sync_rounds_total") >= 50
    assert metric(b, "ringsq_core_disk_queues_synced_total") >= 50
    assert metric(b, "ringsq_core_disk_sync_failures_total") == 0
    assert metric(b, "ringsq_core_disk_sync_seconds_total") > 0
    assert metric(b, "ringsq_disk_failing_queues") == 0
    wait_for(lambda: metric(b, "ringsq_core_disk_unwritten_bytes") == 0,
             timeout=5, what="nothing left waiting for the disk")
