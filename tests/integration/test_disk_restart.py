"""Clean shutdown (SIGTERM) and restart on the same data path (D1, D2, D10, D12, Q8-Q10).

ringsq keeps across a clean restart what nsqd keeps (D10: memory queues, in-flight and
deferred messages) and more: deferred messages (DPUB, REQ with a delay) keep their due
time instead of being delivered at once. The consume position is kept: FINished
messages never come back. Paused flags (nsqd.dat) and topics whose segment files exist
are restored; ephemeral channels never touch the disk.
"""

import json
import os
import time

import pytest

from helpers.disk import finish_then_stop
from helpers.http_api import post_ok, stats, topic_stats
from helpers.wait import wait_channel, wait_topic
from helpers.wire import OK, Conn, publish_all, RawConsumer

REQ_DELAY = 5.0
DPUB_DELAY = 6.0


@pytest.mark.parametrize("mem", [10000, 0], ids=["mem10000", "mem0"])
def test_clean_restart_keeps_memory_inflight_and_deferred(brokers, mem):
    """D10 + ringsq's deferred due times, Q2, Q8: channel `keep:c` holds 300 messages;
    20 are delivered, 5 FINished, 1 REQ'd with 0, 1 REQ'd with 5 s, 13 left in flight;
    2 DPUBs with 6 s; topic `lone` (no channel) holds 50. After SIGTERM (exit 0) and
    restart: the channel reports depth 294 and 3 deferred; the 294 (queue + in flight +
    REQ 0) arrive at once, the FINished 5 never; the REQ'd one not before 5 s after its
    REQ and the DPUBs not before 6 s after the DPUB, but they do arrive; `lone`'s 50
    arrive in order at its first channel."""
    b = brokers(args=[f"--mem-queue-size={mem}"], cores=2)
    post_ok(b, "/topic/create?topic=keep")
    post_ok(b, "/channel/create?topic=keep&channel=c")
    bodies = [b"keep-%04d" % i for i in range(300)]
    publish_all(b, "keep", bodies)
    lone = [b"lone-%03d" % i for i in range(50)]
    publish_all(b, "lone", lone)
    wait_channel(b, "keep", "c", depth=300)

    c = RawConsumer(b, "keep", "c", rdy=20, fin=False)
    got = c.take(20, quiet=0.3)
    assert len(got) == 20
    c.rdy(0)
    c.finish([m.id for m in got[:5]])
    c.req(got[5].id, 0)
    t_req = time.time()
    c.req(got[6].id, int(REQ_DELAY * 1000))
    p = Conn(b)
    dpubs = [b"dpub-a", b"dpub-b"]
    t_dpub = time.time()
    for d in dpubs:
        p.cmd(f"DPUB keep {int(DPUB_DELAY * 1000)}", d)
        assert p.read_frame() == OK
    p.close()
    wait_channel(b, "keep", "c", depth=281, in_flight_count=13, deferred_count=3)
    assert b.stop() == 0, b.log()[-2000:]
    c.close()

    b = brokers(args=[f"--mem-queue-size={mem}"], data_dir=b.data_dir, cores=2)
    wait_channel(b, "keep", "c", timeout=2.0, depth=294, in_flight_count=0, deferred_count=3)
    finished = {m.body for m in got[:5]}
    reqd = got[6].body
    now_expected = sorted(x for x in bodies if x not in finished and x != reqd)
    c = RawConsumer(b, "keep", "c", rdy=500)
    first = c.take(294, quiet=0.2, timeout=20)
    assert sorted(m.body for m in first) == now_expected
    later = c.take(3, quiet=1.0, timeout=max(DPUB_DELAY, REQ_DELAY) + 6, idle=max(DPUB_DELAY, REQ_DELAY) + 5)
    assert sorted(m.body for m in later) == sorted(dpubs + [reqd])
    for m in later:
        due = t_req + REQ_DELAY if m.body == reqd else t_dpub + DPUB_DELAY
        assert m.arrived >= due - 0.1, f"{m.body!r} arrived {due - m.arrived:.2f}s before its due time"

    lc = RawConsumer(b, "lone", "first", rdy=100)
    assert [m.body for m in lc.take(50, quiet=0.3)] == lone


@pytest.mark.parametrize("mem", [0, 10000], ids=["mem0", "mem10000"])
def test_finished_messages_never_come_back(brokers, mem):
    """D10, FIN moves the consume position: of 500 messages 300 are delivered and
    FINished; after a clean restart exactly the other 200 are delivered (in publish
    order with --mem-queue-size=0); after they are FINished too and another clean
    restart, the channel is empty and nothing is delivered."""
    args = [f"--mem-queue-size={mem}"]
    b = brokers(args=args, cores=2)
    post_ok(b, "/topic/create?topic=fin")
    post_ok(b, "/channel/create?topic=fin&channel=c")
    bodies = [b"fin-%04d" % i for i in range(500)]
    publish_all(b, "fin", bodies)
    first = finish_then_stop(b, "fin", "c", 300, left=200)
    done = {m.body for m in first}
    rest = [x for x in bodies if x not in done]

    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    wait_channel(b, "fin", "c", depth=200)
    c = RawConsumer(b, "fin", "c", rdy=500)
    got = [m.body for m in c.take(200, quiet=0.5)]
    if mem == 0:
        assert got == rest
    else:
        assert sorted(got) == rest
    wait_channel(b, "fin", "c", depth=0, in_flight_count=0)
    assert b.stop() == 0
    c.close()

    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    wait_channel(b, "fin", "c", depth=0, backend_depth=0)
    c = RawConsumer(b, "fin", "c", rdy=500)
    assert c.take(None, quiet=0.7) == []


def test_paused_topic_and_channel_keep_backlog_across_restart(brokers):
    """D1/D2, Q9, Q10: a paused topic holding 100 messages and a paused channel holding
    100 are still paused after a clean restart, with the same depths, deliver nothing
    while paused, and everything in publish order once unpaused."""
    args = ["--mem-queue-size=0"]
    b = brokers(args=args, cores=2)
    for t in ("pt", "pc"):
        post_ok(b, f"/topic/create?topic={t}")
        post_ok(b, f"/channel/create?topic={t}&channel=c")
    post_ok(b, "/topic/pause?topic=pt")
    post_ok(b, "/channel/pause?topic=pc&channel=c")
    pt = [b"pt-%03d" % i for i in range(100)]
    pc = [b"pc-%03d" % i for i in range(100)]
    publish_all(b, "pt", pt)
    publish_all(b, "pc", pc)
    wait_topic(b, "pt", depth=100)
    wait_channel(b, "pc", "c", depth=100)
    assert b.stop() == 0

    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    t = wait_topic(b, "pt", depth=100, paused=True)
    assert [(x["channel_name"], x["depth"], x["paused"]) for x in t["channels"]] == [("c", 0, False)]
    wait_channel(b, "pc", "c", depth=100, paused=True)
    assert topic_stats(b, "pc")["paused"] is False
    cpt = RawConsumer(b, "pt", "c", rdy=200)
    cpc = RawConsumer(b, "pc", "c", rdy=200)
    assert cpt.take(None, quiet=0.7) == []
    assert cpc.take(None, quiet=0.1) == []
    post_ok(b, "/topic/unpause?topic=pt")
    post_ok(b, "/channel/unpause?topic=pc&channel=c")
    assert [m.body for m in cpt.take(100, quiet=0.3)] == pt
    assert [m.body for m in cpc.take(100, quiet=0.3)] == pc


def test_topic_restored_from_segment_files_without_nsqd_dat(brokers):
    """ringsq: a topic whose segment files exist comes back even when nsqd.dat does not
    list it (here: deleted after a clean stop): /stats shows it with depth 100 and its
    first channel receives the 100 messages in order."""
    args = ["--mem-queue-size=0"]
    b = brokers(args=args, cores=2)
    bodies = [b"seg-%03d" % i for i in range(100)]
    publish_all(b, "seg", bodies)
    wait_topic(b, "seg", depth=100)
    assert b.stop() == 0
    os.remove(os.path.join(b.data_dir, "nsqd.dat"))

    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    wait_topic(b, "seg", depth=100)
    c = RawConsumer(b, "seg", "c", rdy=200)
    assert [m.body for m in c.take(100, quiet=0.3)] == bodies


def test_ephemeral_channel_never_on_disk_nor_restored(brokers):
    """D12, Q15: with --mem-queue-size=0 a topic with a durable channel `d` and an
    ephemeral channel `e#ephemeral` (consumer at RDY 0) gets 50 messages: no file of the
    data path ever names the ephemeral channel, nsqd.dat does not list it, and after a
    clean restart only `d` exists, with its 50 messages."""
    args = ["--mem-queue-size=0"]
    b = brokers(args=args, cores=2)
    post_ok(b, "/topic/create?topic=eph")
    post_ok(b, "/channel/create?topic=eph&channel=d")
    e = RawConsumer(b, "eph", "e#ephemeral", rdy=0)
    bodies = [b"eph-%02d" % i for i in range(50)]
    publish_all(b, "eph", bodies)
    wait_channel(b, "eph", "d", depth=50)
    assert [n for n in os.listdir(b.data_dir) if "ephemeral" in n] == []
    assert b.stop() == 0
    e.close()
    assert [n for n in os.listdir(b.data_dir) if "ephemeral" in n] == []
    with open(os.path.join(b.data_dir, "nsqd.dat")) as f:
        meta = json.load(f)
    assert meta["topics"] == [{"channels": [{"name": "d", "paused": False}], "name": "eph", "paused": False}]

    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    t = wait_topic(b, "eph", depth=0)
    assert [x["channel_name"] for x in t["channels"]] == ["d"]
    wait_channel(b, "eph", "d", depth=50)
    c = RawConsumer(b, "eph", "d", rdy=100)
    assert [m.body for m in c.take(50, quiet=0.3)] == bodies


def test_first_channel_right_after_restart_gets_the_topic_backlog(brokers):
    """Q2 across a restart: a topic without channels holds 20,000 messages on disk
    (--mem-queue-size=0); right after a clean restart (no request in between) a SUB
    creates its first channel, which receives all 20,000 in publish order, none twice,
    while the topic's backlog is being read back."""
    args = ["--mem-queue-size=0"]
    b = brokers(args=args, cores=2)
    bodies = [b"first-%05d-" % i + b"x" * (i % 200) for i in range(20000)]
    publish_all(b, "first", bodies)
    wait_topic(b, "first", depth=20000)
    assert b.stop() == 0

    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    c = RawConsumer(b, "first", "c", rdy=2500)
    got = [m.body for m in c.take(20000, quiet=0.5, timeout=60)]
    assert len(got) == 20000 and got == bodies, f"{len(got)} of 20000 delivered, or out of order"


def test_ephemeral_topic_not_restored_from_its_channel_files(brokers):
    """D12: a durable channel of an ephemeral topic has a disk queue (as in nsqd), but
    nsqd never restores an ephemeral topic after a restart; neither does ringsqd, even
    though the channel's files are on disk."""
    args = ["--mem-queue-size=0"]
    b = brokers(args=args, cores=2)
    post_ok(b, "/topic/create?topic=tmp%23ephemeral")
    post_ok(b, "/channel/create?topic=tmp%23ephemeral&channel=keep")
    publish_all(b, "tmp#ephemeral", [b"e-%02d" % i for i in range(10)])
    wait_channel(b, "tmp#ephemeral", "keep", depth=10)
    assert b.stop() == 0
    assert [n for n in os.listdir(b.data_dir) if n.startswith("tmp#ephemeral:keep.")] != []
    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    post_ok(b, "/topic/create?topic=other")
    wait_topic(b, "other", depth=0)
    assert [t["topic_name"] for t in stats(b)["topics"]] == ["other"]
