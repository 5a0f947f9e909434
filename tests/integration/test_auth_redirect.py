"""Auth servers that redirect (row A1 of the reference): nsqd asks them with Go's
http.Client, which follows 301, 302, 303, 307 and 308 to the Location (resolved
against the URL that sent it), at most 10 requests in a row, all within one
--http-client-request-timeout.
"""

import json

import pytest

from helpers.authd import EVERYTHING, auth_broker, do_auth, reply
from helpers.wait import wait_for
from helpers.wire import OK, Conn, expect_error

GRANT = json.dumps(reply(EVERYTHING)).encode()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_followed_on_the_same_server(brokers, authd, status):
    """A relative Location is read against the answering URL; the grant at the end
    of the redirect is the AUTH's."""
    s = authd()

    def answer(q):
        if q.path == "/auth":
            return status, b"", {"Location": f"granted?{q.raw_query}"}
        return 200, GRANT

    s.answer(answer, None)
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    assert do_auth(w)["permission_count"] == 1
    first, second = s.wait_queries(2)
    assert (first.path, second.path) == ("/auth", "/granted")
    assert second.raw_query == first.raw_query
    w.cmd("PUB t", b"m")
    assert w.read_frame() == OK


def test_a_redirect_to_another_server_is_followed(brokers, authd):
    """An absolute Location goes to another host and port, with that Host header."""
    target = authd()
    s = authd()
    s.answer(lambda q: (302, b"", {"Location": f"http://{target.address}/elsewhere"}), None)
    b = auth_broker(brokers, s.address)
    do_auth(Conn(b))
    [q] = target.wait_queries(1)
    assert (q.path, q.raw_query) == ("/elsewhere", "")
    assert q.headers["Host"] == target.address


def assert_auth_fails(brokers, s, logged):
    """AUTH against server `s` gets E_AUTH_FAILED, and the broker logs `logged`."""
    b = auth_broker(brokers, s.address)
    w = Conn(b)
    w.cmd("AUTH", b"s")
    expect_error(w, "E_AUTH_FAILED AUTH failed")
    wait_for(lambda: logged in b.log(), what=f"{logged!r} in the log")


def test_a_redirect_loop_stops_after_ten_requests(brokers, authd):
    """Go's default policy: the tenth answer still redirecting ends it, AUTH failed."""
    s = authd()
    s.answer(lambda q: (302, b"", {"Location": "/auth?again"}), None)
    assert_auth_fails(brokers, s, "stopped after 10 redirects")
    assert s.count() == 10


def test_a_redirect_without_location_is_a_failed_answer(brokers, authd):
    """A 302 with no Location is returned as it is: a non-200, AUTH failed."""
    s = authd()
    s.answer(302, b"moved")
    assert_auth_fails(brokers, s, 'got response 302 Found "moved"')
    assert s.count() == 1
