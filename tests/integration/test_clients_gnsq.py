"""gnsq 1.0.2's low-level NsqdTCPClient against ringsqd.

gnsq is gevent based; each scenario runs as a generated script in a fresh interpreter
(no monkey patching in the pytest process). The script prints one JSON line that the
test checks. Reference rows: nsqd-reference.md sections 1 (T*) and 2 (Q*).
"""

import os

from helpers.clients import run_gnsq_script

COMMON = r"""
import binascii
import gnsq
from gnsq import protocol as nsq
from gnsq.errors import NSQSocketError

HOST, PORT = P["addr"].rsplit(":", 1)
PORT = int(PORT)


def client(hb=30):
    c = gnsq.NsqdTCPClient(HOST, PORT, heartbeat_interval=hb, timeout=10.0)
    c.connect()
    return c


def ok_or_error(c):
    # skip heartbeats; return the first non-heartbeat response or error as text
    while True:
        frame, data = c.read_response()
        if frame == nsq.FRAME_TYPE_RESPONSE and data == nsq.HEARTBEAT:
            continue
        if frame == nsq.FRAME_TYPE_ERROR:
            return "ERR:" + type(data).__name__ + ":" + str(data)
        if frame == nsq.FRAME_TYPE_MESSAGE:
            return "MSG"
        return data.decode()


def read_for(c, seconds, stop=None):
    # read frames until `seconds` pass (heartbeats at 1 s wake the read up) or stop(frames)
    frames = []
    end = time.time() + seconds
    while time.time() < end:
        frame, data = c.read_response()
        if frame == nsq.FRAME_TYPE_MESSAGE:
            frames.append(("msg", data))
        elif frame == nsq.FRAME_TYPE_ERROR:
            frames.append(("err", type(data).__name__ + ":" + str(data)))
        elif data != nsq.HEARTBEAT:
            frames.append(("resp", data.decode()))
        if stop and stop(frames):
            break
    return frames


def msg_json(m):
    return {"id": m.id.decode(), "body": binascii.hexlify(m.body).decode(), "attempts": m.attempts}
"""


def test_gnsq_identify_pub_mpub_sub_rdy_fin(brokers):
    """T17/T30/T31/T23/T24/T25/Q6/Q7 via gnsq NsqdTCPClient: IDENTIFY with feature_negotiation
    returns the JSON features (max_rdy_count 2500, msg_timeout from --msg-timeout, version);
    PUB and MPUB answer OK; SUB answers OK; RDY 10 delivers all messages byte-exact with
    attempts 1; FIN'd messages never come back while the one left unanswered is redelivered
    after --msg-timeout=1s with attempts 2 (nsqd may take up to its 5 s scanner refresh for
    the first timeout of a new channel, Q5)."""
    b = brokers(args=["--msg-timeout=1s"])
    bodies = [bytes(range(256)), b"\x00\n\r", os.urandom(2000), b"gnsq-4", b"gnsq-5"]
    res = run_gnsq_script(
        COMMON
        + r"""
bodies = [binascii.unhexlify(x) for x in P["bodies"]]
out = {}
pub = client()
out["pub_identify"] = pub.identify()
pub.publish("gnsq_t", bodies[0])
out["pub"] = ok_or_error(pub)
pub.multipublish("gnsq_t", bodies[1:])
out["mpub"] = ok_or_error(pub)

con = client(hb=1)
out["con_identify"] = con.identify()
con.subscribe("gnsq_t", "ch")
out["sub"] = ok_or_error(con)
con.ready(10)
msgs = []
frames = read_for(con, 5, stop=lambda f: len([x for x in f if x[0] == "msg"]) >= len(bodies))
got = [d for k, d in frames if k == "msg"]
out["first"] = [msg_json(m) for m in got]
out["first_other"] = [x for x in frames if x[0] != "msg"]
keep = None
for m in got:
    if m.body == bodies[-1]:
        keep = m            # leave this one in flight: it must time out
    else:
        m.finish()
# up to 1 s timeout + nsqd's 5 s scanner list refresh for a new channel (Q5)
frames = read_for(con, 7.5, stop=lambda f: any(x[0] == "msg" for x in f))
for k, d in frames:
    if k == "msg":
        d.finish()
frames += read_for(con, 1.5)  # FIN'd messages (timeout 1 s) must not come back
out["second"] = [msg_json(d) for k, d in frames if k == "msg"]
out["second_other"] = [x for x in frames if x[0] != "msg"]
out["connected"] = con.is_connected
print(json.dumps(out))
""",
        addr=b.tcp_address,
        bodies=[x.hex() for x in bodies],
    )
    for key in ("pub_identify", "con_identify"):
        ident = res[key]
        assert isinstance(ident, dict), "feature_negotiation must answer JSON (T17): %r" % ident
        assert ident["max_rdy_count"] == 2500
        assert ident["msg_timeout"] == 1000
        assert ident["max_msg_timeout"] == 900000
        assert isinstance(ident["version"], str) and ident["version"].split(".")[0].isdigit()
        for f in ("tls_v1", "deflate", "snappy"):
            assert ident[f] is False, (f, ident[f])
    assert res["pub"] == "OK" and res["mpub"] == "OK" and res["sub"] == "OK", res
    first = res["first"]
    assert sorted(m["body"] for m in first) == sorted(x.hex() for x in bodies)
    assert all(m["attempts"] == 1 for m in first)
    assert len({m["id"] for m in first}) == len(bodies)
    assert res["first_other"] == []
    # only the unanswered message comes back, once, with attempts 2
    kept = [m for m in first if m["body"] == bodies[-1].hex()][0]
    assert [(m["id"], m["body"], m["attempts"]) for m in res["second"]] == [(kept["id"], kept["body"], 2)], res["second"]
    assert res["second_other"] == []
    assert res["connected"] is True


def test_gnsq_fin_failed_is_not_fatal_and_consumer_can_publish(broker):
    """T25/T11/T9: FIN of an id that is not in flight gets E_FIN_FAILED, which is non-fatal:
    the same subscribed connection then PUBlishes (allowed in any state), gets OK, and
    receives that message itself."""
    res = run_gnsq_script(
        COMMON
        + r"""
out = {}
con = client(hb=1)
con.identify()
con.subscribe("gnsq_fin", "ch")
out["sub"] = ok_or_error(con)
con.ready(1)
con.send(nsq.finish(b"0123456789abcdef"))
frames = read_for(con, 1.5, stop=lambda f: len(f) >= 1)
out["fin_frames"] = [list(x) for x in frames]
out["connected_after_fin"] = con.is_connected
con.publish("gnsq_fin", b"self-delivery")
frames = read_for(con, 3, stop=lambda f: any(x[0] == "msg" for x in f) and any(x[0] == "resp" for x in f))
out["pub_frames"] = [x[1] if x[0] != "msg" else "MSG:" + x[1].body.decode() for x in frames]
print(json.dumps(out))
""",
        addr=broker.tcp_address,
    )
    assert res["sub"] == "OK"
    assert len(res["fin_frames"]) == 1, res["fin_frames"]
    kind, text = res["fin_frames"][0]
    assert kind == "err" and text.startswith("NSQFinishFailed"), res["fin_frames"]
    assert res["connected_after_fin"] is True
    assert sorted(res["pub_frames"]) == ["MSG:self-delivery", "OK"], res["pub_frames"]


def test_gnsq_cls_stops_delivery_but_allows_fin(broker):
    """T28/T9/Q1: CLS answers CLOSE_WAIT and sets RDY 0; a later RDY is ignored (not an
    error), the in-flight message can still be FIN'd, no further message is pushed, and the
    server does not close the connection. The rest of the channel goes to another consumer."""
    res = run_gnsq_script(
        COMMON
        + r"""
out = {}
pub = client()
pub.identify()
bodies = [b"cls-%d" % i for i in range(5)]
pub.multipublish("gnsq_cls", bodies)
out["mpub"] = ok_or_error(pub)

a = client(hb=1)
a.identify()
a.subscribe("gnsq_cls", "ch")
out["sub_a"] = ok_or_error(a)
a.ready(1)
frames = read_for(a, 3, stop=lambda f: any(x[0] == "msg" for x in f))
held = [d for k, d in frames if k == "msg"]
out["a_first"] = [m.body.decode() for m in held]
a.close()                     # CLS
frames = read_for(a, 2, stop=lambda f: len(f) >= 1)
out["cls_frames"] = [x[1] if x[0] != "msg" else "MSG" for x in frames]
a.ready(5)                    # ignored while closing
held[0].finish()              # FIN still allowed while closing
frames = read_for(a, 1.5)
out["a_after_cls"] = [x[1] if x[0] != "msg" else "MSG:" + x[1].body.decode() for x in frames]
out["a_connected"] = a.is_connected

b = client(hb=1)
b.identify()
b.subscribe("gnsq_cls", "ch")
out["sub_b"] = ok_or_error(b)
b.ready(10)
frames = read_for(b, 4, stop=lambda f: len([x for x in f if x[0] == "msg"]) >= 4)
got = [d for k, d in frames if k == "msg"]
for m in got:
    m.finish()
frames += read_for(b, 1.2)
out["b_bodies"] = sorted(d.body.decode() for k, d in frames if k == "msg")
out["b_attempts"] = sorted(d.attempts for k, d in frames if k == "msg")
print(json.dumps(out))
""",
        addr=broker.tcp_address,
    )
    assert res["mpub"] == "OK" and res["sub_a"] == "OK" and res["sub_b"] == "OK", res
    assert len(res["a_first"]) == 1
    assert res["cls_frames"] == ["CLOSE_WAIT"], res["cls_frames"]
    assert res["a_after_cls"] == [], "after CLS: no messages, and RDY/FIN must not error: %r" % res["a_after_cls"]
    assert res["a_connected"] is True, "the server must not close the connection on CLS (T28)"
    rest = sorted(set("cls-%d" % i for i in range(5)) - set(res["a_first"]))
    assert res["b_bodies"] == rest, res["b_bodies"]
    assert res["b_attempts"] == [1, 1, 1, 1]


def test_gnsq_unanswered_heartbeats_drop_connection(broker):
    """T33: with heartbeat_interval=1000 ms the server's read deadline is 2 intervals; a
    client that sends nothing for 3.5 s is disconnected (contrast: the pynsq idle consumer
    that answers heartbeats stays connected)."""
    res = run_gnsq_script(
        COMMON
        + r"""
out = {}
c = client(hb=1)
c.identify()
c.subscribe("gnsq_hb", "ch")
out["sub"] = ok_or_error(c)
time.sleep(3.5)               # plain sleep: no read, so no NOP answers
heartbeats = 0
closed = False
try:
    for _ in range(10):
        frame, data = nsq.unpack_response(c._read_response())
        if data == nsq.HEARTBEAT:
            heartbeats += 1
except Exception as e:
    closed = True
out["closed"] = closed
out["heartbeats"] = heartbeats
print(json.dumps(out))
""",
        addr=broker.tcp_address,
    )
    assert res["sub"] == "OK"
    assert res["closed"] is True, "connection that ignores heartbeats must be dropped: %r" % res
    assert 1 <= res["heartbeats"] <= 3, res
