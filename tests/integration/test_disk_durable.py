"""Durable mode (--sync-every=1) corner cases beyond crash survival, found in
review of the disk queue: deferred messages stored on disk keep their due time
when a paused topic holds them, and emptying a channel under durable load
never wedges the core's group commit (D7 ringsq extension, Q9, Q12)."""

import threading
import time

from conftest import Wire
from test_disk_support import brokers, post  # noqa: F401  (brokers is a fixture)

DURABLE = ["--sync-every=1"]


def test_durable_dpub_held_by_a_paused_topic_keeps_its_due_time(brokers):
    """A DPUB of 6 s to a paused topic (held on disk), a clean restart (the
    message is then read back from the topic's segment file), unpause: it must
    not arrive before its due time, and must arrive after it."""
    b = brokers(args=DURABLE)
    post(b, "/topic/create?topic=held")
    post(b, "/channel/create?topic=held&channel=c")
    post(b, "/topic/pause?topic=held")
    p = Wire(b.tcp_address)
    sent = time.time()
    p.cmd(b"DPUB held 6000", b"later")
    assert p.read_frame() == (0, b"OK")
    p.close()
    assert b.terminate() == 0
    b = brokers(args=DURABLE, data_dir=b.data_dir)
    c = Wire(b.tcp_address, timeout=10)
    c.cmd(b"SUB held c")
    assert c.read_frame() == (0, b"OK")
    c.cmd(b"RDY 1")
    post(b, "/topic/unpause?topic=held")
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
    post(b, "/topic/create?topic=t")
    post(b, "/channel/create?topic=t&channel=c")
    stop = threading.Event()
    errors = []
    counts = [0] * 4

    def publisher(k):
        w = Wire(b.tcp_address, timeout=10)
        body = b"\x00\x00\x00\x64" + (b"\x00\x00\x00\x10" + b"x" * 16) * 100
        try:
            while not stop.is_set():
                w.cmd(b"MPUB t", body)
                frame = w.read_frame()
                if frame != (0, b"OK"):
                    errors.append(frame)
                    return
                counts[k] += 1
        except Exception as e:  # a timeout here is the failure this test is about
            errors.append(repr(e))
        finally:
            w.close()

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for _ in range(30):
        post(b, "/channel/empty?topic=t&channel=c")
        time.sleep(0.03)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors[:3]
    assert all(n > 0 for n in counts), counts
    w = Wire(b.tcp_address, timeout=5)
    w.cmd(b"PUB t", b"after")
    assert w.read_frame() == (0, b"OK")
    w.close()
