"""Taking over data paths written by a real nsqd 1.3.0 (D1-D10, Q2, Q9, T6, T7).

tests/data/nsqd-1.3.0/<case>/data is a data path exactly as nsqd 1.3.0 left it at a
clean shutdown (made by scripts/make-nsqd-datapaths.py, see the README there);
manifest.json says what nsqd itself shows and delivers on it, checked against nsqd by
the generator's --verify. For every case ringsqd, started on a copy, must show the same
topics, channels, paused flags and depths, deliver every message once with its stored
id, timestamp and body and attempts + 1, never deliver what nsqd had consumed (before a
read position, or in a `*.bad` file), never write into nsqd's files (only delete those
it has read to the end, never leaving a segment without its meta), and resume after a
restart in the middle of the consumption with nothing lost and nothing twice.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers.http_api import post_ok, stats
from helpers.wait import wait_channel, wait_topic
from helpers.wire import RawConsumer

DATA = Path(__file__).resolve().parents[1] / "data" / "nsqd-1.3.0"
CASES = sorted(p.name for p in DATA.iterdir() if (p / "manifest.json").exists())


def test_all_cases_are_present():
    """The five shapes of tests/data/nsqd-1.3.0/README.md are all committed."""
    assert CASES == ["memory-flush", "paused", "segments-midfile", "shutdown-inflight-deferred",
                     "topic-without-channel"]


# ----------------------------------------------------------------------------- helpers


def load(case):
    with open(DATA / case / "manifest.json") as f:
        return json.load(f)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def copy_case(case):
    """A fresh copy of the case's data path; checks that the committed files are the
    ones the manifest describes."""
    m = load(case)
    src = DATA / case / "data"
    committed = {p.name: {"size": p.stat().st_size, "sha256": sha(p)} for p in sorted(src.iterdir())}
    assert committed == m["files"], f"{case}: committed data differs from its manifest"
    d = tempfile.mkdtemp(prefix=f"ringsq-nsqd130-{case}-")
    shutil.rmtree(d)
    shutil.copytree(src, d)
    return m, d


def messages(m):
    """id -> stored message (id, timestamp, attempts, body)."""
    out = {}
    for q in m["queues"].values():
        for msg in q["messages"]:
            out[msg["id"].encode()] = (msg["timestamp"], msg["attempts"], base64.b64decode(msg["body_b64"]))
    return out


def stop_and_check_files(b, m, d):
    """A clean stop leaves no segment without its meta and nsqd's files unwritten."""
    assert b.stop() == 0
    assert_no_orphan_segments(d)
    nsqd_files_untouched(m, d)


def nsqd_files_untouched(m, d):
    """Every nsqd file (diskqueue segment, meta, `*.bad`) still in `d` is byte-identical
    to nsqd's: ringsqd may delete a file it has consumed, never write one. Returns the
    nsqd files that are gone."""
    changed, gone = [], []
    for name, f in m["files"].items():
        if name == "nsqd.dat":
            continue  # shared metadata, ringsqd rewrites it in nsqd's format (D1, D2)
        p = os.path.join(d, name)
        if not os.path.exists(p):
            gone.append(name)
        elif sha(p) != f["sha256"]:
            changed.append(name)
    assert changed == [], f"ringsqd wrote into nsqd's files: {changed}"
    return gone


def assert_no_orphan_segments(d):
    """No nsqd segment is left without its meta file: nothing would ever read or delete
    it again (a caught-up queue's wholly read write file, D5, D6)."""
    names = os.listdir(d)
    orphans = [n for n in names if re.fullmatch(r".+\.diskqueue\.\d{6}\.dat", n)
               and n.rsplit(".", 2)[0] + ".meta.dat" not in names]
    assert orphans == [], f"nsqd segments left without their meta: {orphans}"


def assert_stats(b, m):
    """Topics, channels, paused flags and depths as nsqd shows them (D1, D2, Q21)."""
    for topic, t in m["stats"].items():
        wait_topic(b, topic, timeout=10, depth=t["depth"], paused=t["paused"])
        for ch, c in t["channels"].items():
            wait_channel(b, topic, ch, timeout=10, depth=c["depth"], paused=c["paused"])
    st = stats(b)
    assert sorted(t["topic_name"] for t in st["topics"]) == sorted(m["stats"])
    got = {t["topic_name"]: sorted(c["channel_name"] for c in t["channels"]) for t in st["topics"]}
    assert got == {t: sorted(v["channels"]) for t, v in m["stats"].items()}


def expected_order(e):
    """Ids a channel delivers in order: its own queue, then the topic's (D10, Q2)."""
    return [i.encode() for i in e["channel_queue"] + e["topic_queue"]]


def check_exact(got, want_ids, stored, what):
    """Byte-exact: the ids in order, each with its stored timestamp and body and
    attempts + 1 (T6, T7), none twice, none missing."""
    ids = [g.id for g in got]
    assert len(ids) == len(set(ids)), f"{what}: duplicates delivered"
    assert ids == want_ids, (
        f"{what}: {len(ids)} delivered, {len(want_ids)} expected; missing "
        f"{len(set(want_ids) - set(ids))}, unexpected {len(set(ids) - set(want_ids))}")
    for g in got:
        ts, attempts, body = stored[g.id]
        assert (g.timestamp, g.attempts, g.body) == (ts, attempts + 1, body), f"{what}: message {g.id} differs"


def unpause_and_take(b, e, stored, count=None):
    """Consume channel e (from manifest "consume") as nsqd would deliver it: nothing
    from a paused channel before /channel/unpause, nothing of a paused topic's queue
    before /topic/unpause (Q9). Takes `count` messages (all by default), FINs them, and
    returns them with the consumer (RDY 0, nothing in flight)."""
    t, ch = e["topic"], e["channel"]
    want = expected_order(e)
    count = len(want) if count is None else count
    # FIN only after RDY 0: RDY bounds what is in flight, so exactly `n` come
    c = RawConsumer(b, t, ch, rdy=0, fin=False)

    def take(n, rdy):
        c.rdy(rdy)
        msgs = c.take(n, quiet=0.5)
        c.rdy(0)
        c.finish([g.id for g in msgs])
        return msgs

    got = []
    if e["channel_paused"]:
        assert take(None, 1000) == [], f"{t}/{ch}: a paused channel delivered"
        post_ok(b, f"/channel/unpause?topic={t}&channel={ch}")
    own = len(e["channel_queue"])
    if e["topic_paused"]:
        first = min(own, count)
        # all of its own queue and no more while the topic is paused
        got += take(first, own + 50 if first == own else first)
        assert len(got) == first, f"{t}/{ch}: {len(got)} of its own {first} while the topic is paused"
        post_ok(b, f"/topic/unpause?topic={t}")
    left = count - len(got)
    if left:
        got += take(left, left)
    check_exact(got, want[:count], stored, f"{t}/{ch}")
    wait_channel(b, t, ch, timeout=10, in_flight_count=0, depth=len(want) - count)
    return got, c


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES)
def test_takeover_delivers_nsqd_data_path_exactly(brokers, case):
    """D1-D10: on a copy of nsqd's data path ringsqd shows nsqd's topics, channels,
    paused flags and depths before anything is consumed, without having written into
    any nsqd file; then every channel (and a first channel of each topic without one)
    delivers exactly the manifest's messages, in order, once, byte for byte, and the
    queues end empty; nsqd's remaining files are still byte-identical, its `*.bad`
    files are left alone, and no nsqd segment is left without its meta file."""
    m, d = copy_case(case)
    stored = messages(m)
    b = brokers(data_dir=d, cores=2)
    assert_stats(b, m)
    nsqd_files_untouched(m, d)
    for e in m["consume"]:
        _, c = unpause_and_take(b, e, stored)
        c.rdy(100)
        assert c.take(None, quiet=0.3) == [], f"{e['topic']}/{e['channel']}: delivered more"
        c.close()
    for topic in m["stats"]:
        wait_topic(b, topic, depth=0)
    assert b.stop() == 0
    assert_no_orphan_segments(d)
    gone = nsqd_files_untouched(m, d)
    bad = [n for n in m["files"] if n.endswith(".bad")]
    assert not set(bad) & set(gone), "ringsqd removed nsqd's *.bad files"


@pytest.mark.parametrize("case", CASES)
def test_takeover_restart_mid_consumption(brokers, case):
    """D10 across a restart: the first half of every channel's messages is FINished,
    ringsqd is stopped cleanly (nsqd's files still unwritten), started again: /stats
    shows what is left, unpaused flags stayed unpaused, and the second half comes once,
    in order; after another restart nothing is left and nothing comes again."""
    m, d = copy_case(case)
    stored = messages(m)
    b = brokers(data_dir=d, cores=2)
    assert_stats(b, m)
    half = {}
    for e in m["consume"]:
        half[(e["topic"], e["channel"])] = len(expected_order(e)) // 2
        _, c = unpause_and_take(b, e, stored, count=half[(e["topic"], e["channel"])])
        c.close()
    stop_and_check_files(b, m, d)

    b = brokers(data_dir=d, cores=2)
    for e in m["consume"]:
        t, ch = e["topic"], e["channel"]
        want = expected_order(e)
        wait_topic(b, t, timeout=10, paused=False)
        wait_channel(b, t, ch, timeout=10, paused=False, depth=len(want) - half[(t, ch)])
    for e in m["consume"]:
        t, ch = e["topic"], e["channel"]
        want = expected_order(e)
        c = RawConsumer(b, t, ch, rdy=len(want) + 10)
        rest = c.take(len(want) - half[(t, ch)], quiet=0.5)
        check_exact(rest, want[half[(t, ch)]:], stored, f"{t}/{ch} after restart")
        wait_channel(b, t, ch, timeout=10, in_flight_count=0, depth=0)
        c.close()
    stop_and_check_files(b, m, d)

    b = brokers(data_dir=d, cores=2)
    for e in m["consume"]:
        t, ch = e["topic"], e["channel"]
        wait_channel(b, t, ch, timeout=10, depth=0)
        c = RawConsumer(b, t, ch, rdy=100)
        again = c.take(None, quiet=0.5)
        assert again == [], f"{t}/{ch}: {len(again)} delivered again after the second restart"
        c.close()
    for topic in m["stats"]:
        wait_topic(b, topic, depth=0)
