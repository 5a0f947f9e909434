"""AUTH over a connection's life (rows T21, T22, A1, A2, H11 of the reference): TTL
expiry and lazy re-query, command order while a query is pending, a core that keeps
serving others meanwhile, /stats fields, and pynsq's auth_secret.
"""

import json

import pytest

from helpers.authd import EVERYTHING, auth_broker, authorization, do_auth
from helpers.clients import Collector
from helpers.http_api import stats
from helpers.wait import wait_for
from helpers.wire import FRAME_RESPONSE, OK, Conn, cmd_bytes, expect_error, read_message_within


def publish_until(w, pred, topic="t", timeout=10.0):
    """PUB on `w` (each answered OK) until pred() holds."""

    def step():
        w.cmd(f"PUB {topic}", b"m")
        assert w.read_frame() == OK
        return pred()

    wait_for(step, timeout=timeout, interval=0.05, what="re-query")


# ---------------------------------------------------------------- TTL


def test_ttl_expiry_requeries_lazily_and_never_for_idle_connections(brokers, authd):
    """T22: after the TTL a PUB asks the server again, with the same query; a
    connection that sends nothing meanwhile is never re-queried."""
    s = authd()
    s.grant(ttl=1)
    b = auth_broker(brokers, s.address)
    idle = Conn(b)
    do_auth(idle, b"idle")
    busy = Conn(b)
    do_auth(busy, b"busy")
    publish_until(busy, lambda: s.secrets().count("busy") >= 2)
    # More than one TTL has passed for `idle` too (it authed first): still one query.
    assert s.secrets().count("idle") == 1
    first, again = [q for q in s.queries if q.params["secret"] == ["busy"]][:2]
    assert first.raw_query == again.raw_query
    # Its next command re-queries.
    idle.cmd("PUB t", b"m")
    assert idle.read_frame() == OK
    assert s.secrets().count("idle") == 2


def test_requery_failure_is_auth_failed(brokers, authd):
    """T22: the cached grant serves until the TTL; then a failed re-query is
    E_AUTH_FAILED AUTH failed (fatal)."""
    s = authd()
    s.grant(ttl=1)
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    do_auth(w)
    s.answer(500, b"gone")

    def pub_once():
        w.cmd("PUB t", b"m")
        frame = w.read_frame()
        return frame if frame != OK else None

    assert wait_for(pub_once, timeout=10, interval=0.05, what="failed re-query") == (1, b"E_AUTH_FAILED AUTH failed")
    assert w.is_closed(3.0)
    assert s.count() == 2


def test_requery_with_fewer_permissions_is_unauthorized(brokers, authd):
    """A re-query's answer replaces the grant: SUB after expiry is checked against it."""
    s = authd()
    s.grant(ttl=1)
    b = auth_broker(brokers, s.address)
    c = Conn(b)
    do_auth(c, b"consumer")
    clock = Conn(b)
    do_auth(clock, b"clock")
    s.grant([authorization("^other$", [".*"], ["publish", "subscribe"])], ttl=60)
    # `clock` authed after `c`: once its re-query is recorded, c's grant has expired.
    publish_until(clock, lambda: s.secrets().count("clock") >= 2, topic="other")
    assert s.secrets().count("consumer") == 1
    c.cmd("SUB t c")
    expect_error(c, 'E_UNAUTHORIZED AUTH failed for SUB on "t" "c"')
    assert s.secrets().count("consumer") == 2


def test_publish_after_requery_checks_the_new_grant(brokers, authd):
    """Publishes on one topic are allowed until the TTL; the re-query's smaller grant
    then refuses the same topic (nothing allowed before is remembered past it)."""
    s = authd()
    s.grant(ttl=1)
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    do_auth(w)
    w.cmd("PUB t", b"m")
    assert w.read_frame() == OK
    s.grant([authorization("^other$", [".*"], ["publish"])], ttl=60)

    def pub_once():
        w.cmd("PUB t", b"m")
        frame = w.read_frame()
        return frame if frame != OK else None

    frame = wait_for(pub_once, timeout=10, interval=0.05, what="refused publish")
    assert frame == (1, b'E_UNAUTHORIZED AUTH failed for PUB on "t" ""')
    assert s.count() == 2


# ---------------------------------------------------------------- order and cores


def test_commands_wait_for_a_pending_auth_and_the_core_serves_others(brokers, authd):
    """While the auth server has not answered, the connection's later commands wait
    (their answers follow AUTH's), and other connections on the same core go on."""
    s = authd()
    b = auth_broker(brokers, s.address, args=["--cores=1"])
    other = Conn(b)
    do_auth(other, b"other")
    s.hold()
    w = Conn(b)
    w.send(cmd_bytes("AUTH", b"held") + cmd_bytes("PUB t", b"one") + cmd_bytes("PUB t", b"two"))
    s.wait_queries(2)
    # The one core still serves `other` (its grant is cached: no query).
    for _ in range(3):
        other.cmd("PUB t", b"x")
        assert other.read_frame() == OK
    c = Conn(b)
    s.release()
    do_auth(c, b"consumer")
    ft, data = w.read_frame()
    assert ft == FRAME_RESPONSE and json.loads(data)["permission_count"] == 1
    assert w.read_frame() == OK
    assert w.read_frame() == OK


def test_pending_auth_then_refused_closes_before_later_commands(brokers, authd):
    s = authd()
    s.hold()
    s.answer(500, b"no")
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    w.send(cmd_bytes("AUTH", b"held") + cmd_bytes("PUB t", b"one"))
    s.wait_queries(1)
    s.release()
    expect_error(w, "E_AUTH_FAILED AUTH failed")
    doc = stats(b, topic="t")
    assert all(t["topic_name"] != "t" or t["message_count"] == 0 for t in doc["topics"] or [])


# ---------------------------------------------------------------- /stats


def find_client(doc, topic, channel):
    for t in doc["topics"]:
        if t["topic_name"] == topic:
            for ch in t["channels"]:
                if ch["channel_name"] == channel:
                    return ch["clients"]
    return None


def test_stats_show_auth_fields(brokers, authd):
    """H11: authed, auth_identity, auth_identity_url per client, left out when unset."""
    s = authd()
    s.grant(identity="alice", identity_url="https://id.example/alice")
    b = auth_broker(brokers, s.address, args=["--cores=1"])
    c = Conn(b)
    do_auth(c)
    c.cmd("SUB t c")
    assert c.read_frame() == OK
    p = Conn(b)
    do_auth(p)
    p.cmd("PUB t", b"m")
    assert p.read_frame() == OK
    plain = Conn(b)
    plain.cmd("NOP")
    doc = wait_for(lambda: (lambda d: d if find_client(d, "t", "c") else None)(stats(b)), what="consumer in stats")
    [consumer] = find_client(doc, "t", "c")
    assert consumer["authed"] is True
    assert consumer["auth_identity"] == "alice"
    assert consumer["auth_identity_url"] == "https://id.example/alice"
    [producer] = doc["producers"]
    assert (producer["authed"], producer["auth_identity"]) == (True, "alice")
    # Key order as nsqd's ClientStats: after user_agent, before pub_counts and tls.
    keys = list(producer)
    assert keys.index("user_agent") < keys.index("authed") < keys.index("auth_identity_url") < keys.index("pub_counts")


def test_stats_of_unauthed_clients_omit_auth_fields(broker):
    p = Conn(broker)
    p.cmd("PUB t", b"m")
    assert p.read_frame() == OK
    [producer] = stats(broker)["producers"]
    assert not {"authed", "auth_identity", "auth_identity_url"} & set(producer)


# ---------------------------------------------------------------- real clients


def test_pynsq_with_auth_secret(brokers, authd, loop):
    """pynsq sends AUTH after IDENTIFY when auth_required is true, reads the JSON
    answer, then publishes and consumes."""
    s = authd()
    s.grant([authorization("^pyt$", [".*"], ["publish", "subscribe"])], identity="py")
    b = auth_broker(brokers, s.address)
    got = Collector()
    r = loop.reader(b.tcp_address, "pyt", "ch", handler=got, auth_secret="reader-secret")
    loop.wait_subscribed([r])
    w = loop.writer(b.tcp_address, auth_secret="writer-secret")
    loop.wait_connected([w])
    assert loop.publish(w, [("pub", "pyt", b"hello"), ("mpub", "pyt", [b"a", b"b"])]) == [b"OK", b"OK"]
    assert loop.run_until(lambda: len(got.bodies) == 3, 10), got.bodies
    assert sorted(got.bodies) == [b"a", b"b", b"hello"]
    assert sorted(s.secrets()) == ["reader-secret", "writer-secret"]


def test_pynsq_refused_publish(brokers, authd, loop):
    s = authd()
    s.grant([authorization("^only$", [".*"], ["publish"])])
    b = auth_broker(brokers, s.address)
    w = loop.writer(b.tcp_address, auth_secret="w")
    loop.wait_connected([w])
    [res] = loop.publish(w, [("pub", "forbidden", b"x")])
    assert 'E_UNAUTHORIZED AUTH failed for PUB on "forbidden" ""' in str(res)
