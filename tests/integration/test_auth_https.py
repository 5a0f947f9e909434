"""AUTH against auth servers over HTTPS (row A1 of the reference): nsqd's
clientTLSConfig (roots from --tls-root-ca-file) for `https://` addresses, and its
http_api GETV1 that asks again over HTTPS when a plain server answers 403 with an
`https_port`. Certificates are made at run time (helpers.tls.Certs, trustme).
"""

import json
import ssl

import pytest

from helpers.authd import auth_broker, do_auth
from helpers.broker import Broker
from helpers.tls import Certs
from helpers.wire import OK, Conn, expect_error


@pytest.fixture(scope="module")
def certs():
    return Certs()


def server_context(certs):
    """The context of an HTTPS server whose certificate (for 127.0.0.1) `certs.ca` signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert, certs.key)
    return ctx


def test_https_auth_server_trusted_by_root_ca_file(brokers, authd, certs):
    """A1: an https:// address is asked over TLS, trusting --tls-root-ca-file; the
    query is the one a plain server gets."""
    s = authd(ssl_context=server_context(certs))
    b = auth_broker(brokers, s.url, args=[f"--tls-root-ca-file={certs.ca_file}"])
    w = Conn(b)
    assert do_auth(w)["permission_count"] == 1
    [q] = s.wait_queries(1)
    assert q.path == "/auth"
    assert q.raw_query == "common_name=&remote_ip=127.0.0.1&secret=s3cret&tls=false"
    assert q.headers["Host"] == s.address
    w.cmd("PUB t", b"m")
    assert w.read_frame() == OK


def test_https_auth_server_of_an_unknown_ca_is_auth_failed(brokers, authd, certs):
    """A2: a certificate the roots do not vouch for fails the query: AUTH failed."""
    stranger = Certs()
    s = authd(ssl_context=server_context(stranger))
    b = auth_broker(brokers, s.url, args=[f"--tls-root-ca-file={certs.ca_file}"])
    w = Conn(b)
    w.cmd("AUTH", b"s")
    expect_error(w, "E_AUTH_FAILED AUTH failed")
    assert f"failed to auth against {s.url} - tls: " in b.log()
    assert s.count() == 0


def test_forbidden_with_https_port_is_asked_again_over_https(brokers, authd, certs):
    """A1: nsqd's GETV1 answers a 403 from a plain server by asking the same path and
    query over HTTPS on the answer's https_port (what nsqd's own /auth-less 403
    TLS_REQUIRED JSON looks like)."""
    secure = authd(ssl_context=server_context(certs))
    plain = authd()
    plain.answer(403, json.dumps({"message": "TLS_REQUIRED", "https_port": secure.port}).encode())
    b = auth_broker(brokers, plain.address, args=[f"--tls-root-ca-file={certs.ca_file}"])
    do_auth(Conn(b))
    [first] = plain.wait_queries(1)
    [second] = secure.wait_queries(1)
    assert second.path == first.path == "/auth"
    assert second.raw_query == first.raw_query
    assert second.headers["Host"] == secure.address


def test_forbidden_from_https_is_not_retried(brokers, authd, certs):
    """A2: a 403 over HTTPS is an answer like any non-200: AUTH failed, no retry."""
    s = authd(ssl_context=server_context(certs))
    s.answer(403, json.dumps({"https_port": s.port}).encode())
    b = auth_broker(brokers, s.url, args=[f"--tls-root-ca-file={certs.ca_file}"])
    w = Conn(b)
    w.cmd("AUTH", b"s")
    expect_error(w, "E_AUTH_FAILED AUTH failed")
    assert "got response 403 Forbidden" in b.log()
    assert s.count() == 1


def test_unreadable_root_ca_file_fails_at_start(tmp_path):
    """nsqd builds its client TLS config at start-up whatever the other flags."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(RuntimeError) as e:
        Broker(args=[f"--tls-root-ca-file={missing}"], data_dir=str(tmp_path))
    assert f"failed to build client TLS config - open {missing}: no such file or directory" in str(e.value)
