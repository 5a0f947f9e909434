"""Topic and channel admin routes: create, delete, empty, pause, unpause.

Rows: H14 (/topic/create), H15 (/topic/delete), H16 (/topic/empty), H17 (/topic/pause,
/topic/unpause), H18 (/channel/create), H19 (/channel/delete, empty, pause, unpause), with
the queue effects Q9-Q13 and the metadata write of D2. Codes from nsqd v1.3.0
nsqd/http.go and internal/http_api/topic_channel_args.go.
"""

import json
import os

from helpers.http_api import (
    assert_error,
    assert_ok_empty,
    assert_ok_text,
    find_channel,
    find_topic,
    post,
    stats,
)
from helpers.wait import wait_channel, wait_for, wait_topic
from helpers.wire import FRAME_ERROR


def names(doc):
    return [t["topic_name"] for t in doc["topics"] or []]


def read_metadata(broker):
    with open(os.path.join(broker.data_dir, "nsqd.dat")) as f:
        return json.load(f)


def meta_topic(meta, name):
    for t in meta["topics"]:
        if t["name"] == name:
            return t
    return None


# ------------------------------------------------------------------ H14 create


def test_topic_create_errors(broker):
    """H14: no topic -> 400 MISSING_ARG_TOPIC; invalid -> 400 INVALID_TOPIC; nothing created."""
    assert_error(post(broker, "/topic/create"), 400, "MISSING_ARG_TOPIC")
    assert_error(post(broker, "/topic/create?channel=c"), 400, "MISSING_ARG_TOPIC")
    for bad in ["", "b@d", "x" * 65, "a%2Fb"]:
        assert_error(post(broker, f"/topic/create?topic={bad}"), 400, "INVALID_TOPIC")
    assert stats(broker)["topics"] == []


def test_topic_create_is_idempotent(broker):
    """H14/Q16: create -> 200 empty body; again -> 200; the topic keeps its messages."""
    assert_ok_empty(post(broker, "/topic/create?topic=made"))
    t = find_topic(stats(broker), "made")
    assert t is not None and t["channels"] == [] and t["depth"] == 0 and t["paused"] is False
    assert_ok_text(post(broker, "/pub?topic=made", b"m1"))
    assert_ok_empty(post(broker, "/topic/create?topic=made"))
    assert_ok_empty(post(broker, "/topic/create?topic=made"))
    doc = stats(broker)
    assert names(doc) == ["made"]
    assert find_topic(doc, "made")["depth"] == 1
    assert find_topic(doc, "made")["message_count"] == 1


# ------------------------------------------------------------------ H15 delete


def test_topic_delete_errors(broker):
    """H15: no topic -> 400 MISSING_ARG_TOPIC; unknown (even an invalid name) -> 404
    TOPIC_NOT_FOUND."""
    assert_error(post(broker, "/topic/delete"), 400, "MISSING_ARG_TOPIC")
    assert_error(post(broker, "/topic/delete?topic=ghost"), 404, "TOPIC_NOT_FOUND")
    assert_error(post(broker, "/topic/delete?topic=b@d"), 404, "TOPIC_NOT_FOUND")


def test_topic_delete_removes_and_disconnects(broker, tcp):
    """H15/Q13: delete -> 200 empty; gone from /stats with its channels; its subscribed
    consumers are disconnected; a second delete -> 404; other topics untouched; a
    producer connection stays usable."""
    c1 = tcp(broker).sub("doomed", "a", rdy=1)
    c2 = tcp(broker).sub("doomed", "b", rdy=1)
    other = tcp(broker).sub("keeper", "a", rdy=1)
    prod = tcp(broker)
    prod.pub("doomed", b"queued")
    wait_channel(broker, "doomed", "b", in_flight_count=1)
    assert_ok_empty(post(broker, "/topic/delete?topic=doomed"))
    doc = stats(broker)
    assert names(doc) == ["keeper"]
    assert c1.is_closed(), "consumer of a deleted topic's channel was not disconnected"
    assert c2.is_closed(), "consumer of a deleted topic's channel was not disconnected"
    assert not other.is_closed(0.3)
    assert_error(post(broker, "/topic/delete?topic=doomed"), 404, "TOPIC_NOT_FOUND")
    # the producer connection was not subscribed: it still works and recreates the topic
    prod.pub("doomed", b"again")
    t = find_topic(stats(broker), "doomed")
    assert t["channels"] == [] and t["message_count"] == 1 and t["depth"] == 1, t


# ------------------------------------------------------------------ H16 topic empty


def test_topic_empty_errors(broker):
    """H16: MISSING_ARG_TOPIC / INVALID_TOPIC (400), TOPIC_NOT_FOUND (404)."""
    assert_error(post(broker, "/topic/empty"), 400, "MISSING_ARG_TOPIC")
    assert_error(post(broker, "/topic/empty?topic=b@d"), 400, "INVALID_TOPIC")
    assert_error(post(broker, "/topic/empty?topic=ghost"), 404, "TOPIC_NOT_FOUND")


def test_topic_empty_drops_topic_backlog(broker, tcp):
    """H16/Q11: /topic/empty drops the messages held by the topic (depth 0); a consumer that
    subscribes afterwards gets none of them, only new ones."""
    for i in range(5):
        assert_ok_text(post(broker, "/pub?topic=backlog", f"old{i}".encode()))
    wait_topic(broker, "backlog", depth=5)
    assert_ok_empty(post(broker, "/topic/empty?topic=backlog"))
    t = find_topic(stats(broker), "backlog")
    assert t["depth"] == 0 and t["backend_depth"] == 0, t
    c = tcp(broker).sub("backlog", "ch", rdy=10)
    c.expect_nothing(0.5)
    assert_ok_text(post(broker, "/pub?topic=backlog", b"new"))
    assert c.read_message()["body"] == b"new"
    c.expect_nothing(0.3)


def test_topic_empty_leaves_channels_alone(broker):
    """H16/Q11: emptying a topic does not touch its channels' queues."""
    assert_ok_empty(post(broker, "/topic/create?topic=te"))
    assert_ok_empty(post(broker, "/channel/create?topic=te&channel=c"))
    for i in range(3):
        assert_ok_text(post(broker, "/pub?topic=te", b"x"))
    wait_channel(broker, "te", "c", depth=3)
    assert_ok_empty(post(broker, "/topic/empty?topic=te"))
    assert find_channel(stats(broker), "te", "c")["depth"] == 3


# ------------------------------------------------------------------ H17 topic pause


def test_topic_pause_errors(broker):
    """H17: MISSING_ARG_TOPIC (400); unknown or invalid name -> 404 TOPIC_NOT_FOUND."""
    for route in ["pause", "unpause"]:
        assert_error(post(broker, f"/topic/{route}"), 400, "MISSING_ARG_TOPIC")
        assert_error(post(broker, f"/topic/{route}?topic=ghost"), 404, "TOPIC_NOT_FOUND")
        assert_error(post(broker, f"/topic/{route}?topic=b@d"), 404, "TOPIC_NOT_FOUND")
    assert stats(broker)["topics"] == []


def test_topic_pause_holds_messages_until_unpause(broker, tcp):
    """H17/Q9: a paused topic keeps new messages (topic depth grows, channel depth stays 0,
    the consumer gets nothing); /stats shows paused; unpause delivers them."""
    c = tcp(broker).sub("pt", "ch", rdy=10)
    assert_ok_empty(post(broker, "/topic/pause?topic=pt"))
    assert find_topic(stats(broker), "pt")["paused"] is True
    for i in range(3):
        assert_ok_text(post(broker, "/pub?topic=pt", f"p{i}".encode()))
    wait_topic(broker, "pt", depth=3)
    c.expect_nothing(0.6)
    doc = stats(broker)
    assert find_topic(doc, "pt")["depth"] == 3
    assert find_channel(doc, "pt", "ch")["depth"] == 0
    assert find_channel(doc, "pt", "ch")["message_count"] == 0
    assert_ok_empty(post(broker, "/topic/pause?topic=pt"))  # pausing twice is fine
    assert_ok_empty(post(broker, "/topic/unpause?topic=pt"))
    assert find_topic(stats(broker), "pt")["paused"] is False
    assert [m["body"] for m in c.read_messages(3)] == [b"p0", b"p1", b"p2"]
    wait_topic(broker, "pt", depth=0)


def test_topic_pause_persists_metadata(broker):
    """H17/D2: pause/unpause are written to nsqd.dat before the 200."""
    assert_ok_empty(post(broker, "/topic/create?topic=persist"))
    assert_ok_empty(post(broker, "/topic/pause?topic=persist"))
    t = meta_topic(read_metadata(broker), "persist")
    assert t is not None and t["paused"] is True, read_metadata(broker)
    assert_ok_empty(post(broker, "/topic/unpause?topic=persist"))
    assert meta_topic(read_metadata(broker), "persist")["paused"] is False


# ------------------------------------------------------------------ H18 channel create


CHANNEL_ROUTES = ["create", "delete", "empty", "pause", "unpause"]


def test_channel_routes_argument_errors(broker):
    """H18/H19: argument checks come before the lookup: MISSING_ARG_TOPIC,
    INVALID_ARG_TOPIC, MISSING_ARG_CHANNEL, INVALID_ARG_CHANNEL (400), then
    TOPIC_NOT_FOUND (404)."""
    for route in CHANNEL_ROUTES:
        u = f"/channel/{route}"
        assert_error(post(broker, u), 400, "MISSING_ARG_TOPIC")
        assert_error(post(broker, u + "?channel=c"), 400, "MISSING_ARG_TOPIC")
        assert_error(post(broker, u + "?topic=b@d&channel=c"), 400, "INVALID_ARG_TOPIC")
        assert_error(post(broker, u + "?topic=ghost"), 400, "MISSING_ARG_CHANNEL")
        assert_error(post(broker, u + "?topic=ghost&channel=b@d"), 400, "INVALID_ARG_CHANNEL")
        assert_error(post(broker, u + f"?topic=ghost&channel={'c' * 65}"), 400,
                     "INVALID_ARG_CHANNEL")
        assert_error(post(broker, u + "?topic=ghost&channel=c"), 404, "TOPIC_NOT_FOUND")
    assert stats(broker)["topics"] == []


def test_channel_not_found(broker):
    """H19: delete/empty/pause/unpause of an unknown channel -> 404 CHANNEL_NOT_FOUND."""
    assert_ok_empty(post(broker, "/topic/create?topic=t"))
    for route in ["delete", "empty", "pause", "unpause"]:
        assert_error(post(broker, f"/channel/{route}?topic=t&channel=nope"), 404,
                     "CHANNEL_NOT_FOUND")
    assert find_topic(stats(broker), "t")["channels"] == []


def test_channel_create_is_idempotent_and_receives(broker, tcp):
    """H18/Q1: create -> 200 empty; again -> 200; an HTTP-created channel gets a copy of each
    new message (depth grows) and keeps it across a repeated create."""
    assert_ok_empty(post(broker, "/topic/create?topic=cc"))
    assert_ok_empty(post(broker, "/channel/create?topic=cc&channel=one"))
    assert_ok_empty(post(broker, "/channel/create?topic=cc&channel=two%23ephemeral"))
    for i in range(2):
        assert_ok_text(post(broker, "/pub?topic=cc", b"x"))
    wait_channel(broker, "cc", "one", depth=2)
    assert_ok_empty(post(broker, "/channel/create?topic=cc&channel=one"))
    doc = stats(broker)
    t = find_topic(doc, "cc")
    assert [c["channel_name"] for c in t["channels"]] == ["one", "two#ephemeral"]
    assert find_channel(doc, "cc", "one")["depth"] == 2
    assert find_channel(doc, "cc", "one")["message_count"] == 2
    c = tcp(broker).sub("cc", "one", rdy=5)
    assert len(c.read_messages(2)) == 2


# ------------------------------------------------------------------ H19 channel delete


def test_channel_delete_removes_and_disconnects(broker, tcp):
    """H19/Q13: delete -> 200 empty; the channel leaves /stats, the topic and its other
    channels stay; the channel's consumer is disconnected; second delete -> 404."""
    gone = tcp(broker).sub("cd", "gone", rdy=1)
    stay = tcp(broker).sub("cd", "stay", rdy=1)
    wait_channel(broker, "cd", "gone", client_count=1)
    assert_ok_empty(post(broker, "/channel/delete?topic=cd&channel=gone"))
    t = find_topic(stats(broker), "cd")
    assert [c["channel_name"] for c in t["channels"]] == ["stay"]
    assert gone.is_closed(), "consumer of a deleted channel was not disconnected"
    assert not stay.is_closed(0.3)
    assert_error(post(broker, "/channel/delete?topic=cd&channel=gone"), 404, "CHANNEL_NOT_FOUND")
    assert_ok_text(post(broker, "/pub?topic=cd", b"still"))
    assert stay.read_message()["body"] == b"still"


# ------------------------------------------------------------------ H19 channel empty


def test_channel_empty_drops_queue_and_in_flight(broker, tcp):
    """H19/Q12: /channel/empty drops queued, in-flight and deferred messages: depth,
    in_flight_count and deferred_count go to 0, the consumer gets none of the old backlog,
    a FIN of an old in-flight message fails (E_FIN_FAILED), new messages still flow."""
    c = tcp(broker).sub("ce", "ch", rdy=2)
    p = tcp(broker)
    p.mpub("ce", [f"old{i}".encode() for i in range(6)])
    p.dpub("ce", 60000, b"deferred")
    held = c.read_messages(2)
    wait_channel(broker, "ce", "ch", depth=4)
    ch = find_channel(stats(broker), "ce", "ch")
    assert ch["in_flight_count"] == 2 and ch["deferred_count"] == 1, ch
    assert_ok_empty(post(broker, "/channel/empty?topic=ce&channel=ch"))
    doc = stats(broker)
    ch = find_channel(doc, "ce", "ch")
    assert ch["depth"] == 0 and ch["in_flight_count"] == 0 and ch["deferred_count"] == 0, ch
    assert ch["clients"][0]["in_flight_count"] == 0, ch["clients"]
    # the client is ready again (in_flight reset) but nothing old is delivered
    c.expect_nothing(0.5)
    c.fin(held[0]["id"])
    ftype, data = c.read_frame()
    assert ftype == FRAME_ERROR and data.startswith(b"E_FIN_FAILED"), (ftype, data)
    p.pub("ce", b"fresh")
    assert c.read_message()["body"] == b"fresh"


# ------------------------------------------------------------------ H19 channel pause


def test_channel_pause_holds_until_unpause(broker, tcp):
    """H19/Q10: a consumer of a paused channel receives nothing while the channel depth
    grows; other channels keep flowing; /stats shows paused; unpause delivers."""
    c = tcp(broker).sub("cp", "paused", rdy=10)
    other = tcp(broker).sub("cp", "free", rdy=10)
    assert_ok_empty(post(broker, "/channel/pause?topic=cp&channel=paused"))
    doc = stats(broker)
    assert find_channel(doc, "cp", "paused")["paused"] is True
    assert find_channel(doc, "cp", "free")["paused"] is False
    assert find_topic(doc, "cp")["paused"] is False
    for i in range(3):
        assert_ok_text(post(broker, "/pub?topic=cp", f"c{i}".encode()))
    assert [m["body"] for m in other.read_messages(3)] == [b"c0", b"c1", b"c2"]
    wait_channel(broker, "cp", "paused", depth=3)
    c.expect_nothing(0.6)
    assert find_channel(stats(broker), "cp", "paused")["in_flight_count"] == 0
    assert_ok_empty(post(broker, "/channel/unpause?topic=cp&channel=paused"))
    assert find_channel(stats(broker), "cp", "paused")["paused"] is False
    assert [m["body"] for m in c.read_messages(3)] == [b"c0", b"c1", b"c2"]
    wait_channel(broker, "cp", "paused", depth=0)


def test_channel_pause_persists_metadata(broker):
    """H19/D2: channel pause/unpause are written to nsqd.dat before the 200."""
    assert_ok_empty(post(broker, "/topic/create?topic=mp"))
    assert_ok_empty(post(broker, "/channel/create?topic=mp&channel=c"))
    assert_ok_empty(post(broker, "/channel/pause?topic=mp&channel=c"))
    t = meta_topic(read_metadata(broker), "mp")
    assert t is not None and t["channels"] == [{"name": "c", "paused": True}], t
    assert_ok_empty(post(broker, "/channel/unpause?topic=mp&channel=c"))
    assert meta_topic(read_metadata(broker), "mp")["channels"] == [{"name": "c", "paused": False}]


def test_admin_routes_across_cores(brokers, tcp):
    """H14-H19 with --cores 2: admin actions reach topics wherever they live."""
    b = brokers(cores=2)
    topics = [f"x{i}" for i in range(8)]
    consumers = {}
    for t in topics:
        assert_ok_empty(post(b, f"/topic/create?topic={t}"))
        assert_ok_empty(post(b, f"/channel/create?topic={t}&channel=c"))
        consumers[t] = tcp(b).sub(t, "c", rdy=5)
    for t in topics:
        assert_ok_empty(post(b, f"/channel/pause?topic={t}&channel=c"))
        assert_ok_text(post(b, f"/pub?topic={t}", t.encode()))
    for t in topics:
        wait_channel(b, t, "c", depth=1)
    for t in topics:
        consumers[t].expect_nothing(0.05)
        assert_ok_empty(post(b, f"/channel/unpause?topic={t}&channel=c"))
    for t in topics:
        assert consumers[t].read_message()["body"] == t.encode()
    for t in topics[:4]:
        assert_ok_empty(post(b, f"/topic/delete?topic={t}"))
    assert names(stats(b)) == topics[4:]
    for t in topics[:4]:
        assert consumers[t].is_closed()
    wait_for(lambda: all(find_channel(stats(b), t, "c")["client_count"] == 1 for t in topics[4:]))
