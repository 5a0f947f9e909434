"""Observability: `GET /metrics` (Prometheus text), the statsd push (S1, S2) and the
end-to-end processing latency percentiles in /stats (Q19, H9, H10).

/metrics is ringsq's own addition (nsqd issue #732): the body is parsed whole with the
reference Prometheus text-format parser (`prometheus-client`) and its figures are checked
against a scripted workload on `--cores 2` whose numbers are known in advance.

statsd: the test binds a UDP socket and points `--statsd-address` at it with a 1 s
interval; datagrams are grouped into pushes by their arrival gaps (with a 1 s interval
nsqd's spread is interval - 1 s = 0, so a push arrives as one burst). Behaviour from
nsqd v1.3.0 nsqd/statsd.go, internal/statsd, internal/writers (BoundaryBufferedWriter).

e2e: nsqd v1.3.0 internal/quantile (Result: {count, percentiles:[{quantile, value}]}),
internal/app/float_array.go (the flag value is split on ',', appended, and sorted in
descending order after every Set).
"""

import re
import socket
import threading
import time
import zlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.http_api import find_channel, find_topic, get, post, stats
from helpers.wait import wait_channel, wait_for

# ====================================================================== helpers


def owner_core(topic, cores=2):
    """ringsq's topic owner: crc32 (IEEE) of the name modulo the core count."""
    return zlib.crc32(topic.encode()) % cores


def topic_owned_by(core, stem, cores=2):
    for i in range(1000):
        name = f"{stem}{i}"
        if owner_core(name, cores) == core:
            return name
    raise AssertionError("no name found")


def scrape(b):
    """GET /metrics, parse the whole body; returns (response, families by name, samples)."""
    r = get(b, "/metrics")
    assert r.status == 200, r
    families = {}
    samples = {}
    for fam in text_string_to_metric_families(r.text):
        assert fam.name not in families, f"family {fam.name} appears twice"
        families[fam.name] = fam
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return r, families, samples


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def per_core(samples, name):
    """{core index: value} of a ringsq_core_* sample name."""
    out = {}
    for (n, labels), v in samples.items():
        if n == name:
            d = dict(labels)
            assert set(d) == {"core"}, (name, d)
            out[int(d["core"])] = v
    return out


def core_connections(b):
    return per_core(scrape(b)[2], "ringsq_core_connections")


def wait_connections(b, total):
    """Per-core connection gauge once its sum is `total` (a new connection is counted)."""
    def ready():
        c = core_connections(b)
        return c if sum(c.values()) == total else None

    return wait_for(ready, what=f"ringsq_core_connections summing to {total}")


# ====================================================================== /metrics


def test_metrics_content_type_and_parse(broker):
    """An empty broker's /metrics is the Prometheus text format (0.0.4), parses whole,
    and every family is typed counter or gauge with a HELP text."""
    r, families, samples = scrape(broker)
    ct = r.header("Content-Type")
    assert ct is not None, r
    parts = [p.strip() for p in ct.split(";")]
    assert parts[0] == "text/plain", ct
    params = dict(p.split("=", 1) for p in parts[1:])
    assert params.get("version") == "0.0.4", ct
    assert params.get("charset", "utf-8").lower() == "utf-8", ct
    assert families, r.text
    for fam in families.values():
        assert fam.type in ("counter", "gauge"), (fam.name, fam.type)
        assert fam.documentation, fam.name
    # no topic yet: the nsq_* families carry no samples, the per-core ones do
    assert not [k for k in samples if k[0].startswith("nsq_")], samples
    assert per_core(samples, "ringsq_core_connections"), samples
    assert sample(samples, "ringsq_process_resident_memory_bytes") > 0


def test_metrics_workload_two_cores(brokers, tcp):
    """A scripted workload on --cores 2, with topics owned by each core, then every
    nsq_topic_* / nsq_channel_* figure is exact; ringsq_core_* has one sample per core;
    forwarded == received (and > 0 on both cores, since publishers sit on both cores and
    publish to topics of both); consumer hand-offs out == in."""
    b = brokers(cores=2)
    T = [topic_owned_by(0, "mtc_"), topic_owned_by(1, "mtc_")]   # with channels
    E = [topic_owned_by(0, "mte_"), topic_owned_by(1, "mte_")]   # without channels
    for t in T:
        assert post(b, f"/topic/create?topic={t}").status == 200
        for ch in ("idle", "work"):
            assert post(b, f"/channel/create?topic={t}&channel={ch}").status == 200

    # publishers until both cores hold at least one (SO_REUSEPORT spreads them)
    pubs = []
    while True:
        pubs.append(tcp(b))
        if len(pubs) >= 4:
            per = wait_connections(b, len(pubs))
            if all(per.get(c, 0) > 0 for c in (0, 1)):
                break
        assert len(pubs) < 24, "24 connections never reached both cores"
    pub_cores = dict(per)
    P = len(pubs)

    # each publisher: PUB, MPUB x3, then DPUB (topics with channels) or PUB, to every topic
    DEFER_MS = 60000
    msg_bytes = {t: 0 for t in T + E}
    for i, p in enumerate(pubs):
        for t in T + E:
            bodies = [f"{t}/{i}/{k}/".encode() + b"x" * (i * 7 + k * 3) for k in range(5)]
            msg_bytes[t] += sum(len(x) for x in bodies)
            p.pub(t, bodies[0])
            p.mpub(t, bodies[1:4])
            if t in T:
                p.dpub(t, DEFER_MS, bodies[4])
            else:
                p.pub(t, bodies[4])
    N = 5 * P  # messages per topic

    # consumers: find the core each lands on (before SUB), to know the hand-offs due
    conns_total = P
    landed = []  # (core landed on, owner core of its topic)

    def consumer(topic, identify=None):
        nonlocal conns_total
        before = wait_connections(b, conns_total)
        c = tcp(b, identify=identify)
        conns_total += 1
        after = wait_connections(b, conns_total)
        core = [k for k in after if after[k] == before.get(k, 0) + 1]
        assert len(core) == 1, (before, after)
        landed.append((core[0], owner_core(topic)))
        return c

    slow = {}
    for t in T:  # IDENTIFY msg_timeout 1000: take 2, stop, let both time out
        c1 = consumer(t, identify={"msg_timeout": 1000})
        c1.sub(t, "work", rdy=2)
        c1.read_messages(2)
        c1.rdy(0)
        slow[t] = c1

    def timed_out():
        s = scrape(b)[2]
        return all(sample(s, "nsq_channel_timed_out_total", topic=t, channel="work") == 2
                   for t in T)

    wait_for(timed_out, timeout=6, what="2 timeouts per work channel")

    for t in T:  # take 3, stop, FIN one, REQ one (deferred), keep one in flight
        c2 = consumer(t)
        c2.sub(t, "work", rdy=3)
        ms = c2.read_messages(3)
        c2.rdy(0)
        c2.fin(ms[0]["id"])
        c2.req(ms[1]["id"], DEFER_MS)

    assert post(b, f"/channel/pause?topic={T[0]}&channel=idle").status == 200

    want = {}
    for t in T + E:
        want[("nsq_topic_messages_total", t, None)] = N
        want[("nsq_topic_message_bytes_total", t, None)] = msg_bytes[t]
        want[("nsq_topic_depth", t, None)] = 0 if t in T else N
        want[("nsq_topic_backend_depth", t, None)] = 0
        want[("nsq_topic_paused", t, None)] = 0
    for t in T:
        for ch, depth, inflight, deferred, req, tmo, clients in [
            ("idle", N - P, 0, P, 0, 0, 0),
            ("work", N - P - 3, 1, P + 1, 1, 2, 2),
        ]:
            want[("nsq_channel_messages_total", t, ch)] = N
            want[("nsq_channel_depth", t, ch)] = depth
            want[("nsq_channel_backend_depth", t, ch)] = 0
            want[("nsq_channel_in_flight", t, ch)] = inflight
            want[("nsq_channel_deferred", t, ch)] = deferred
            want[("nsq_channel_requeued_total", t, ch)] = req
            want[("nsq_channel_timed_out_total", t, ch)] = tmo
            want[("nsq_channel_clients", t, ch)] = clients
            want[("nsq_channel_paused", t, ch)] = 1 if (t, ch) == (T[0], "idle") else 0

    def mismatches():
        s = scrape(b)[2]
        bad = []
        for (name, t, ch), v in want.items():
            labels = {"topic": t} if ch is None else {"topic": t, "channel": ch}
            got = sample(s, name, **labels)
            if got != v:
                bad.append((name, t, ch, "expected", v, "got", got))
        return bad

    wait_for(lambda: not mismatches(), timeout=5, what="the expected figures")
    r, families, s = scrape(b)
    assert mismatches() == []

    # metric types are part of the contract
    types = {
        "nsq_topic_messages": "counter", "nsq_topic_message_bytes": "counter",
        "nsq_topic_depth": "gauge", "nsq_channel_depth": "gauge",
        "nsq_channel_in_flight": "gauge", "nsq_channel_deferred": "gauge",
        "nsq_channel_requeued": "counter", "nsq_channel_timed_out": "counter",
        "nsq_channel_clients": "gauge", "nsq_channel_paused": "gauge",
    }
    for name, typ in types.items():
        assert name in families and families[name].type == typ, (name, families.get(name))
    # topics without channels have no channel samples; no phantom topics
    topics_seen = {dict(k[1])["topic"] for k in s if k[0] == "nsq_topic_depth"}
    assert topics_seen == set(T + E), topics_seen
    chans_seen = {(dict(k[1])["topic"], dict(k[1])["channel"])
                  for k in s if k[0] == "nsq_channel_depth"}
    assert chans_seen == {(t, c) for t in T for c in ("idle", "work")}, chans_seen

    # per-core families: exactly one sample per core
    core_fams = [f for f in families.values() if f.name.startswith("ringsq_core_")]
    assert len(core_fams) >= 5, list(families)
    for fam in core_fams:
        cores = sorted(smp.labels.get("core") for smp in fam.samples)
        assert cores == ["0", "1"], (fam.name, [(x.name, x.labels) for x in fam.samples])

    fwd = per_core(s, "ringsq_core_forwarded_messages_total")
    rcv = per_core(s, "ringsq_core_received_messages_total")
    fwd_b = per_core(s, "ringsq_core_forwarded_batches_total")
    rcv_b = per_core(s, "ringsq_core_received_batches_total")
    # every publisher sent 5 messages to each of the 2 topics owned by the other core
    assert sum(fwd.values()) == sum(rcv.values()) == 10 * P, (fwd, rcv, P)
    for c in (0, 1):
        assert fwd[c] == 10 * pub_cores[c] > 0, (c, fwd, pub_cores)
        assert rcv[c] == 10 * pub_cores[1 - c] > 0, (c, rcv, pub_cores)
        assert 0 < fwd_b[c] <= fwd[c], (fwd_b, fwd)
    assert sum(fwd_b.values()) == sum(rcv_b.values()), (fwd_b, rcv_b)

    h_out = per_core(s, "ringsq_core_handoffs_out_total")
    h_in = per_core(s, "ringsq_core_handoffs_in_total")
    assert sum(h_out.values()) == sum(h_in.values()), (h_out, h_in)
    for c in (0, 1):
        assert h_out[c] == sum(1 for lc, oc in landed if lc == c and oc != c), (c, h_out, landed)
        assert h_in[c] == sum(1 for lc, oc in landed if oc == c and lc != c), (c, h_in, landed)
    conns = per_core(s, "ringsq_core_connections")
    assert sum(conns.values()) == P + 4, conns


# ====================================================================== statsd

STATSD_LINE = re.compile(r"^(?P<stat>[^:\s]+):(?P<value>-?\d+)\|(?P<kind>[cg])$")
MEM_GAUGES = {"heap_objects", "heap_idle_bytes", "heap_in_use_bytes", "heap_released_bytes",
              "gc_pause_usec_100", "gc_pause_usec_99", "gc_pause_usec_95", "next_gc_bytes"}


class StatsdSink:
    """A UDP socket that records every datagram with its arrival time."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.datagrams = []  # (time, bytes)
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.datagrams.append((time.time(), data))

    def snapshot(self):
        with self.lock:
            return list(self.datagrams)

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def sink():
    s = StatsdSink()
    yield s
    s.close()


def group_pushes(datagrams, gap=0.3):
    """Split datagrams into pushes: a burst separated from the next by more than `gap`."""
    pushes = []
    for t, d in datagrams:
        if pushes and t - pushes[-1]["end"] <= gap:
            pushes[-1]["datagrams"].append(d)
            pushes[-1]["end"] = t
        else:
            pushes.append({"start": t, "end": t, "datagrams": [d]})
    return pushes


def wait_pushes_after(sink, t0, n, timeout=6.0):
    """Wait until `n` complete pushes began after t0; return all pushes so far (complete)."""

    def enough():
        # a push is complete once 0.3 s of silence followed it
        complete = [p for p in group_pushes(sink.snapshot()) if time.time() - p["end"] > 0.3]
        return complete if sum(1 for p in complete if p["start"] > t0) >= n else None

    try:
        return wait_for(enough, timeout=timeout, interval=0.1, what=f"{n} statsd pushes after t0")
    except AssertionError:
        raise AssertionError(f"fewer than {n} statsd pushes after t0: {group_pushes(sink.snapshot())!r}") from None


def parse_push(push, prefix, size):
    """Check every datagram (≤ size, whole newline-terminated lines, prefix) and return
    {stat without prefix: (value, kind)} of one push."""
    stats_ = {}
    for d in push["datagrams"]:
        assert len(d) <= size, (len(d), size, d)
        assert d.endswith(b"\n"), d
        for line in d.decode("ascii").split("\n")[:-1]:
            assert line.startswith(prefix), (prefix, line)
            m = STATSD_LINE.match(line[len(prefix):])
            assert m, line
            assert m["stat"] not in stats_, f"{m['stat']} twice in one push"
            stats_[m["stat"]] = (int(m["value"]), m["kind"])
    return stats_


def check_packing(push, size):
    """nsqd's boundary-buffered writer starts a new datagram only when the next line would
    not fit in the current one."""
    ds = push["datagrams"]
    for a, nxt in zip(ds, ds[1:]):
        first_line = nxt.split(b"\n", 1)[0] + b"\n"
        assert len(a) + len(first_line) > size, (len(a), first_line, size)


def series(pushes, stat):
    """The values of `stat` over the pushes in which it appears."""
    return [p[stat][0] for p in pushes if stat in p]


def test_statsd_default_prefix_format_deltas_gauges(brokers, tcp, sink):
    """S1/S2 with the default prefix (nsq.%s) and packet size (508): datagrams ≤ 508 bytes
    of whole lines `<prefix><stat>:<value>|c|g`, prefix nsq.<broadcast_address>_<http_port>.
    with '.'/':' → '_'; counters are deltas (MPUB of 5 shows as 5 in one push and 0 after);
    gauges show depth / in_flight / deferred / clients; ephemeral topics and channels are
    included by default; mem.* present by default."""
    b = brokers(args=[f"--statsd-address=127.0.0.1:{sink.port}", "--statsd-interval=1s",
                             "--broadcast-address=my.host"])
    prefix = f"nsq.my_host_{b.http_port}."
    assert post(b, "/topic/create?topic=sd").status == 200
    assert post(b, "/channel/create?topic=sd&channel=c").status == 200
    eph = tcp(b).sub("eph#ephemeral", "c")             # ephemeral topic, kept alive
    ephc = tcp(b).sub("sd", "e#ephemeral")             # ephemeral channel, RDY 0
    bodies = [b"m%d" % i + b"y" * i for i in range(5)]
    tcp(b).mpub("sd", bodies)
    c = tcp(b).sub("sd", "c", rdy=2)
    ms = c.read_messages(2)
    c.rdy(0)
    c.req(ms[0]["id"], 60000)
    wait_channel(b, "sd", "c", deferred_count=1)
    wait_channel(b, "sd", "c", in_flight_count=1)
    wait_channel(b, "sd", "e#ephemeral", depth=5)
    t_settled = time.time()
    raw = wait_pushes_after(sink, t_settled, 2)
    pushes = [parse_push(p, prefix, 508) for p in raw]
    for p in raw:
        check_packing(p, 508)
    assert any(len(p["datagrams"]) > 1 for p in raw), "a push of this size needs > 1 datagram"

    last = pushes[-1]
    tm = "topic.sd.message_count"
    mc = series(pushes, tm)
    assert sum(mc) == 5 and sorted(mc)[-1] == 5 and mc.count(0) == len(mc) - 1, mc
    assert mc[-1] == 0, mc                           # nothing new since: delta 0
    mb = series(pushes, "topic.sd.message_bytes")
    assert sum(mb) == sum(len(x) for x in bodies) and mb[-1] == 0, mb
    cm = series(pushes, "topic.sd.channel.c.message_count")
    assert sum(cm) == 5 and cm[-1] == 0, cm
    rq = series(pushes, "topic.sd.channel.c.requeue_count")
    assert sum(rq) == 1 and rq[-1] == 0, rq
    assert set(series(pushes, "topic.sd.channel.c.timeout_count")) == {0}
    for k in ["topic.sd.message_count", "topic.sd.message_bytes",
              "topic.sd.channel.c.message_count", "topic.sd.channel.c.requeue_count",
              "topic.sd.channel.c.timeout_count"]:
        assert last[k][1] == "c", (k, last[k])

    expect_gauges = {
        "topic.sd.depth": 0, "topic.sd.backend_depth": 0,
        "topic.sd.channel.c.depth": 3, "topic.sd.channel.c.backend_depth": 0,
        "topic.sd.channel.c.in_flight_count": 1, "topic.sd.channel.c.deferred_count": 1,
        "topic.sd.channel.c.clients": 1,
        "topic.sd.channel.e#ephemeral.depth": 5, "topic.sd.channel.e#ephemeral.clients": 1,
        "topic.eph#ephemeral.depth": 0, "topic.eph#ephemeral.channel.c.clients": 1,
    }
    got = {k: last.get(k) for k in expect_gauges}
    assert got == {k: (v, "g") for k, v in expect_gauges.items()}, got
    # mem stats on by default, in every push
    for p in pushes:
        mem = {k[4:]: v for k, v in p.items() if k.startswith("mem.")}
        assert set(mem) == MEM_GAUGES | {"gc_runs"}, sorted(mem)
        assert all(v[1] == "g" for k, v in mem.items() if k != "gc_runs"), mem
        assert mem["gc_runs"][1] == "c", mem
    # pushes are about one interval apart
    starts = [p["start"] for p in raw]
    for a, z in zip(starts, starts[1:]):
        assert 0.5 < z - a < 2.0, starts
    eph.close()
    ephc.close()


def test_statsd_small_packets_exclude_ephemeral_no_mem(brokers, tcp, sink):
    """S1/S2: --statsd-udp-packet-size=100 keeps every datagram ≤ 100 bytes of whole lines;
    a custom prefix gets %s = <broadcast_address>_<broadcast_http_port> and a trailing '.';
    --statsd-exclude-ephemeral drops #ephemeral topics and channels; --statsd-mem-stats=false
    drops mem.*; e2e percentiles become gauges e2e_processing_latency_<pct>."""
    b = brokers(args=[f"--statsd-address=127.0.0.1:{sink.port}", "--statsd-interval=1s",
                             "--statsd-prefix=app.%s.x", "--broadcast-address=my.host",
                             "--broadcast-http-port=4242", "--statsd-udp-packet-size=100",
                             "--statsd-exclude-ephemeral", "--statsd-mem-stats=false",
                             "--e2e-processing-latency-percentile=0.99,0.5"])
    prefix = "app.my_host_4242.x."
    keep = [tcp(b).sub("eph#ephemeral", "c"), tcp(b).sub("sb", "e#ephemeral")]
    c = tcp(b).sub("sb", "c", rdy=10)
    tcp(b).mpub("sb", [b"a", b"bb", b"ccc"])
    for m in c.read_messages(3):
        c.fin(m["id"])
    wait_for(lambda: find_channel(stats(b), "sb", "c")["e2e_processing_latency"]["count"] == 3,
             what="3 FINs recorded")
    raw = wait_pushes_after(sink, time.time(), 2)
    pushes = [parse_push(p, prefix, 100) for p in raw]
    for p in raw:
        check_packing(p, 100)
    last = pushes[-1]
    assert not [k for p in pushes for k in p if "ephemeral" in k], "ephemeral stats sent"
    assert not [k for p in pushes for k in p if k.startswith("mem.")], "mem stats sent"
    assert sum(series(pushes, "topic.sb.message_count")) == 3
    assert sum(series(pushes, "topic.sb.message_bytes")) == 6
    assert last["topic.sb.channel.c.clients"] == (1, "g"), last
    assert last["topic.sb.channel.c.depth"] == (0, "g"), last
    assert last["topic.sb.channel.c.in_flight_count"] == (0, "g"), last
    for base in ["topic.sb", "topic.sb.channel.c"]:
        p99 = last.get(base + ".e2e_processing_latency_99")
        p50 = last.get(base + ".e2e_processing_latency_50")
        assert p99 and p50 and p99[1] == p50[1] == "g", (base, p99, p50)
        assert 0 < p50[0] <= p99[0] < 30 * 10**9, (base, p50, p99)
    for k in keep:
        k.close()


# ====================================================================== e2e latency (Q19)

HOLD = 0.03  # seconds between successive FINs


def consume_and_fin(c, n, hold=HOLD):
    """Read n messages, then FIN them one by one `hold` seconds apart; returns the FIN
    send times."""
    ms = c.read_messages(n)
    times = []
    for m in ms:
        time.sleep(hold)
        times.append(time.time())
        c.fin(m["id"])
    return times


def e2e_of(b, topic, channel=None):
    doc = stats(b, topic=topic)
    obj = find_topic(doc, topic) if channel is None else find_channel(doc, topic, channel)
    return obj["e2e_processing_latency"]


def check_latency(lat, count, quantiles, low_ns, high_ns):
    assert lat["count"] == count, lat
    assert isinstance(lat["percentiles"], list), lat
    assert sorted(p["quantile"] for p in lat["percentiles"]) == sorted(quantiles), lat
    for p in lat["percentiles"]:
        assert set(p) == {"quantile", "value"}, p
        assert low_ns <= p["value"] <= high_ns, (p, low_ns, high_ns)
    by_q = {p["quantile"]: p["value"] for p in lat["percentiles"]}
    assert by_q[max(quantiles)] >= by_q[min(quantiles)], by_q


def run_e2e_workload(b, tcp):
    """Topic lat: channel a gets 4 FINs, channel b 2, channel idle none. Returns the
    (lower, upper) latency bounds in ns that every recorded sample lies in."""
    assert post(b, "/topic/create?topic=lat").status == 200
    for ch in ("a", "b", "idle"):
        assert post(b, f"/channel/create?topic=lat&channel={ch}").status == 200
    ca = tcp(b).sub("lat", "a", rdy=10)
    cb = tcp(b).sub("lat", "b", rdy=10)
    p = tcp(b)
    t_before = time.time()
    p.mpub("lat", [b"1", b"2", b"3", b"4"])
    t_after = time.time()
    fa = consume_and_fin(ca, 4)
    fb = consume_and_fin(cb, 2)  # only 2 of the 4 on channel b are FINed
    wait_for(lambda: e2e_of(b, "lat", "a")["count"] == 4 and e2e_of(b, "lat", "b")["count"] == 2,
             what="FINs recorded")
    low = (min(fa + fb) - t_after) * 1e9 * 0.99
    high = (time.time() - t_before) * 1e9 * 1.01
    return low, high


@pytest.mark.parametrize("flags", [
    ["--e2e-processing-latency-percentile=0.5,0.99"],
    ["--e2e-processing-latency-percentile=0.5", "--e2e-processing-latency-percentile=0.99"],
], ids=["comma", "repeated"])
def test_e2e_percentiles_in_stats(brokers, tcp, flags):
    """Q19/H9/H10: with the flag (comma list or repeated), a channel's
    e2e_processing_latency has count = messages FINed and one {quantile, value} per
    configured percentile, value in ns between the hold time and the test's duration,
    p99 >= p50; a channel with no FIN has count 0; the topic merges its channels."""
    b = brokers(args=flags)
    low, high = run_e2e_workload(b, tcp)
    check_latency(e2e_of(b, "lat", "a"), 4, [0.5, 0.99], low, high)
    check_latency(e2e_of(b, "lat", "b"), 2, [0.5, 0.99], low, high)
    check_latency(e2e_of(b, "lat"), 6, [0.5, 0.99], low, high)
    idle = e2e_of(b, "lat", "idle")
    assert idle["count"] == 0, idle
    assert sorted(p["quantile"] for p in idle["percentiles"]) == [0.5, 0.99], idle
    # the last FIN on channel a came ~4 holds after the MPUB: p99 of a reflects it
    a = {p["quantile"]: p["value"] for p in e2e_of(b, "lat", "a")["percentiles"]}
    assert a[0.99] >= 3 * HOLD * 1e9 * 0.99, a


def test_e2e_percentiles_order_like_nsqd(brokers, tcp):
    """nsqd's --e2e-processing-latency-percentile (app.FloatArray) sorts the list in
    descending order after every Set, so /stats lists quantiles highest first whatever
    the order on the command line; three values from two flags."""
    b = brokers(args=["--e2e-processing-latency-percentile=0.5,0.99",
                             "--e2e-processing-latency-percentile=0.9"])
    run_e2e_workload(b, tcp)
    for ch in ("a", "b", None):
        qs = [p["quantile"] for p in e2e_of(b, "lat", ch)["percentiles"]]
        assert qs == [0.99, 0.9, 0.5], (ch, qs)


def test_e2e_disabled_without_flag(brokers, tcp):
    """Q19/X3: without the flag nothing is recorded: after FINs, channel and topic
    e2e_processing_latency are {count: 0, percentiles: null}."""
    b = brokers()
    c = tcp(b).sub("lat", "a", rdy=10)
    tcp(b).mpub("lat", [b"1", b"2", b"3"])
    consume_and_fin(c, 3, hold=0.01)
    wait_channel(b, "lat", "a", in_flight_count=0)
    assert e2e_of(b, "lat", "a") == {"count": 0, "percentiles": None}
    assert e2e_of(b, "lat") == {"count": 0, "percentiles": None}
    # and /metrics has no e2e sample then
    s = scrape(b)[2]
    assert not [k for k in s if "e2e" in k[0]], [k for k in s if "e2e" in k[0]]
