"""Taking over a data path written by nsqd 1.3.0 (D1, D3, D4, D5, D6, Q1, Q2, Q9, Q10, Q21).

nsqd_fixture.make_standard_fixture writes nsqd.dat and go-diskqueue files (topic and
channel queues, backlogs over several files, non-zero read positions, paused topic and
channel, a channel without files, a topic without channels); it was checked against the
real nsqd 1.3.0, which delivers exactly `expected` for each channel. ringsqd must do the
same: take over topics, channels and paused flags, deliver the whole unread backlog
exactly once (never the records before a read position), leave nsqd's files untouched
until they are consumed, and not deliver the backlog again after a restart.
"""

import collections
import hashlib
import os
import tempfile

from nsqd_fixture import make_standard_fixture
from helpers.disk import finish_then_stop
from helpers.http_api import post_ok, stats
from helpers.wait import wait_channel, wait_topic
from helpers.wire import RawConsumer

# What nsqd 1.3.0 reports right after starting on the fixture (Q21): the topic pump has
# copied `orders`' backlog into its channels; the paused topic `held` keeps its own.
DEPTHS = {
    ("orders", "billing"): 175,
    ("orders", "audit"): 135,
    ("orders", "fresh"): 125,
    ("held", "c"): 5,
}
TOPIC_DEPTHS = {"orders": 0, "idle": 80, "held": 20}


def start_on_fixture(brokers):
    d = tempfile.mkdtemp(prefix="ringsq-nsqd-")
    fx = make_standard_fixture(d)
    hashes = {p: digest(p) for p in fx.files}
    b = brokers(data_dir=d, cores=2)
    return b, fx, hashes


def digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return "missing"


def bodies(msgs):
    return collections.Counter(m.body for m in msgs)


def assert_exact(got, expected, fx, what):
    leaked = [m.body[:30] for m in got if m.body in {c.body for c in fx.consumed}]
    assert not leaked, f"{what}: records before nsqd's read position delivered: {leaked[:3]}"
    g, e = bodies(got), bodies(expected)
    assert g == e, (
        f"{what}: {len(got)} delivered, {len(expected)} expected; "
        f"missing {sum((e - g).values())}, extra/duplicate {sum((g - e).values())}"
    )


def assert_depths(b):
    for t, depth in TOPIC_DEPTHS.items():
        wait_topic(b, t, timeout=10, depth=depth)
    for (t, c), depth in DEPTHS.items():
        wait_channel(b, t, c, timeout=10, depth=depth)


def test_nsqd_data_path_is_taken_over(brokers):
    """D1-D5, Q1, Q2, Q9, Q10, Q21: topics, channels and paused flags come from nsqd.dat;
    /stats shows nsqd's depths; the files of queues nobody consumed yet (channels, the
    paused topic, the channel-less topic) are byte-identical; every
    channel delivers exactly its unread backlog plus the topic's (billing 175, fresh 125,
    audit 135 only once unpaused), a new channel of the channel-less topic `idle` gets
    its 80, the paused topic `held` passes its 20 on only after /topic/unpause; nothing
    before a read position is ever delivered."""
    b, fx, hashes = start_on_fixture(brokers)
    st = stats(b)
    assert [t["topic_name"] for t in st["topics"]] == ["held", "idle", "orders"]
    paused = {t["topic_name"]: t["paused"] for t in st["topics"]}
    assert paused == {"held": True, "idle": False, "orders": False}
    chans = {
        (t["topic_name"], c["channel_name"]): c["paused"] for t in st["topics"] for c in t["channels"]
    }
    assert chans == {("held", "c"): False, ("orders", "audit"): True, ("orders", "billing"): False,
                     ("orders", "fresh"): False}
    assert_depths(b)
    # `orders`' topic queue is consumed by its topic pump at once (nsqd too deletes those
    # files, D6); every other queue still waits for a consumer or an unpause.
    changed = [
        (os.path.basename(p), digest(p)[:8])
        for p, h in hashes.items()
        if not os.path.basename(p).startswith("orders.diskqueue.") and digest(p) != h
    ]
    assert changed == [], f"nsqd files modified before anything was consumed: {changed}"

    for ch in ("billing", "fresh"):
        c = RawConsumer(b, "orders", ch, rdy=300)
        exp = fx.expected[("orders", ch)]
        assert_exact(c.take(len(exp), quiet=0.5), exp, fx, f"orders/{ch}")

    audit = RawConsumer(b, "orders", "audit", rdy=300)
    assert audit.take(None, quiet=0.7) == [], "a paused channel delivered"
    post_ok(b, "/channel/unpause?topic=orders&channel=audit")
    exp = fx.expected[("orders", "audit")]
    assert_exact(audit.take(len(exp), quiet=0.5), exp, fx, "orders/audit")

    idle = RawConsumer(b, "idle", "first", rdy=300)
    exp = fx.topic_backlog["idle"]
    assert_exact(idle.take(len(exp), quiet=0.5), exp, fx, "idle/first")

    held = RawConsumer(b, "held", "c", rdy=300)
    exp = fx.expected[("held", "c")]
    assert_exact(held.take(len(exp), quiet=0.7), exp, fx, "held/c while the topic is paused")
    post_ok(b, "/topic/unpause?topic=held")
    exp = fx.topic_backlog["held"]
    assert_exact(held.take(len(exp), quiet=0.5), exp, fx, "held/c after /topic/unpause")

    for (t, c) in DEPTHS:
        wait_channel(b, t, c, depth=0, in_flight_count=0)
    for t in TOPIC_DEPTHS:
        wait_topic(b, t, depth=0)


def test_migrated_messages_keep_id_timestamp_and_attempts(brokers):
    """T6, T7, D4: as nsqd does, a message from nsqd's files keeps its 16-byte id and
    its timestamp, and is delivered with the stored attempts + 1 (the fixture has
    attempts 0, 1 and 2 on disk)."""
    b, fx, _ = start_on_fixture(brokers)
    by_body = {m.body: m for msgs in fx.expected.values() for m in msgs}
    for ch in ("billing", "fresh"):
        c = RawConsumer(b, "orders", ch, rdy=300)
        exp = fx.expected[("orders", ch)]
        got = c.take(len(exp), quiet=0.3)
        assert_exact(got, exp, fx, f"orders/{ch}")
        wrong = [
            (m.body[:20], m.id, m.timestamp, m.attempts)
            for m in got
            if (m.id, m.timestamp, m.attempts)
            != (by_body[m.body].id, by_body[m.body].timestamp, by_body[m.body].attempts + 1)
        ]
        assert wrong == [], f"orders/{ch}: id/timestamp/attempts differ from nsqd's: {wrong[:3]}"


def test_migrated_backlog_is_not_delivered_again_after_restart(brokers):
    """D10 across the migration: 60 of billing's 175 are FINished; after a clean restart
    billing delivers exactly the other 115 (not the nsqd backlog again), fresh its 125
    (once), depths are as before for the untouched queues; after all is FINished and
    one more clean restart, billing and fresh are empty and deliver nothing, audit still
    holds its 135 and is still paused."""
    b, fx, _ = start_on_fixture(brokers)
    assert_depths(b)
    first = finish_then_stop(b, "orders", "billing", 60, left=115)

    b = brokers(data_dir=fx.data_path, cores=2)
    wait_channel(b, "orders", "billing", timeout=10, depth=115)
    for key in (("orders", "fresh"), ("orders", "audit"), ("held", "c")):
        wait_channel(b, *key, timeout=10, depth=DEPTHS[key])
    for t in ("idle", "held"):
        wait_topic(b, t, timeout=10, depth=TOPIC_DEPTHS[t])
    rest = list((bodies(fx.expected[("orders", "billing")]) - bodies(first)).elements())
    c = RawConsumer(b, "orders", "billing", rdy=300)
    got = c.take(115, quiet=0.5)
    g = collections.Counter(m.body for m in got)
    assert g == collections.Counter(rest), f"billing after restart: {len(got)} delivered, 115 expected"
    f = RawConsumer(b, "orders", "fresh", rdy=300)
    assert_exact(f.take(125, quiet=0.5), fx.expected[("orders", "fresh")], fx, "orders/fresh after restart")
    wait_channel(b, "orders", "billing", depth=0, in_flight_count=0)
    wait_channel(b, "orders", "fresh", depth=0, in_flight_count=0)
    assert b.stop() == 0
    c.close()
    f.close()

    b = brokers(data_dir=fx.data_path, cores=2)
    wait_channel(b, "orders", "billing", timeout=10, depth=0)
    wait_channel(b, "orders", "fresh", timeout=10, depth=0)
    wait_channel(b, "orders", "audit", timeout=10, depth=135, paused=True)
    for ch in ("billing", "fresh"):
        c = RawConsumer(b, "orders", ch, rdy=300)
        again = c.take(None, quiet=0.7)
        assert again == [], f"orders/{ch}: {len(again)} messages delivered again after restart"
