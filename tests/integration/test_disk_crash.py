"""kill -9 and restart on the same data path (D7, D9, D10, D11; ringsq's durable mode).

ringsq's contract (stronger than nsqd's D9/D11):
- --sync-every=1: PUB/MPUB/DPUB answer OK only once the records are on disk; every
  non-ephemeral message goes through disk. After SIGKILL at any moment every message
  that got OK is delivered after restart (at least once: messages in flight or FINished
  just before the crash may come again), and no delivered body is corrupt or unknown.
- default policy (--sync-every=2500, here --sync-timeout=200ms), --mem-queue-size=0:
  only messages acknowledged within the last sync window may be missing.
- the consume position advances on FIN, not on delivery: delivered-but-unFINished
  messages are delivered again after a crash (nsqd loses them, D9).

Note: SIGKILL keeps the kernel page cache, so these tests prove "written before OK"
and "recovered after a crash", not fdatasync itself (that needs a power cut).
"""

import random
import threading
import time

import pytest

from helpers.http_api import post_ok
from helpers.wait import wait_channel
from helpers.wire import OK, cmd_bytes, Conn, mpub_body, publish_all, RawConsumer

PATTERN = bytes(random.Random(11).randrange(256) for _ in range(8192))


def make_body(tag, seq):
    n = (seq * 7919) % 600
    off = (seq * 104729) % 7000
    return b"%s-%08d|" % (tag, seq) + PATTERN[off:off + n]


def by_tag(bodies):
    """{publisher tag: count} of `bodies`, for failure messages."""
    out = {}
    for x in bodies:
        tag = x.split(b"|", 1)[0].rsplit(b"-", 1)[0].decode()
        out[tag] = out.get(tag, 0) + 1
    return dict(sorted(out.items()))


def seq_of(body):
    """The sequence number make_body put in `body`."""
    return int(body.split(b"|", 1)[0].rsplit(b"-", 1)[1])


class LoadPublisher(threading.Thread):
    """Publishes on one connection until the broker dies: mode `pub` (PUB), `mpub`
    (MPUB of 10) or `dpub` (DPUB, 300 ms). Records what was sent and what was
    acknowledged (with the time of the OK)."""

    def __init__(self, b, topic, tag, mode):
        super().__init__(daemon=True)
        self.b, self.topic, self.tag, self.mode = b, topic, tag, mode
        self.sent = set()
        self.acked = []  # (body, monotonic time of the OK)
        self.errors = []
        self.seq = 0
        self.stop = threading.Event()

    def run(self):
        try:
            c = Conn(self.b, timeout=10)
        except OSError:
            return
        try:
            while not self.stop.is_set():
                k = 10 if self.mode == "mpub" else 1
                bodies = [make_body(self.tag, self.seq + j) for j in range(k)]
                self.seq += k
                if self.mode == "mpub":
                    data = cmd_bytes(f"MPUB {self.topic}", mpub_body(bodies))
                elif self.mode == "dpub":
                    data = cmd_bytes(f"DPUB {self.topic} 300", bodies[0])
                else:
                    data = cmd_bytes(f"PUB {self.topic}", bodies[0])
                self.sent.update(bodies)
                c.send(data)
                fr = c.read_frame()
                if fr != OK:
                    self.errors.append(fr)
                    return
                now = time.monotonic()
                self.acked.extend((body, now) for body in bodies)
        except (OSError, ConnectionError):
            pass  # the broker was killed
        finally:
            c.close()


class LoadConsumer(threading.Thread):
    """Consumes (and FINs) everything until the broker dies."""

    def __init__(self, b, topic, channel):
        super().__init__(daemon=True)
        self.c = RawConsumer(b, topic, channel, rdy=500)
        self.bodies = []

    def run(self):
        try:
            while True:
                self.c.take(None, quiet=0.5, timeout=0.5, on_message=lambda m: self.bodies.append(m.body))
        except (OSError, ConnectionError):
            pass
        finally:
            self.c.close()


def drain(b, topic, channel, must, timeout=60.0, idle=5.0):
    """Consume until every body of `must` arrived (then 1 s more), or nothing arrived
    for `idle` s, or `timeout`."""
    c = RawConsumer(b, topic, channel, rdy=2500)
    got = []
    seen = set()
    deadline = time.time() + timeout
    last_new = time.time()
    while time.time() < deadline and time.time() - last_new < idle:
        new = c.take(None, quiet=0.5, timeout=min(5.0, max(deadline - time.time(), 0.1)))
        if new:
            last_new = time.time()
        got.extend(m.body for m in new)
        seen.update(m.body for m in new)
        if must <= seen and not new:
            break
    got.extend(m.body for m in c.take(None, quiet=1.0, timeout=5))
    c.close()
    return got


def assert_no_duplicates(bodies, what):
    dups = len(bodies) - len(set(bodies))
    assert dups == 0, f"{dups} messages delivered twice {what}"


def test_sync_every_1_acknowledged_messages_survive_kill9_at_any_point(brokers):
    """ringsq durable mode (--sync-every=1), D11 made strict: three rounds of PUB, MPUB
    and DPUB load with a consumer FINishing as it goes, each ended by SIGKILL at a
    different moment (0.3 s, 0.8 s, 1.5 s); after the last restart every acknowledged
    body was delivered (before or after a crash), every delivered body is one that was
    sent (no corrupt or unknown body), and no body is delivered twice within one broker
    lifetime."""
    args = ["--sync-every=1", "--cores=2"]
    sent, acked = set(), set()
    lifetimes = []
    data_dir = None
    for rnd, kill_after in enumerate([0.3, 0.8, 1.5]):
        b = brokers(args=args, cores=None, data_dir=data_dir)
        data_dir = b.data_dir
        cons = LoadConsumer(b, "dur", "c")
        cons.start()
        pubs = [
            LoadPublisher(b, "dur", b"r%d-%s" % (rnd, mode.encode()), mode)
            for mode in ("pub", "mpub", "dpub", "mpub")
        ]
        for i, p in enumerate(pubs):
            p.tag += b"-%d" % i
            p.start()
        time.sleep(kill_after)
        b.kill9()
        for t in pubs + [cons]:
            t.join(timeout=15)
            assert not t.is_alive()
        for p in pubs:
            assert p.errors == [], p.errors
            sent |= p.sent
            acked |= {body for body, _ in p.acked}
        lifetimes.append(cons.bodies)
        assert sum(len(p.acked) for p in pubs) > 0, f"round {rnd}: nothing acknowledged"

    b = brokers(args=args, cores=None, data_dir=data_dir)
    final = drain(b, "dur", "c", acked)
    lifetimes.append(final)
    delivered = set(x for life in lifetimes for x in life)
    missing = acked - delivered
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost: {by_tag(missing)}"
    unknown = delivered - sent
    assert not unknown, f"{len(unknown)} delivered bodies were never sent (corrupt?): {sorted(unknown)[:3]}"
    for i, life in enumerate(lifetimes):
        assert_no_duplicates(life, f"within broker lifetime {i}")


def test_sync_every_1_ok_then_immediate_kill9(brokers):
    """Durable mode: five rounds on the same data path, each publishing one kind (PUB,
    MPUB of 50, DPUB of 2 s) and ending in SIGKILL as soon as the last OK is read; sent
    both to a topic without
    channels (`okk`) and to a topic with a channel (`okc`, where a DPUB lands in the
    channel's deferred queue, Q8): after the last restart all of them are delivered,
    exactly once (nothing was ever consumed), bodies exact."""
    args = ["--sync-every=1"]
    data_dir = None
    expected = {"okk": [], "okc": []}
    for rnd in range(5):
        b = brokers(args=args, data_dir=data_dir, cores=2)
        data_dir = b.data_dir
        if rnd == 0:
            post_ok(b, "/topic/create?topic=okc")
            post_ok(b, "/channel/create?topic=okc&channel=c")
        kind = ("PUB", "MPUB", "DPUB", "PUB", "DPUB")[rnd]
        for topic in ("okk", "okc"):
            c = Conn(b)
            tag = b"%s-%s-%d" % (topic.encode(), kind.lower().encode(), rnd)
            if kind == "PUB":
                bodies = [make_body(tag, 1)]
                c.cmd(f"PUB {topic}", bodies[0])
            elif kind == "MPUB":
                bodies = [make_body(tag, j) for j in range(50)]
                c.cmd(f"MPUB {topic}", mpub_body(bodies))
            else:
                bodies = [make_body(tag, 1)]
                c.cmd(f"DPUB {topic} 2000", bodies[0])
            assert c.read_frame() == OK
            if topic == "okc":
                b.kill9()
            c.close()
            expected[topic] += bodies
    b = brokers(args=args, data_dir=data_dir, cores=2)
    for topic in ("okk", "okc"):
        got = drain(b, topic, "c", set(expected[topic]), timeout=20)
        missing = set(expected[topic]) - set(got)
        assert not missing, f"{topic}: acknowledged but lost: {by_tag(missing)}"
        assert sorted(got) == sorted(expected[topic]), f"{topic}: duplicates or unknown bodies"


def test_default_policy_loses_at_most_the_sync_window(brokers):
    """D7/D11 with --mem-queue-size=0 and --sync-timeout=200ms (sync-every 2500): a
    20,000-message burst followed by 1 s of quiet survives SIGKILL entirely; of a
    continuous load running when SIGKILL hits, every message acknowledged more than
    sync-timeout + 1 s before the kill survives. Nothing was consumed before the crash,
    so nothing is delivered twice; survivors come in publish order (one publisher per
    phase, one channel, mem-queue-size 0); no unknown body."""
    args = ["--mem-queue-size=0", "--sync-timeout=200ms"]
    b = brokers(args=args, cores=2)
    post_ok(b, "/topic/create?topic=win")
    post_ok(b, "/channel/create?topic=win&channel=c")
    burst = [make_body(b"burst", i) for i in range(20000)]
    publish_all(b, "win", burst)
    time.sleep(1.0)
    load = LoadPublisher(b, "win", b"load", "mpub")
    load.start()
    time.sleep(2.5)
    t_kill = time.monotonic()
    b.kill9()
    load.join(timeout=15)
    assert load.errors == []
    must_load = [body for body, t in load.acked if t < t_kill - 1.2]
    assert len(must_load) > 0, "the load published nothing early enough"

    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    got = drain(b, "win", "c", set(burst) | set(must_load))
    assert_no_duplicates(got, "after a crash with nothing consumed before it")
    gs = set(got)
    missing_burst = [i for i, x in enumerate(burst) if x not in gs]
    assert not missing_burst, f"{len(missing_burst)} burst messages lost (synced 1 s before the kill)"
    missing_load = [x for x in must_load if x not in gs]
    assert not missing_load, f"{len(missing_load)} of {len(must_load)} load messages acknowledged >1.2 s before the kill lost"
    unknown = gs - set(burst) - load.sent
    assert not unknown, f"{len(unknown)} unknown bodies"
    idx = [seq_of(x) + (0 if x.startswith(b"burst-") else len(burst)) for x in got]
    assert idx == sorted(idx), "survivors must come in publish order"


@pytest.mark.parametrize("args", [["--sync-every=1"], ["--mem-queue-size=0", "--sync-timeout=200ms"]],
                         ids=["sync-every-1", "mem0-default-sync"])
def test_delivered_but_not_finished_is_redelivered_after_kill9(brokers, args):
    """D9 fixed: the consume position advances on FIN. 200 messages are delivered; the
    first 80 and every third after are FINished, the others stay in flight; after 1 s
    (sync windows passed) SIGKILL. After restart every unFINished message is delivered
    again (bodies exact), nothing unknown, nothing twice in the new lifetime;
    FINished ones may come again (at-least-once)."""
    bodies = [make_body(b"infl", i) for i in range(200)]
    b = brokers(args=args, cores=2)
    post_ok(b, "/topic/create?topic=infl")
    post_ok(b, "/channel/create?topic=infl&channel=c")
    publish_all(b, "infl", bodies, batch=50)
    time.sleep(1.0)
    c = RawConsumer(b, "infl", "c", rdy=250, fin=False)
    got = c.take(200, quiet=0.5, timeout=20)
    assert sorted(m.body for m in got) == sorted(bodies)
    fin = [m for i, m in enumerate(got) if i < 80 or i % 3 == 0]
    c.finish([m.id for m in fin])
    unfinished = {m.body for m in got} - {m.body for m in fin}
    wait_channel(b, "infl", "c", in_flight_count=len(unfinished))
    time.sleep(1.0)
    b.kill9()
    c.close()

    b = brokers(args=args, data_dir=b.data_dir, cores=2)
    again = drain(b, "infl", "c", unfinished, timeout=30)
    assert_no_duplicates(again, "after restart")
    missing = unfinished - set(again)
    assert not missing, f"{len(missing)} of {len(unfinished)} unFINished messages not redelivered"
    assert set(again) <= set(bodies)
