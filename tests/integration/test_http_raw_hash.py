"""A raw `#` in an HTTP request target, as nsqd reads it (issue 12 item 5; rows H2,
H6, H14, H18, Q14).

nsqd's Go server parses the target with url.ParseRequestURI, which cuts no
fragment: in `POST /pub?topic=t#ephemeral` the query is `topic=t#ephemeral`, so the
message goes to the ephemeral topic `t#ephemeral` (Q14: not in nsqd.dat, deleted
with its last channel); a `#` before the `?` stays in the path, which no route
matches (404 NOT_FOUND). Clients that build URLs by string concatenation send such
targets. Every request here is written on a raw socket, so that nothing escapes
the `#` on the way.
"""

import json
import os
import socket

from helpers.http_api import (
    assert_error,
    assert_ok_empty,
    assert_ok_text,
    chunk_encode,
    Consumer,
    find_topic,
    post,
    read_http_response,
    Resp,
    stats,
)
from helpers.wait import wait_for


def raw(b, data, responses=1):
    """Writes `data` in one send on a new connection; reads `responses` answers."""
    s = socket.create_connection(("127.0.0.1", b.http_port), timeout=10)
    try:
        s.sendall(data)
        f = s.makefile("rb")
        return [Resp(*read_http_response(f)) for _ in range(responses)]
    finally:
        s.close()


def request(method, target, body=None, chunked=False):
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\n".encode()
    if body is None:
        return head + b"\r\n"
    if chunked:
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk_encode(body, step=3)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def topic_names(b):
    return sorted(t["topic_name"] for t in stats(b)["topics"] or [])


def saved_topics(b):
    """Topic -> channel names, from the nsqd.dat a clean stop wrote."""
    with open(os.path.join(b.data_dir, "nsqd.dat")) as f:
        doc = json.load(f)
    return {t["name"]: sorted(c["name"] for c in t["channels"] or []) for t in doc["topics"]}


def test_pub_to_topic_hash_ephemeral_reaches_the_ephemeral_topic(brokers):
    """H6/Q14: `/pub?topic=t#ephemeral` publishes to `t#ephemeral`, not to `t`; the
    body (with its own `#`) arrives byte-exact; the topic goes when its last channel
    does; it is never written to nsqd.dat, while `/pub?topic=t` stays the durable `t`."""
    b = brokers(cores=2)
    (r,) = raw(b, request("POST", "/pub?topic=t#ephemeral", b"body #1 #ephemeral"))
    assert_ok_text(r)
    assert topic_names(b) == ["t#ephemeral"]
    assert find_topic(stats(b), "t#ephemeral")["depth"] == 1

    c = Consumer(b).sub("t#ephemeral", "c#ephemeral", rdy=1)
    assert c.read_message()["body"] == b"body #1 #ephemeral"
    c.close()
    wait_for(lambda: topic_names(b) == [], what="the ephemeral topic deleted with its channel")

    (r,) = raw(b, request("POST", "/pub?topic=t#ephemeral", b"again"))
    assert_ok_text(r)
    (r,) = raw(b, request("POST", "/pub?topic=t", b"durable"))
    assert_ok_text(r)
    assert topic_names(b) == ["t", "t#ephemeral"]
    assert b.stop() == 0
    assert saved_topics(b) == {"t": []}


def test_topic_and_channel_create_with_a_raw_hash(brokers):
    """H14/H18: `/topic/create?topic=x#ephemeral` creates the ephemeral topic
    `x#ephemeral`, `/channel/create?topic=d&channel=c#ephemeral` the ephemeral
    channel `c#ephemeral` of `d`; neither is saved in nsqd.dat."""
    b = brokers(cores=2)
    r1, r2, r3 = raw(b, request("POST", "/topic/create?topic=x#ephemeral")
                     + request("POST", "/topic/create?topic=d")
                     + request("POST", "/channel/create?topic=d&channel=c#ephemeral"), 3)
    for r in (r1, r2, r3):
        assert_ok_empty(r)
    doc = stats(b)
    assert topic_names(b) == ["d", "x#ephemeral"]
    assert [c["channel_name"] for c in find_topic(doc, "d")["channels"]] == ["c#ephemeral"]
    assert find_topic(doc, "x#ephemeral")["channels"] == []
    assert b.stop() == 0
    assert saved_topics(b) == {"d": []}


def test_pipelined_requests_with_bodies_each_read_their_raw_hash(brokers):
    """Keep-alive, one write: a Content-Length /pub whose body looks like a request
    line with a `#`, a chunked /mpub, then /topic/create and /stats with `#`
    targets. Each target keeps its `#`; no body byte changes."""
    b = brokers(cores=2)
    pub_body = b"GET /x#y HTTP/1.1\r\n#"
    lines = [b"m#1", b"m#2"]
    r = raw(b, request("POST", "/pub?topic=p#ephemeral", pub_body)
            + request("POST", "/mpub?topic=p#ephemeral", b"\n".join(lines), chunked=True)
            + request("POST", "/topic/create?topic=q#ephemeral")
            + request("GET", "/stats?format=json&topic=p#ephemeral"), 4)
    assert_ok_text(r[0])
    assert_ok_text(r[1])
    assert_ok_empty(r[2])
    assert r[3].status == 200, r[3]
    assert [t["topic_name"] for t in r[3].json()["topics"]] == ["p#ephemeral"]
    assert r[3].json()["topics"][0]["depth"] == 3
    assert topic_names(b) == ["p#ephemeral", "q#ephemeral"]

    c = Consumer(b).sub("p#ephemeral", "c", rdy=3)
    assert [m["body"] for m in c.read_messages(3)] == [pub_body] + lines
    c.close()


def test_percent_23_and_plain_targets_are_unchanged(brokers):
    """`%23` (what a URL encoder sends) still means `#`; a target without `#` is
    read as before; a `#` before the `?` stays in the path: no route, 404
    NOT_FOUND (H2), and nothing is created."""
    b = brokers(cores=2)
    assert_ok_text(post(b, "/pub?topic=u%23ephemeral", b"escaped"))
    assert_ok_text(post(b, "/pub?topic=plain", b"plain"))
    (r,) = raw(b, request("POST", "/pub#x?topic=z", b"nowhere"))
    assert_error(r, 404, "NOT_FOUND")
    assert topic_names(b) == ["plain", "u#ephemeral"]
    c = Consumer(b).sub("u#ephemeral", "c", rdy=1)
    assert c.read_message()["body"] == b"escaped"
    c.close()
