"""TLS on the TCP port (T18, T20): the upgrade after IDENTIFY, compression on top,
client certificates, --tls-required, /stats TLS fields, and a TLS publisher that moves
to another core. Certificates are made at run time (helpers/tls.py)."""

import json
import re
import ssl
import zlib

import pytest

from helpers.broker import Broker
from helpers.http_api import get, metric
from helpers.tls import Certs, identify_tls, refused_handshake, tls_args, tls_wire, upgrade
from helpers.wait import wait_for
from helpers.wire import FRAME_ERROR, FRAME_MESSAGE, FRAME_RESPONSE, OK, Wire, cmd_bytes, decode_message, frame_bytes, mpub_body


@pytest.fixture(scope="module")
def certs():
    return Certs()


def tls_broker(brokers, certs, *extra, **kw):
    args, port = tls_args(certs, *extra)
    b = brokers(args=args, **kw)
    b.https_port = port
    return b


def stats_clients(b):
    r = get(b, "/stats?format=json")
    assert r.status == 200, r
    data = json.loads(r.body)
    out = list(data.get("producers", []))
    for t in data["topics"]:
        for c in t["channels"]:
            out.extend(c["clients"])
    return out


def test_upgrade_then_framed_ok_and_byte_exact_messages(brokers, certs):
    """T18: the IDENTIFY answer (tls_v1:true) comes in clear, the handshake runs on the
    raw socket, then a framed OK over TLS; PUB/MPUB bodies with every byte value go in
    and come out byte-exact over TLS, to and from a consumer on TLS too."""
    b = tls_broker(brokers, certs)
    pub, resp = tls_wire(b, certs.context())
    assert resp["tls_v1"] is True and resp["deflate"] is False and resp["snappy"] is False
    bodies = [bytes(range(256)), b"\n\r\x00 OK", b"x" * 70000]
    sub_, _ = tls_wire(b, certs.context())
    sub_.cmd("SUB tls_bytes ch")
    assert sub_.read_frame() == OK
    sub_.cmd("RDY 10")
    pub.cmd("PUB tls_bytes", bodies[0])
    assert pub.read_frame() == OK
    pub.cmd("MPUB tls_bytes", mpub_body(bodies[1:]))
    assert pub.read_frame() == OK
    got = [sub_.read_message()["body"] for _ in bodies]
    assert got == bodies
    pub.close()
    sub_.close()


def test_tls_under_deflate_both_ways(brokers, certs):
    """T18+T19: with tls_v1 and deflate in one IDENTIFY, the answer is clear, the next
    OK is TLS only, and everything after is deflate inside TLS, both directions."""
    b = tls_broker(brokers, certs)
    w = Wire(b.tcp_address)
    resp = identify_tls(w, deflate=True, deflate_level=3)
    assert resp["tls_v1"] is True and resp["deflate"] is True
    upgrade(w, certs.context())
    assert w.read_frame() == OK  # TLS, not compressed
    inflate = zlib.decompressobj(-15)
    plain = b""
    while len(plain) < 10:
        plain += inflate.decompress(w.sock.recv(65536))
    assert plain == frame_bytes(FRAME_RESPONSE, b"OK")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = bytes(range(256)) * 3
    w.sock.sendall(deflate.compress(cmd_bytes("PUB tls_deflate", body)) + deflate.flush(zlib.Z_SYNC_FLUSH))
    plain = b""
    while len(plain) < 10:
        plain += inflate.decompress(w.sock.recv(65536))
    assert plain == frame_bytes(FRAME_RESPONSE, b"OK")
    c, _ = tls_wire(b, certs.context())
    c.cmd("SUB tls_deflate ch")
    assert c.read_frame() == OK
    c.cmd("RDY 1")
    assert c.read_message()["body"] == body


def test_pynsq_tls_with_snappy(brokers, certs, loop):
    """pynsq 0.9.1 Writer and Reader with tls_v1 and the test CA, snappy on top."""
    b = tls_broker(brokers, certs)
    opts = {"ca_certs": certs.ca_file, "cert_reqs": ssl.CERT_REQUIRED}
    got = []

    def handler(m):
        got.append(m.body)
        return True

    r = loop.reader(b.tcp_address, "tls_pynsq", "ch", handler, tls_v1=True, tls_options=opts, snappy=True)
    loop.wait_subscribed([r])
    w = loop.writer(b.tcp_address, tls_v1=True, tls_options=opts, snappy=True)
    loop.wait_connected([w])
    bodies = [b"snappy-%d-" % i + bytes(range(i % 256)) for i in range(200)]
    res = loop.publish(w, [("pub", "tls_pynsq", x) for x in bodies[:100]] + [("mpub", "tls_pynsq", bodies[100:])])
    assert res == [b"OK"] * 101, res
    assert loop.run_until(lambda: len(got) >= 200, 15), len(got)
    assert sorted(got) == sorted(bodies)
    clients = stats_clients(b)
    assert clients and all(c["tls"] and c["snappy"] for c in clients), clients


def test_tls_v1_without_certificate_stays_plain(broker, connect):
    """T18: without --tls-cert the answer says tls_v1:false and the connection goes on in
    clear (go-nsq then carries on in plain)."""
    w = connect(broker)
    resp = identify_tls(w)
    assert resp["tls_v1"] is False
    w.cmd("NOP")
    w.cmd("PUB plain_t", b"x")
    assert w.read_frame() == OK


@pytest.mark.parametrize(
    "policy,client,ok",
    [
        ("require-verify", "client", True),
        ("require-verify", None, False),
        ("require-verify", "stranger", False),
        ("require", "stranger", True),
        ("require", None, False),
        ("", None, True),
        ("", "stranger", True),
    ],
)
def test_client_certificate_policy(brokers, certs, policy, client, ok):
    """T18: require-verify wants a certificate from --tls-root-ca-file, require any
    certificate, no policy asks for none. A refused handshake: the TLS alert, then a
    clear E_IDENTIFY_FAILED frame with Go's words, then close."""
    extra = [f"--tls-root-ca-file={certs.ca_file}"]
    if policy:
        extra.append(f"--tls-client-auth-policy={policy}")
    b = tls_broker(brokers, certs, *extra)
    pair = {"client": certs.client, "stranger": certs.stranger, None: None}[client]
    ctx = certs.context(client=pair)
    if ok:
        w, _ = tls_wire(b, ctx)
        w.cmd("PUB cert_t", b"x")
        assert w.read_frame() == OK
        return
    error, tail, closed = refused_handshake(b, ctx)
    assert error is not None
    text = (
        b"tls: client didn't provide a certificate"
        if client is None
        else b"tls: failed to verify certificate: x509: certificate signed by unknown authority"
    )
    assert tail == frame_bytes(FRAME_ERROR, b"E_IDENTIFY_FAILED IDENTIFY failed " + text), tail
    assert closed


def test_garbage_instead_of_handshake(brokers, certs):
    """A client that asked for TLS and sends commands instead of a handshake: an alert,
    then a clear E_IDENTIFY_FAILED frame in Go's words, then close."""
    b = tls_broker(brokers, certs)
    w = Wire(b.tcp_address)
    identify_tls(w)
    w.send(b"NOP\n" * 100)
    raw = w.buf
    while True:
        chunk = w.sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    while raw and raw[0] in (20, 21, 22, 23):
        raw = raw[5 + int.from_bytes(raw[3:5], "big"):]
    assert raw == frame_bytes(
        FRAME_ERROR, b"E_IDENTIFY_FAILED IDENTIFY failed tls: first record does not look like a TLS handshake"
    ), raw


@pytest.mark.parametrize("mode", ["true", "tcp-https", "policy"])
def test_tls_required_on_tcp(brokers, certs, mode):
    """T20: with --tls-required (or a client-certificate policy, which implies it) a plain
    connection may IDENTIFY, and anything else (NOP and unknown commands included) is a
    fatal E_INVALID naming the command as sent; a TLS connection works."""
    extra = ["--tls-client-auth-policy=require"] if mode == "policy" else [f"--tls-required={mode}"]
    b = tls_broker(brokers, certs, *extra)
    for line in ["NOP", "PUB t", "AUTH", "FOO bar", "SUB a b"]:
        w = Wire(b.tcp_address)
        w.send(cmd_bytes("IDENTIFY", b'{"client_id":"p"}'))
        assert w.read_frame() == OK
        w.send(cmd_bytes(line))
        word = line.split(" ")[0].encode()
        assert w.read_frame() == (FRAME_ERROR, b"E_INVALID cannot " + word + b" in current state (TLS required)")
        assert w.is_closed()
    if mode != "policy":
        w, _ = tls_wire(b, certs.context())
        w.cmd("NOP")
        w.cmd("PUB req_t", b"x")
        assert w.read_frame() == OK


def test_tls_required_without_certificate_fails_at_start(tmp_path):
    """T20: nsqd's start-up error when TLS is required without a key and cert."""
    with pytest.raises(RuntimeError) as e:
        Broker(args=["--tls-required=true"], data_dir=str(tmp_path))
    assert "cannot require TLS client connections without TLS key and cert" in str(e.value)


def test_stats_tls_fields(brokers, certs):
    """/stats per client: tls, tls_version, nsqd's cipher suite names (TLS 1.3 suites are
    'Unknown <n>' in its table), no ALPN, is_mutual true (Go 1.23); plain clients show
    tls false and empty strings."""
    b = tls_broker(brokers, certs)
    w13, _ = tls_wire(b, certs.context(), client_id="v13")
    w13.cmd("PUB st_t", b"x")
    assert w13.read_frame() == OK
    ctx12 = certs.context(maximum=ssl.TLSVersion.TLSv1_2)
    ctx12.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
    w12, _ = tls_wire(b, ctx12, client_id="v12")
    w12.cmd("PUB st_t", b"x")
    assert w12.read_frame() == OK
    plain = Wire(b.tcp_address)
    plain.send(cmd_bytes("IDENTIFY", b'{"client_id":"plain"}'))
    assert plain.read_frame() == OK
    plain.cmd("PUB st_t", b"x")
    assert plain.read_frame() == OK
    by_id = {c["client_id"]: c for c in stats_clients(b)}
    c13, c12, cp = by_id["v13"], by_id["v12"], by_id["plain"]
    assert c13["tls"] is True and c13["tls_version"] == "TLS1.3"
    assert re.fullmatch(r"Unknown 486[5-7]", c13["tls_cipher_suite"]), c13
    assert c12["tls"] is True and c12["tls_version"] == "TLS1.2"
    assert c12["tls_cipher_suite"] in (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ), c12
    for c in (c13, c12):
        assert c["tls_negotiated_protocol"] == "" and c["tls_negotiated_protocol_is_mutual"] is True
    assert cp["tls"] is False and cp["tls_version"] == "" and cp["tls_cipher_suite"] == ""
    assert cp["tls_negotiated_protocol_is_mutual"] is False


def test_tls_publisher_moves_with_its_session(brokers, certs):
    """A TLS publisher that keeps publishing single messages to the other core's topic
    moves there (MOVE_PUBLISHER_AFTER = 16) with its TLS session, and keeps working."""
    b = tls_broker(brokers, certs, cores=2)
    topics = [t for t in (f"mv{i}" for i in range(40)) if zlib.crc32(t.encode()) % 2 == 0][:1]
    topics += [t for t in (f"mv{i}" for i in range(40)) if zlib.crc32(t.encode()) % 2 == 1][:1]
    w, _ = tls_wire(b, certs.context())
    sent = []
    for t in topics:
        for i in range(24):
            body = b"%s-%d-" % (t.encode(), i) + bytes(range(i))
            w.cmd(f"PUB {t}", body)
            assert w.read_frame() == OK
            sent.append((t, body))
    assert metric(b, "ringsq_core_handoffs_in_total") >= 1, "the publisher did not move"
    for t in topics:
        c, _ = tls_wire(b, certs.context())
        c.cmd(f"SUB {t} ch")
        assert c.read_frame() == OK
        c.cmd("RDY 100")
        want = [x for tt, x in sent if tt == t]
        assert [c.read_message()["body"] for _ in want] == want


def test_missing_certificate_file_fails_at_start(tmp_path):
    """nsqd's start-up error for a certificate it cannot open."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(RuntimeError) as e:
        Broker(args=[f"--tls-cert={missing}", f"--tls-key={missing}"], data_dir=str(tmp_path))
    assert f"failed to build TLS config - open {missing}: no such file or directory" in str(e.value)


def test_pipelined_tls_burst_to_both_cores(brokers, certs):
    """800 publishes pipelined in one burst over TLS to topics of both cores: every one is
    answered once, in order, and every body arrives. (A publisher moves only between
    answers, so this burst does not move; test_tls_publisher_moves_with_its_session
    covers the move.)"""
    b = tls_broker(brokers, certs, cores=2)
    names = [f"pm{i}" for i in range(40)]
    topics = [next(t for t in names if zlib.crc32(t.encode()) % 2 == k) for k in (0, 1)]
    w, _ = tls_wire(b, certs.context())
    # Small publishes: one 32 KiB read holds hundreds, most still encrypted at the move.
    sent = [(t, b"%s-%d-" % (t.encode(), i) + bytes(range(i % 100))) for t in topics for i in range(400)]
    w.sock.sendall(b"".join(cmd_bytes(f"PUB {t}", body) for t, body in sent))
    for _ in sent:
        assert w.read_frame() == OK
    for t in topics:
        c, _ = tls_wire(b, certs.context())
        c.cmd(f"SUB {t} ch")
        assert c.read_frame() == OK
        c.cmd(f"RDY {len(sent)}")
        want = [x for tt, x in sent if tt == t]
        assert [c.read_message()["body"] for _ in want] == want


def test_auth_query_says_tls_for_a_tls_connection(brokers, certs, authd):
    """T21/A1: the auth server's query carries tls=true for a client that upgraded to TLS
    and tls=false for a plain one; common_name is present (empty: no client certificate)."""
    s = authd()
    s.grant()
    args, port = tls_args(certs, f"--auth-http-address={s.address}")
    b = brokers(args=args)
    w, resp = tls_wire(b, certs.context())
    assert resp["auth_required"] is True, resp
    w.cmd("AUTH", b"over-tls")
    assert w.read_frame()[0] == FRAME_RESPONSE
    plain = Wire(b.tcp_address)
    plain.cmd("AUTH", b"plain")
    assert plain.read_frame()[0] == FRAME_RESPONSE
    got = {q.params["secret"][0]: q for q in s.wait_queries(2)}
    assert got["over-tls"].params["tls"] == ["true"], got["over-tls"].raw_query
    assert got["plain"].params["tls"] == ["false"], got["plain"].raw_query
    assert "common_name=" in got["over-tls"].raw_query
    w.close()
    plain.close()


@pytest.mark.parametrize("policy", ["require", "require-verify"])
def test_auth_query_carries_the_client_certificate_cn(brokers, certs, authd, policy):
    """T21/A1: with a client certificate, common_name is its subject CN, as nsqd's
    PeerCertificates[0].Subject.CommonName; a TLS client without one (no policy) sends
    an empty common_name."""
    s = authd()
    s.grant()
    extra = [f"--auth-http-address={s.address}", f"--tls-client-auth-policy={policy}"]
    if policy == "require-verify":
        extra.append(f"--tls-root-ca-file={certs.ca_file}")
    args, _ = tls_args(certs, *extra)
    b = brokers(args=args)
    w, _ = tls_wire(b, certs.context(client=certs.client))
    w.cmd("AUTH", b"with-cert")
    assert w.read_frame()[0] == FRAME_RESPONSE
    (q,) = s.wait_queries(1)
    assert q.params["common_name"] == [certs.client_cn], q.raw_query
    assert q.params["tls"] == ["true"], q.raw_query
    w.close()
