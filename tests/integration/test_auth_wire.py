"""AUTH against an auth server (rows T21, T22, A1, A2 of the reference), byte-exact
against nsqd 1.3.0's protocol_v2.go, client_v2.go and internal/auth.

The auth server is `helpers.authd.AuthServer`, inside the test process; every error
frame is matched exactly and every error here is fatal (the connection closes).
"""

import json

import pytest

from helpers.authd import EVERYTHING, AuthServer, auth_broker, authorization, do_auth
from helpers.broker import free_port
from helpers.wire import (
    FRAME_RESPONSE,
    OK,
    Conn,
    cmd_bytes,
    expect_error,
    i32,
    identify_ok,
    mpub_body,
    read_message_within,
)


def send_auth(w, secret=b"s3cret"):
    w.cmd("AUTH", secret)
    return w.read_frame()


# ---------------------------------------------------------------- IDENTIFY and AUTH itself


def test_identify_says_auth_required(brokers, authd):
    """T17/T22: auth_required is true once an auth server is configured."""
    b = auth_broker(brokers, authd().address)
    w = Conn(b)
    assert identify_ok(w, feature_negotiation=True)["auth_required"] is True


def test_auth_answers_identity_json_and_queries_as_nsqd(brokers, authd):
    """T21/A1: GET /auth with the four parameters Go's url.Values.Encode writes (keys
    sorted, QueryEscape'd), common_name present and empty without a client
    certificate; AUTH's answer is Go's JSON of identity, identity_url and the number of
    authorizations."""
    s = authd()
    s.grant(EVERYTHING + [authorization("x", ["y"], ["subscribe"])], identity="a<b>&c", identity_url="http://u/?a=1&b=2")
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    w.cmd("AUTH", b"se cret+/~*\xff=&")
    ft, data = w.read_frame()
    assert (ft, data) == (
        FRAME_RESPONSE,
        b'{"identity":"a\\u003cb\\u003e\\u0026c","identity_url":"http://u/?a=1\\u0026b=2","permission_count":2}',
    )
    [q] = s.wait_queries(1)
    assert q.path == "/auth"
    assert q.raw_query == "common_name=&remote_ip=127.0.0.1&secret=se+cret%2B%2F~%2A%FF%3D%26&tls=false"
    assert q.headers["Accept"] == "application/vnd.nsq; version=1.0"
    assert q.headers["Host"] == s.address
    w.cmd("PUB t", b"m")
    assert w.read_frame() == OK


def test_full_url_address_is_used_as_given(brokers, authd):
    """A1: an address containing :// is the whole URL; the query is appended."""
    s = authd()
    b = auth_broker(brokers, f"http://127.0.0.1:{s.port}/custom/authz")
    do_auth(Conn(b))
    [q] = s.wait_queries(1)
    assert q.path == "/custom/authz"
    assert q.raw_query.startswith("common_name=&remote_ip=127.0.0.1&secret=s3cret&tls=")


def test_host_name_address_and_reply_read_to_eof(brokers, authd):
    """A host name is looked up (off the core); a reply without Content-Length is read
    until the server closes."""
    s = authd()
    s.content_length = False
    b = auth_broker(brokers, f"localhost:{s.port}")
    assert do_auth(Conn(b))["permission_count"] == 1
    [q] = s.wait_queries(1)
    assert q.headers["Host"] == f"localhost:{s.port}"


@pytest.mark.parametrize("cmd", ["SUB t c", "PUB t", "MPUB t", "DPUB t 0"])
def test_commands_before_auth_get_auth_first(brokers, authd, cmd):
    """T22: SUB/PUB/MPUB/DPUB before AUTH: E_AUTH_FIRST AUTH required before <CMD>."""
    s = authd()
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    body = {"SUB t c": None, "MPUB t": mpub_body([b"m"])}.get(cmd, b"m")
    w.cmd(cmd, body)
    expect_error(w, f"E_AUTH_FIRST AUTH required before {cmd.split()[0]}")
    assert s.count() == 0


def test_nop_identify_rdy_need_no_auth(brokers, authd):
    b = auth_broker(brokers, authd().address)
    w = Conn(b)
    w.cmd("NOP")
    identify_ok(w)
    w.cmd("PUB t", b"m")
    expect_error(w, "E_AUTH_FIRST AUTH required before PUB")


def test_pub_dpub_read_the_body_first_mpub_checks_first(brokers, authd):
    """T22: PUB and DPUB validate their body before the auth check, MPUB after it."""
    b = auth_broker(brokers, authd().address)
    w = Conn(b)
    w.send(b"PUB t\n" + i32(0))
    expect_error(w, "E_BAD_MESSAGE PUB invalid message body size 0")
    w = Conn(b)
    w.send(b"DPUB t 0\n" + i32(0))
    expect_error(w, "E_BAD_MESSAGE DPUB invalid message body size 0")
    w = Conn(b)
    w.send(b"MPUB t\n" + i32(0))
    expect_error(w, "E_AUTH_FIRST AUTH required before MPUB")
    # The line alone is enough: MPUB is refused before its body arrives.
    w = Conn(b)
    w.send(b"MPUB t\n")
    expect_error(w, "E_AUTH_FIRST AUTH required before MPUB")
    # Line errors still come first.
    w = Conn(b)
    w.send(b"MPUB a!b\n")
    expect_error(w, 'E_BAD_TOPIC E_BAD_TOPIC MPUB topic name "a!b" is not valid')


def test_mpub_checked_against_permissions_before_its_body(brokers, authd):
    s = authd()
    s.grant([authorization("^allowed$", [".*"], ["publish"])])
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    do_auth(w)
    w.cmd("MPUB allowed", mpub_body([b"a", b"b"]))
    assert w.read_frame() == OK
    w.send(b"MPUB other\n" + i32(0))
    expect_error(w, 'E_UNAUTHORIZED AUTH failed for MPUB on "other" ""')


def test_auth_already_set(brokers, authd):
    b = auth_broker(brokers, authd().address)
    w = Conn(b)
    do_auth(w)
    w.cmd("AUTH", b"again")
    expect_error(w, "E_INVALID AUTH already set")


def test_auth_parameter_and_body_errors(brokers, authd):
    s = authd()
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    w.cmd("AUTH x", b"s")
    expect_error(w, "E_INVALID AUTH invalid number of parameters")
    w = Conn(b)
    w.send(b"AUTH\n" + i32(0))
    expect_error(w, "E_BAD_BODY AUTH invalid body size 0")
    w = Conn(b)
    w.cmd("SUB t c")
    expect_error(w, "E_AUTH_FIRST AUTH required before SUB")
    assert s.count() == 0


def test_auth_disabled_without_servers(broker):
    w = Conn(broker)
    w.cmd("AUTH", b"s")
    expect_error(w, "E_AUTH_DISABLED AUTH disabled")


# ---------------------------------------------------------------- failures of the auth server


def unreachable():
    return f"127.0.0.1:{free_port()}"


REFUSALS = {
    "non-200": (500, b'{"ttl":60,"authorizations":[]}'),
    "403": (403, b'{"message":"NO"}'),
    "malformed-json": (200, b'{"ttl":60,'),
    "not-an-object": (200, b"[1,2]"),
    "ttl-zero": (200, json.dumps({"ttl": 0, "authorizations": EVERYTHING}).encode()),
    "ttl-negative": (200, json.dumps({"ttl": -5, "authorizations": EVERYTHING}).encode()),
    "ttl-not-integer": (200, json.dumps({"ttl": 1.5, "authorizations": EVERYTHING}).encode()),
    "unknown-permission": (
        200,
        json.dumps({"ttl": 60, "authorizations": [authorization(".*", [".*"], ["publish", "admin"])]}).encode(),
    ),
    "bad-topic-regex": (200, json.dumps({"ttl": 60, "authorizations": [authorization("(", [".*"], ["publish"])]}).encode()),
    "bad-channel-regex": (
        200,
        json.dumps({"ttl": 60, "authorizations": [authorization(".*", ["[a"], ["subscribe"])]}).encode(),
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_auth_failed_texts(brokers, authd, case):
    """T21/A2: a refused reply is E_AUTH_FAILED AUTH failed; the reason only in the log."""
    s = authd()
    s.answer(*REFUSALS[case])
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    w.cmd("AUTH", b"s")
    expect_error(w, "E_AUTH_FAILED AUTH failed")
    assert f"failed to auth against {s.address} - " in b.log()


def test_unreachable_auth_server(brokers):
    addr = unreachable()
    b = auth_broker(brokers, addr)
    w = Conn(b)
    w.cmd("AUTH", b"s")
    expect_error(w, "E_AUTH_FAILED AUTH failed")
    assert f"failed to auth against {addr} - " in b.log()


def test_auth_server_timeout(brokers, authd):
    """--http-client-request-timeout bounds the query; then AUTH failed."""
    s = authd()
    s.hold()
    b = auth_broker(brokers, s.address, args=["--http-client-request-timeout=300ms"])
    w = Conn(b)
    w.cmd("AUTH", b"s")
    expect_error(w, "E_AUTH_FAILED AUTH failed")
    s.release()


def test_no_authorizations_found(brokers, authd):
    s = authd()
    s.grant([])
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    w.cmd("AUTH", b"s")
    expect_error(w, "E_UNAUTHORIZED AUTH no authorizations found")


def test_servers_in_random_rotation_until_one_answers(brokers, authd):
    """A1: every configured server is tried from a random one on until one answers;
    over many connections both are asked first sometimes."""
    good, bad = authd(), authd()
    bad.answer(500, b"down")
    b = auth_broker(brokers, bad.address, good.address, unreachable())
    for _ in range(24):
        do_auth(Conn(b))
    assert good.count() == 24
    assert 0 < bad.count() < 24


# ---------------------------------------------------------------- permissions


def test_publish_and_subscribe_permitted_and_forbidden(brokers, authd):
    s = authd()
    s.grant(
        [
            authorization("^pubonly$", [".*"], ["publish"]),
            authorization("^subonly$", ["^ch$"], ["subscribe"]),
            authorization("^chanless$", ["^x$"], ["publish"]),
        ]
    )
    b = auth_broker(brokers, s.address)
    p = Conn(b)
    do_auth(p)
    p.cmd("PUB pubonly", b"m1")
    assert p.read_frame() == OK
    p.cmd("DPUB pubonly 0", b"m2")
    assert p.read_frame() == OK

    c = Conn(b)
    do_auth(c)
    c.cmd("SUB subonly ch")
    assert c.read_frame() == OK

    cases = [
        ("PUB subonly", b"m", 'E_UNAUTHORIZED AUTH failed for PUB on "subonly" ""'),
        ("DPUB subonly 10", b"m", 'E_UNAUTHORIZED AUTH failed for DPUB on "subonly" ""'),
        # publish needs a channel regex that matches the empty string
        ("PUB chanless", b"m", 'E_UNAUTHORIZED AUTH failed for PUB on "chanless" ""'),
        ("SUB pubonly c", None, 'E_UNAUTHORIZED AUTH failed for SUB on "pubonly" "c"'),
        ("SUB subonly other", None, 'E_UNAUTHORIZED AUTH failed for SUB on "subonly" "other"'),
        ("PUB nothing", b"m", 'E_UNAUTHORIZED AUTH failed for PUB on "nothing" ""'),
    ]
    for line, body, text in cases:
        w = Conn(b)
        do_auth(w)
        w.cmd(line, body)
        expect_error(w, text)


def test_regexes_are_unanchored(brokers, authd):
    s = authd()
    s.grant([authorization("orders", ["audit"], ["publish", "subscribe"]), authorization("^x$", [""], ["publish"])])
    b = auth_broker(brokers, s.address)
    c = Conn(b)
    do_auth(c)
    c.cmd("SUB new-orders-eu my-audit-log")
    assert c.read_frame() == OK
    c.cmd("RDY 1")
    p = Conn(b)
    do_auth(p)
    p.cmd("PUB x", b"m")  # the channel regex "" matches ""
    assert p.read_frame() == OK
    p.cmd("PUB new-orders-eu", b"hello")
    # "audit" does not match "": no publish on the orders topics
    expect_error(p, 'E_UNAUTHORIZED AUTH failed for PUB on "new-orders-eu" ""')
    s.grant([authorization("orders", ["audit", ".*"], ["publish"])])
    p = Conn(b)
    do_auth(p)
    p.cmd("PUB new-orders-eu", b"hello")
    assert p.read_frame() == OK
    m = read_message_within(c, 5)
    assert m is not None and m["body"] == b"hello"


def test_auth_state_moves_with_the_connection(brokers, authd):
    """A SUB for another core's topic moves the connection there: its AUTH goes along
    (PUB afterwards needs no new AUTH, and no new query is made)."""
    s = authd()
    b = auth_broker(brokers, s.address, args=["--cores=2"])
    for i in range(6):
        w = Conn(b)
        do_auth(w)
        w.cmd(f"SUB moving{i} c")
        assert w.read_frame() == OK
        w.cmd(f"PUB moving{i}b", b"m")
        assert w.read_frame() == OK
    assert s.count() == 6
