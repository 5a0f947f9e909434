"""GET /stats: JSON shape, filters, options, true counts, the text format.

Rows: H8 (params and envelope), H9 (topic object), H10 (channel object), H11 (client
object, producers), H12 (memory object), H13 (text format), X1 (pub_counts), X3 (JSON
nulls), T16/T37 (per-connection stats), Q4-Q8 (in-flight, timeout, deferred). Shapes from
nsqd v1.3.0 nsqd/stats.go, nsqd/client_v2.go (ClientV2Stats) and nsqd/http.go doStats /
printStats.
"""

import re
import time

import pytest

from helpers.http_api import JSON_CT, SEMVER, V1_HEADER, find_channel, find_topic, get, post, stats
from helpers.wait import wait_channel, wait_for

TOP_KEYS = {"version", "health", "start_time", "topics", "memory", "producers"}
TOPIC_KEYS = {
    "topic_name": str, "channels": list, "depth": int, "backend_depth": int,
    "message_count": int, "message_bytes": int, "paused": bool, "e2e_processing_latency": dict,
}
CHANNEL_KEYS = {
    "channel_name": str, "depth": int, "backend_depth": int, "in_flight_count": int,
    "deferred_count": int, "message_count": int, "requeue_count": int, "timeout_count": int,
    "client_count": int, "clients": list, "paused": bool, "e2e_processing_latency": dict,
}
CLIENT_KEYS = {
    "client_id": str, "hostname": str, "version": str, "remote_address": str, "state": int,
    "ready_count": int, "in_flight_count": int, "message_count": int, "finish_count": int,
    "requeue_count": int, "connect_ts": int, "sample_rate": int, "deflate": bool,
    "snappy": bool, "user_agent": str, "tls": bool, "tls_cipher_suite": str,
    "tls_version": str, "tls_negotiated_protocol": str,
    "tls_negotiated_protocol_is_mutual": bool,
}
MEMORY_KEYS = [
    "heap_objects", "heap_idle_bytes", "heap_in_use_bytes", "heap_released_bytes",
    "gc_pause_usec_100", "gc_pause_usec_99", "gc_pause_usec_95", "next_gc_bytes",
    "gc_total_runs",
]
E2E_OFF = {"count": 0, "percentiles": None}
STATE_INIT, STATE_SUBSCRIBED = 0, 3


def check_types(obj, spec, what):
    for k, typ in spec.items():
        assert type(obj[k]) is typ, (what, k, obj[k])


def check_client(cl, *, producer=False):
    """H11: exact key set (omitempty keys absent unless set) and types."""
    want = set(CLIENT_KEYS) | ({"pub_counts"} if producer else set())
    assert set(cl) == want, sorted(set(cl) ^ want)
    check_types(cl, CLIENT_KEYS, "client")
    assert cl["version"] == "V2"
    assert re.match(r"^127\.0\.0\.1:\d+$", cl["remote_address"]), cl["remote_address"]
    assert abs(cl["connect_ts"] - time.time()) < 60, cl["connect_ts"]
    assert cl["tls"] is False and cl["tls_cipher_suite"] == "" and cl["tls_version"] == ""
    assert cl["tls_negotiated_protocol"] == "" and cl["tls_negotiated_protocol_is_mutual"] is False
    assert cl["deflate"] is False and cl["snappy"] is False and cl["sample_rate"] == 0


# ------------------------------------------------------------------ empty broker


def test_stats_empty_broker_json(broker):
    """H8/H12/X3: top-level keys; topics [] on an empty broker; producers null; memory has
    the nine integer fields; headers of a JSON V1 response."""
    r = get(broker, "/stats?format=json")
    assert r.status == 200
    assert r.header("Content-Type") == JSON_CT
    assert r.header("X-NSQ-Content-Type") == V1_HEADER
    doc = r.json()
    assert set(doc) == TOP_KEYS, doc.keys()
    assert SEMVER.match(doc["version"])
    assert doc["health"] == "OK"
    assert type(doc["start_time"]) is int and abs(doc["start_time"] - time.time()) < 60
    assert doc["topics"] == []
    assert doc["producers"] is None
    assert list(doc["memory"]) == MEMORY_KEYS
    for k in MEMORY_KEYS:
        assert type(doc["memory"][k]) is int and doc["memory"][k] >= 0, (k, doc["memory"][k])
    # the raw document starts exactly like nsqd's (field order of the Go struct)
    prefix = ('{"version":"%s","health":"OK","start_time":%d,"topics":[],"memory":{'
              % (doc["version"], doc["start_time"]))
    assert r.text.startswith(prefix), r.text[:200]


def test_stats_include_mem(broker):
    """H8: include_mem=false/0 drops the memory key; true/1/absent/unknown keep it."""
    for v in ["false", "0"]:
        doc = stats(broker, include_mem=v)
        assert "memory" not in doc and set(doc) == TOP_KEYS - {"memory"}, doc.keys()
    for v in ["true", "1", "bogus"]:
        assert set(stats(broker, include_mem=v)["memory"]) == set(MEMORY_KEYS)


def test_stats_topic_filter_miss_is_null(broker):
    """X3/H8: a topic filter that matches nothing gives "topics": null (a channel filter
    miss on an existing topic gives [])."""
    assert_body = get(broker, "/stats?format=json&topic=nope").text
    assert '"topics":null' in assert_body, assert_body
    post(broker, "/topic/create?topic=here")
    post(broker, "/channel/create?topic=here&channel=c")
    assert stats(broker, topic="nope")["topics"] is None
    assert stats(broker, topic="here", channel="nope")["topics"] == []
    assert stats(broker, channel="nope")["topics"] == []
    assert [t["topic_name"] for t in stats(broker, topic="here")["topics"]] == ["here"]


# ------------------------------------------------------------------ counts and clients


@pytest.mark.parametrize("cores,topic", [(None, "cnt"), (2, "cnt"), (2, "cnt_b"), (2, "cnt.c"),
                                         (2, "cnt-d"), (2, "CNT")])
def test_stats_counts_and_client_fields(brokers, tcp, cores, topic):
    """H9/H10/H11/T37: field-by-field shape and true values after PUB/MPUB/DPUB, FIN, REQ
    (0 and >0), with IDENTIFY client_id/hostname/user_agent and producers; also with
    --cores 2 and several topic names so topic and connections land on either core."""
    broker = brokers(cores=cores)
    cons = tcp(broker, identify={"client_id": "cons-1", "hostname": "host-a.example",
                                 "user_agent": "ringsq-test/1.0"})
    cons.sub(topic, "ch", rdy=3)
    prod = tcp(broker, identify={"client_id": "prod-1", "hostname": "prod-host",
                                 "user_agent": "producer/2.0"})
    prod.pub(topic, b"a")
    prod.pub(topic, b"bb")
    prod.mpub(topic, [b"ccc", b"dddd"])
    m1, m2, m3 = cons.read_messages(3)
    cons.fin(m1["id"])
    cons.req(m2["id"], 0)  # straight back to the queue, redelivered (attempts 2)
    again = cons.read_messages(2)
    assert sorted(m["attempts"] for m in again) == [1, 2], again
    m4 = next(m for m in again if m["attempts"] == 1)
    prod.dpub(topic, 60000, b"later")
    cons.req(m4["id"], 30000)  # deferred requeue
    wait_channel(broker, topic, "ch", deferred_count=2)

    doc = stats(broker)
    assert set(doc) == TOP_KEYS
    t = find_topic(doc, topic)
    assert set(t) == set(TOPIC_KEYS)
    check_types(t, TOPIC_KEYS, "topic")
    assert t["topic_name"] == topic
    assert t["depth"] == 0 and t["backend_depth"] == 0
    assert t["message_count"] == 5
    assert t["message_bytes"] == 1 + 2 + 3 + 4 + 5
    assert t["paused"] is False
    assert t["e2e_processing_latency"] == E2E_OFF

    assert len(t["channels"]) == 1
    ch = t["channels"][0]
    assert set(ch) == set(CHANNEL_KEYS)
    check_types(ch, CHANNEL_KEYS, "channel")
    assert ch["channel_name"] == "ch"
    assert ch["depth"] == 0 and ch["backend_depth"] == 0
    assert ch["in_flight_count"] == 2     # m3 and the redelivered m2
    assert ch["deferred_count"] == 2      # the DPUB and the REQ 30000
    assert ch["message_count"] == 5       # messages put into the channel (REQ does not add)
    assert ch["requeue_count"] == 2
    assert ch["timeout_count"] == 0
    assert ch["client_count"] == 1
    assert ch["paused"] is False
    assert ch["e2e_processing_latency"] == E2E_OFF

    assert len(ch["clients"]) == 1
    cl = ch["clients"][0]
    check_client(cl)
    assert cl["client_id"] == "cons-1"
    assert cl["hostname"] == "host-a.example"
    assert cl["user_agent"] == "ringsq-test/1.0"
    assert cl["remote_address"] == f"127.0.0.1:{cons.local_port}"
    assert cl["state"] == STATE_SUBSCRIBED
    assert cl["ready_count"] == 3
    assert cl["in_flight_count"] == 2
    assert cl["message_count"] == 5       # deliveries: m1 m2 m3 m2' m4
    assert cl["finish_count"] == 1
    assert cl["requeue_count"] == 2

    # H11/H8: producers = connections that published; the consumer is not one
    assert len(doc["producers"]) == 1
    p = doc["producers"][0]
    check_client(p, producer=True)
    assert p["client_id"] == "prod-1" and p["hostname"] == "prod-host"
    assert p["user_agent"] == "producer/2.0"
    assert p["remote_address"] == f"127.0.0.1:{prod.local_port}"
    assert p["state"] == STATE_INIT
    assert p["ready_count"] == 0 and p["message_count"] == 0
    assert p["pub_counts"] == [{"topic": topic, "count": 5}]

    # FIN the rest: in-flight drops, finish_count grows
    cons.fin(m3["id"])
    cons.fin(next(m for m in again if m["attempts"] == 2)["id"])
    wait_channel(broker, topic, "ch", in_flight_count=0)
    cl = find_channel(stats(broker), topic, "ch")["clients"][0]
    assert cl["finish_count"] == 3 and cl["in_flight_count"] == 0


def test_stats_default_client_identity(broker, tcp):
    """T16/H11: without IDENTIFY, client_id and hostname are the remote IP, user_agent ''."""
    c = tcp(broker).sub("anon", "ch", rdy=0)
    wait_channel(broker, "anon", "ch", client_count=1)
    cl = find_channel(stats(broker), "anon", "ch")["clients"][0]
    check_client(cl)
    assert cl["client_id"] == "127.0.0.1" and cl["hostname"] == "127.0.0.1"
    assert cl["user_agent"] == ""
    assert cl["ready_count"] == 0 and cl["state"] == STATE_SUBSCRIBED
    assert cl["remote_address"] == f"127.0.0.1:{c.local_port}"


@pytest.mark.parametrize("how", ["flag", "identify"])
def test_stats_timeout_count(brokers, tcp, how):
    """H10/Q6: a message not FINed within msg_timeout (--msg-timeout=1s, or IDENTIFY
    msg_timeout 1000) counts in timeout_count, leaves in-flight and is redelivered."""
    if how == "flag":
        b = brokers(args=["--msg-timeout=1s"])
        c = tcp(b)
    else:
        b = brokers()
        c = tcp(b, identify={"msg_timeout": 1000})
    c.sub("slow", "ch", rdy=1)
    post(b, "/pub?topic=slow", b"tick")
    first = c.read_message()
    assert first["attempts"] == 1
    wait_channel(b, "slow", "ch", in_flight_count=1, timeout=0.5)
    again = c.read_message(timeout=6.0)  # redelivered after the timeout
    assert again["id"] == first["id"] and again["attempts"] == 2
    ch = find_channel(stats(b), "slow", "ch")
    assert ch["timeout_count"] == 1, ch
    assert ch["in_flight_count"] == 1 and ch["requeue_count"] == 0, ch
    assert ch["clients"][0]["message_count"] == 2
    assert ch["clients"][0]["in_flight_count"] == 1


def test_stats_depth_counts_memory_and_disk(brokers):
    """H9/H10/Q3/Q21: depth = memory + disk, backend_depth = disk part (--mem-queue-size=2)."""
    b = brokers(args=["--mem-queue-size=2"])
    for i in range(5):
        post(b, "/pub?topic=spill", f"m{i}".encode())
    t = find_topic(stats(b), "spill")
    assert t["depth"] == 5 and t["backend_depth"] == 3, t
    assert t["message_count"] == 5 and t["message_bytes"] == 10, t


def test_stats_include_clients_false(broker, tcp):
    """H8/H10/X3: include_clients=false (or 0) -> every channel's clients null and producers
    null, client_count still true; true/1 -> lists."""
    c = tcp(broker, identify={"client_id": "x"})
    c.sub("ic", "ch")
    c.pub("ic", b"m")  # this consumer is also a producer (T9)
    c.rdy(1)
    c.read_message()
    wait_channel(broker, "ic", "ch", in_flight_count=1)
    for v in ["false", "0"]:
        r = get(broker, f"/stats?format=json&include_clients={v}")
        doc = r.json()
        ch = find_channel(doc, "ic", "ch")
        assert ch["clients"] is None and ch["client_count"] == 1, ch
        assert doc["producers"] is None
        assert '"clients":null' in r.text and '"producers":null' in r.text
    for v in ["true", "1"]:
        doc = stats(broker, include_clients=v)
        ch = find_channel(doc, "ic", "ch")
        assert len(ch["clients"]) == 1 and ch["clients"][0]["client_id"] == "x"
        # a consumer that publishes carries pub_counts in both lists
        assert ch["clients"][0]["pub_counts"] == [{"topic": "ic", "count": 1}]
        assert [p["client_id"] for p in doc["producers"]] == ["x"]


def test_stats_no_clients_is_empty_list(broker):
    """H10: a channel without clients has "clients": [] (not null) when clients are included."""
    post(broker, "/topic/create?topic=lonely")
    post(broker, "/channel/create?topic=lonely&channel=c")
    ch = find_channel(stats(broker), "lonely", "c")
    assert ch["clients"] == [] and ch["client_count"] == 0


# ------------------------------------------------------------------ sorting, filters, cores


TOPIC_NAMES = ["zulu", "alpha", "Mike", "bravo_2", "-dash", "9nine", "alpha.b", "alpha-b",
               "_under", "alphA"]
CHANNEL_NAMES = ["z", "a", "M", "m", "_", "0", "a.b", "a-b"]


def test_stats_sorted_filters_across_cores(brokers, tcp):
    """H8/H9/H10/H11/X1 with --cores 2: topics and channels sorted by name; every topic's
    consumer and producer listed with true counts; topic/channel filters; pub_counts per
    topic filter."""
    b = brokers(cores=2)
    consumers, producers = {}, {}
    for i, t in enumerate(TOPIC_NAMES):
        consumers[t] = tcp(b, identify={"client_id": f"c-{t}", "user_agent": "ua/" + t})
        consumers[t].sub(t, "c0", rdy=0)
        producers[t] = tcp(b, identify={"client_id": f"p-{t}"})
        for k in range(i + 1):
            producers[t].pub(t, b"x" * (k + 1))
    for chn in CHANNEL_NAMES:
        assert post(b, f"/channel/create?topic=alpha&channel={chn}").status == 200
    multi = tcp(b, identify={"client_id": "multi"})
    multi.pub("zulu", b"1")
    multi.pub("alpha", b"2")
    multi.pub("alpha", b"3")

    doc = stats(b)
    assert [t["topic_name"] for t in doc["topics"]] == sorted(TOPIC_NAMES)
    alpha = find_topic(doc, "alpha")
    assert [c["channel_name"] for c in alpha["channels"]] == sorted(CHANNEL_NAMES + ["c0"])
    for i, t in enumerate(TOPIC_NAMES):
        tt = find_topic(doc, t)
        extra = {"zulu": 1, "alpha": 2}.get(t, 0)
        assert tt["message_count"] == i + 1 + extra, (t, tt)
        assert tt["message_bytes"] == sum(range(1, i + 2)) + extra, (t, tt)
        c0 = find_channel(doc, t, "c0")
        assert c0["client_count"] == 1 and c0["depth"] == i + 1 + extra, (t, c0)
        assert c0["message_count"] == i + 1 + extra
        [cl] = c0["clients"]
        check_client(cl)
        assert cl["client_id"] == f"c-{t}" and cl["user_agent"] == "ua/" + t
        assert cl["remote_address"] == f"127.0.0.1:{consumers[t].local_port}"
    prods = {p["client_id"]: p for p in doc["producers"]}
    assert set(prods) == {f"p-{t}" for t in TOPIC_NAMES} | {"multi"}
    for i, t in enumerate(TOPIC_NAMES):
        p = prods[f"p-{t}"]
        check_client(p, producer=True)
        assert p["pub_counts"] == [{"topic": t, "count": i + 1}]
        assert p["remote_address"] == f"127.0.0.1:{producers[t].local_port}"
    # X1: without a topic filter nsqd lists an arbitrary subset; each entry must be true
    mc = {e["topic"]: e["count"] for e in prods["multi"]["pub_counts"]}
    assert mc and set(mc.items()) <= {("zulu", 1), ("alpha", 2)}, mc

    # topic filter: only that topic, all its channels; pub_counts of that topic only
    fd = stats(b, topic="alpha")
    assert [t["topic_name"] for t in fd["topics"]] == ["alpha"]
    assert len(fd["topics"][0]["channels"]) == len(CHANNEL_NAMES) + 1
    fprods = {p["client_id"]: p for p in fd["producers"]}
    assert set(fprods) == set(prods)  # every producer is still listed
    assert fprods["multi"]["pub_counts"] == [{"topic": "alpha", "count": 2}]
    assert fprods["p-alpha"]["pub_counts"] == [{"topic": "alpha", "count": 2}]
    assert "pub_counts" not in fprods["p-zulu"]  # omitempty when nothing for this topic
    fd = stats(b, topic="zulu")
    assert {p["client_id"]: p.get("pub_counts") for p in fd["producers"]}["multi"] == \
        [{"topic": "zulu", "count": 1}]

    # topic + channel filter
    fd = stats(b, topic="alpha", channel="m")
    assert [c["channel_name"] for c in fd["topics"][0]["channels"]] == ["m"]
    # channel filter alone: only topics that have that channel
    fd = stats(b, channel="a.b")
    assert [t["topic_name"] for t in fd["topics"]] == ["alpha"]
    fd = stats(b, channel="c0")
    assert [t["topic_name"] for t in fd["topics"]] == sorted(TOPIC_NAMES)
    assert all([c["channel_name"] for c in t["channels"]] == ["c0"] for t in fd["topics"])


def test_stats_paused_flags(broker):
    """H9/H10: paused reflects /topic/pause and /channel/pause independently."""
    post(broker, "/topic/create?topic=p1")
    post(broker, "/channel/create?topic=p1&channel=a")
    post(broker, "/channel/create?topic=p1&channel=b")
    post(broker, "/topic/pause?topic=p1")
    post(broker, "/channel/pause?topic=p1&channel=b")
    doc = stats(broker)
    assert find_topic(doc, "p1")["paused"] is True
    assert find_channel(doc, "p1", "a")["paused"] is False
    assert find_channel(doc, "p1", "b")["paused"] is True


def test_stats_e2e_percentiles(brokers, tcp):
    """H9/H10/Q19/X3: with --e2e-processing-latency-percentile the latency objects carry
    [{quantile, value}] per configured percentile; a topic with no channels keeps null."""
    b = brokers(args=["--e2e-processing-latency-percentile=0.5,0.99"])
    post(b, "/topic/create?topic=bare")
    c = tcp(b).sub("lat", "ch", rdy=5)
    for i in range(3):
        post(b, "/pub?topic=lat", b"x")
    for m in c.read_messages(3):
        c.fin(m["id"])
    wait_channel(b, "lat", "ch", in_flight_count=0)

    def e2e():
        return find_channel(stats(b), "lat", "ch")["e2e_processing_latency"]

    lat = wait_for(lambda: e2e() if e2e()["count"] >= 3 else None, what="e2e count 3")
    assert lat["count"] == 3
    # nsqd's flag parser keeps the percentiles sorted largest first (Q19).
    assert [p["quantile"] for p in lat["percentiles"]] == [0.99, 0.5]
    for p in lat["percentiles"]:
        assert set(p) == {"quantile", "value"}
        assert 0 < p["value"] < 10 * 10**9, p  # nanoseconds
    tl = find_topic(stats(b), "lat")["e2e_processing_latency"]
    assert tl["count"] == 3 and [p["quantile"] for p in tl["percentiles"]] == [0.99, 0.5]
    assert find_topic(stats(b), "bare")["e2e_processing_latency"] == E2E_OFF


# ------------------------------------------------------------------ H13 text format


def test_stats_text_empty(broker):
    """H13: text format on an empty broker: header lines, Health, Memory block,
    'Topics: None', 'Producers: None'."""
    r = get(broker, "/stats")
    assert r.status == 200
    assert r.header("X-NSQ-Content-Type") == V1_HEADER
    lines = r.text.split("\n")
    assert re.match(r"^nsqd v\d+\.\d+\.\d+\S* \(built w/.+\)$", lines[0]), lines[0]
    assert re.match(r"^start_time \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$",
                    lines[1]), lines[1]
    assert re.match(r"^uptime \S+$", lines[2]), lines[2]
    assert lines[3:6] == ["", "Health: OK", ""]
    assert lines[6] == "Memory:"
    for i, k in enumerate(MEMORY_KEYS):
        assert re.match(r"^   %s\t\d+$" % re.escape(f"{k:<25}"), lines[7 + i]), lines[7 + i]
    assert lines[16:] == ["", "Topics: None", "", "Producers: None", ""], lines[16:]
    # format=text is the same text; include_mem=false drops the Memory block
    again = get(broker, "/stats?format=text").text.split("\n")
    assert again[3:7] == lines[3:7] and again[16:] == lines[16:], again
    nomem = get(broker, "/stats?include_mem=false").text.split("\n")
    assert nomem[3:] == ["", "Health: OK", "", "Topics: None", "", "Producers: None", ""], nomem


def test_stats_text_topics_channels_clients_producers(broker, tcp):
    """H13: the Topics: block (paused prefix '*P ', %-15s topic, %-25s channel, counters,
    client lines) and the Producers: block, formatted as nsqd's printStats."""
    cons = tcp(broker, identify={"hostname": "h1", "user_agent": "ua1"})
    cons.sub("tx", "zz", rdy=4)
    prod = tcp(broker, identify={"hostname": "h2", "user_agent": "ua2"})
    prod.pub("tx", b"hello")
    prod.pub("tx", b"world")
    got = cons.read_messages(2)
    cons.fin(got[0]["id"])
    post(broker, "/channel/create?topic=tx&channel=aa")
    post(broker, "/channel/pause?topic=tx&channel=aa")
    post(broker, "/topic/create?topic=ty")
    post(broker, "/topic/pause?topic=ty")
    wait_channel(broker, "tx", "zz", in_flight_count=1)

    text = get(broker, "/stats?include_mem=false").text
    lines = text.split("\n")
    i = lines.index("Topics:")
    e2e = "e2e%: "
    assert lines[i + 1] == (f"   [{'tx':<15}] depth: {0:<5} be-depth: {0:<5} msgs: {2:<8} " + e2e)
    assert lines[i + 2] == (f"   *P [{'aa':<25}] depth: {0:<5} be-depth: {0:<5} inflt: {0:<4} "
                            f"def: {0:<4} re-q: {0:<5} timeout: {0:<5} msgs: {0:<8} " + e2e)
    assert lines[i + 3] == (f"      [{'zz':<25}] depth: {0:<5} be-depth: {0:<5} inflt: {1:<4} "
                            f"def: {0:<4} re-q: {0:<5} timeout: {0:<5} msgs: {2:<8} " + e2e)
    cid = f"h1:{cons.local_port} ua1"
    client_re = (r"^        \[V2 %s\] state: 3 inflt: %s rdy: %s fin: %s re-q: %s msgs: %s "
                 r"connected: (\d+[hms])+$" % (
                     re.escape(f"{cid:<21}"), re.escape(f"{1:<4}"), re.escape(f"{4:<4}"),
                     re.escape(f"{1:<8}"), re.escape(f"{0:<8}"), re.escape(f"{2:<8}")))
    assert re.match(client_re, lines[i + 4]), lines[i + 4]
    assert lines[i + 5] == ""
    assert lines[i + 6] == (f"*P [{'ty':<15}] depth: {0:<5} be-depth: {0:<5} msgs: {0:<8} " + e2e)
    assert lines[i + 7] == ""
    assert lines[i + 8] == "Producers:"
    pid = f"h2:{prod.local_port} ua2"
    prod_re = r"^   \[V2 %s\] msgs: %s topics: tx=2 connected: (\d+[hms])+$" % (
        re.escape(f"{pid:<21}"), re.escape(f"{2:<8}"))
    assert re.match(prod_re, lines[i + 9]), lines[i + 9]
    assert lines[i + 10:] == [""], lines[i + 10:]
