"""HTTPS (--https-address) and --tls-required on HTTP (H3): the same routes behind
TLS with the TCP port's certificate and client-certificate policy; with
--tls-required=true the plain listener answers every route 403 TLS_REQUIRED."""

import http.client
import json
import socket
import ssl

import pytest

from helpers.http_api import get, request
from helpers.tls import Certs, tls_args
from helpers.wire import OK, Wire


@pytest.fixture(scope="module")
def certs():
    return Certs()


def tls_broker(brokers, certs, *extra):
    args, port = tls_args(certs, *extra)
    b = brokers(args=args)
    b.https_port = port
    return b


def https(b, ctx, method, path, body=None):
    conn = http.client.HTTPSConnection("127.0.0.1", b.https_port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_https_serves_the_same_routes(brokers, certs):
    """The HTTPS listener: /ping, /info, /pub, /mpub, /stats over TLS, keep-alive too."""
    b = tls_broker(brokers, certs)
    ctx = certs.context()
    assert https(b, ctx, "GET", "/ping")[::2] == (200, b"OK")
    status, _, body = https(b, ctx, "GET", "/info")
    assert status == 200 and json.loads(body)["tcp_port"] == b.tcp_port
    assert https(b, ctx, "POST", "/pub?topic=https_t", b"hello")[::2] == (200, b"OK")
    assert https(b, ctx, "POST", "/mpub?topic=https_t", b"a\nb")[::2] == (200, b"OK")
    status, _, body = https(b, ctx, "GET", "/stats?format=json&topic=https_t")
    topics = json.loads(body)["topics"]
    assert status == 200 and topics[0]["message_count"] == 3, topics
    conn = http.client.HTTPSConnection("127.0.0.1", b.https_port, context=ctx, timeout=10)
    for _ in range(3):
        conn.request("GET", "/ping")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"OK")
    conn.close()
    # plain HTTP stays open without --tls-required
    assert get(b, "/ping").status == 200


@pytest.mark.parametrize("path,method", [("/ping", "GET"), ("/stats", "GET"), ("/pub?topic=t", "POST"), ("/nope", "GET"), ("/info", "PUT")])
def test_tls_required_closes_plain_http(brokers, certs, path, method):
    """H3: --tls-required=true: every route on plain HTTP, /ping included, answers 403
    with nsqd's body naming the HTTPS port; HTTPS serves normally."""
    b = tls_broker(brokers, certs, "--tls-required=true")
    r = request(b, method, path, body=b"x" if method != "GET" else None)
    assert r.status == 403
    assert r.body == b'{"message": "TLS_REQUIRED", "https_port": %d}' % b.https_port
    assert r.header("content-type") == "application/json; charset=utf-8"
    assert r.header("x-nsq-content-type") == "nsq; version=1.0"
    assert https(b, certs.context(), "GET", "/ping")[::2] == (200, b"OK")


def test_tcp_https_leaves_plain_http_open(brokers, certs):
    """--tls-required=tcp-https: TCP needs TLS, plain HTTP still serves."""
    b = tls_broker(brokers, certs, "--tls-required=tcp-https")
    assert get(b, "/ping").status == 200
    w = Wire(b.tcp_address)
    w.cmd("NOP")
    assert w.read_frame()[1] == b"E_INVALID cannot NOP in current state (TLS required)"


def test_https_client_certificate_policy(brokers, certs):
    """HTTPS applies --tls-client-auth-policy: require-verify refuses a client without a
    certificate or with one from another CA, serves one from the CA."""
    b = tls_broker(brokers, certs, f"--tls-root-ca-file={certs.ca_file}", "--tls-client-auth-policy=require-verify")
    assert https(b, certs.context(client=certs.client), "GET", "/ping")[::2] == (200, b"OK")
    for pair in (None, certs.stranger):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            https(b, certs.context(client=pair), "GET", "/ping")


def test_no_https_listener_without_certificate(brokers):
    """nsqd opens --https-address only with a certificate."""
    from helpers.broker import free_port

    port = free_port()
    b = brokers(args=[f"--https-address=127.0.0.1:{port}"])
    assert get(b, "/ping").status == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
