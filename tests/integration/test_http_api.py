"""HTTP envelope, /ping, /info, /config, keep-alive, pipelining, debug routes.

Rows: H2 (V1 envelope), H4 (/ping), H5 + X4 + X6 (/info), H20/H21 (/config),
H22 (debug). Expected values were read from nsqd v1.3.0 nsqd/http.go and
internal/http_api/api_response.go.
"""

import json
import socket
import time

import pytest

from helpers.http_api import (
    JSON_CT,
    SEMVER,
    V1_HEADER,
    assert_error,
    find_topic,
    get,
    post,
    put,
    read_http_response,
    request,
    stats,
)
import http.client


# ------------------------------------------------------------------ H2 envelope


def test_unknown_route_is_404_not_found(broker):
    """H2: an unknown route answers 404 {"message":"NOT_FOUND"} with the V1 headers."""
    for method, path in [("GET", "/not_found"), ("POST", "/nope"), ("GET", "/topic"),
                         ("GET", "/stats/extra"), ("PUT", "/configx")]:
        r = request(broker, method, path)
        assert_error(r, 404, "NOT_FOUND")


def test_wrong_method_is_405(broker):
    """H2: a known path with another method answers 405 {"message":"METHOD_NOT_ALLOWED"}."""
    cases = [
        ("POST", "/stats"),
        ("GET", "/pub?topic=t"),
        ("GET", "/mpub?topic=t"),
        ("POST", "/info"),
        ("POST", "/ping"),
        ("GET", "/topic/create?topic=t"),
        ("DELETE", "/topic/delete?topic=t"),
        ("PUT", "/channel/create?topic=t&channel=c"),
        ("POST", "/config/log_level"),
        ("DELETE", "/config/log_level"),
    ]
    for method, path in cases:
        r = request(broker, method, path)
        assert_error(r, 405, "METHOD_NOT_ALLOWED")
    # the GET/405 on /pub must not have published (nor created) anything
    assert find_topic(stats(broker), "t") is None


def test_bad_query_escape_is_400_invalid_request(broker):
    """H2/H6/H8/H14-H19: a query string that does not URL-decode is 400 INVALID_REQUEST."""
    post(broker, "/topic/create?topic=good")
    post(broker, "/channel/create?topic=good&channel=c")
    cases = [
        ("GET", "/stats?format=json&topic=%zz", None),
        ("POST", "/pub?topic=%zz", b"body"),
        ("POST", "/pub?topic=good&defer=%G1", b"body"),
        ("POST", "/mpub?topic=%zz", b"a\nb"),
        ("POST", "/topic/create?topic=%zz", b""),
        ("POST", "/topic/delete?topic=%zz", b""),
        ("POST", "/topic/empty?topic=%zz", b""),
        ("POST", "/topic/pause?topic=%zz", b""),
        ("POST", "/topic/unpause?topic=%zz", b""),
        ("POST", "/channel/create?topic=good&channel=%zz", b""),
        ("POST", "/channel/delete?topic=good&channel=%", b""),
        ("POST", "/channel/empty?topic=good&channel=%a", b""),
        ("POST", "/channel/pause?topic=good&channel=%zz", b""),
        ("POST", "/channel/unpause?topic=good&channel=%zz", b""),
    ]
    for method, path, body in cases:
        r = request(broker, method, path, body=body)
        assert_error(r, 400, "INVALID_REQUEST")
    doc = stats(broker)
    # nothing was published, the good topic/channel still exist
    t = find_topic(doc, "good")
    assert t is not None and t["message_count"] == 0
    assert [c["channel_name"] for c in t["channels"]] == ["c"]
    assert len(doc["topics"]) == 1, doc["topics"]


def test_percent_encoded_query_is_decoded(broker):
    """H2/H6: query values are URL-decoded (topic=a%2Eb is topic "a.b")."""
    r = post(broker, "/pub?topic=a%2Eb%5F1", b"x")
    assert r.status == 200, r
    assert find_topic(stats(broker), "a.b_1")["message_count"] == 1


# ------------------------------------------------------------------ H4 /ping


def test_ping_ok(broker):
    """H4: GET /ping -> 200, body exactly OK."""
    r = get(broker, "/ping")
    assert r.status == 200
    assert r.body == b"OK"


# ------------------------------------------------------------------ H5 /info

INFO_TYPES = {
    "version": str,
    "broadcast_address": str,
    "hostname": str,
    "http_port": int,
    "tcp_port": int,
    "start_time": int,
    "max_heartbeat_interval": int,
    "max_output_buffer_size": int,
    "max_output_buffer_timeout": int,
    "max_deflate_level": int,
}


def test_info_shape_and_defaults(broker):
    """H5/X4/X6: every /info key with its type; durations in ns; real ports; semver."""
    before = int(time.time())
    r = get(broker, "/info")
    assert r.status == 200
    assert r.header("Content-Type") == JSON_CT
    assert r.header("X-NSQ-Content-Type") == V1_HEADER
    info = r.json()
    assert set(info) == set(INFO_TYPES), info
    for k, typ in INFO_TYPES.items():
        assert type(info[k]) is typ, (k, info[k])
    assert SEMVER.match(info["version"]), info["version"]
    assert info["http_port"] == broker.http_port
    assert info["tcp_port"] == broker.tcp_port
    assert info["hostname"] == socket.gethostname()
    assert info["broadcast_address"] == socket.gethostname()  # default = OS hostname
    # start_time is unix seconds of process start (at most a few seconds ago)
    assert before - 30 <= info["start_time"] <= before + 1, (info["start_time"], before)
    assert info["max_heartbeat_interval"] == 60 * 10**9
    assert info["max_output_buffer_timeout"] == 30 * 10**9
    assert info["max_output_buffer_size"] == 65536
    assert info["max_deflate_level"] == 6
    # same start_time in /stats
    assert stats(broker)["start_time"] == info["start_time"]
    assert stats(broker)["version"] == info["version"]


def test_info_reflects_flags(brokers):
    """H5/X4: /info values follow the flags (durations stay integer nanoseconds)."""
    b = brokers(args=[
        "--broadcast-address=nsqd-a.example",
        "--max-heartbeat-interval=90s",
        "--max-output-buffer-timeout=1500ms",
        "--max-output-buffer-size=131072",
        "--max-deflate-level=9",
    ])
    info = get(b, "/info").json()
    assert info["broadcast_address"] == "nsqd-a.example"
    assert info["max_heartbeat_interval"] == 90 * 10**9
    assert info["max_output_buffer_timeout"] == 1_500_000_000
    assert info["max_output_buffer_size"] == 131072
    assert info["max_deflate_level"] == 9


# ------------------------------------------------------------------ H20 GET /config


def test_config_get_values(broker):
    """H20: strings raw (unquoted), numbers and durations (ns) as JSON, arrays as JSON."""
    r = get(broker, "/config/tcp_address")
    assert r.status == 200 and r.body == broker.tcp_address.encode(), r
    assert r.header("X-NSQ-Content-Type") == V1_HEADER
    r = get(broker, "/config/http_address")
    assert r.status == 200 and r.body == f"127.0.0.1:{broker.http_port}".encode(), r
    r = get(broker, "/config/data_path")
    assert r.status == 200 and r.body == broker.data_dir.encode(), r

    numeric = {
        "mem_queue_size": b"10000",
        "max_msg_size": b"1048576",
        "max_body_size": b"5242880",
        "max_rdy_count": b"2500",
        "msg_timeout": b"60000000000",
        "max_req_timeout": b"3600000000000",
        "sync_timeout": b"2000000000",
        "output_buffer_timeout": b"250000000",
        "max_deflate_level": b"6",
        "snappy": b"true",
        "deflate": b"true",
        "nsqlookupd_tcp_addresses": b"[]",
    }
    for opt, want in numeric.items():
        r = get(broker, f"/config/{opt}")
        assert r.status == 200, (opt, r)
        assert r.body == want, (opt, r)
        assert r.header("Content-Type") == JSON_CT, (opt, r)
    r = get(broker, "/config/id")  # cfg alias of --node-id
    assert r.status == 200 and 0 <= int(r.body) < 1024, r


def test_config_get_follows_flags(brokers):
    """H20: values reflect the command-line flags."""
    b = brokers(args=["--msg-timeout=1500ms", "--max-msg-size=4096", "--mem-queue-size=7"])
    assert get(b, "/config/msg_timeout").body == b"1500000000"
    assert get(b, "/config/max_msg_size").body == b"4096"
    assert get(b, "/config/mem_queue_size").body == b"7"


def test_config_get_unknown_option(broker):
    """H20: an unknown name (including flag spellings with '-') -> 400 INVALID_OPTION."""
    for opt in ["nope", "tcp-address", "lookupd_tcp_address", "TCP_ADDRESS", "log-level"]:
        assert_error(get(broker, f"/config/{opt}"), 400, "INVALID_OPTION")


# ------------------------------------------------------------------ H21 PUT /config


def test_config_put_log_level(broker):
    """H21: PUT log_level takes a level name and answers the new value (nsqd's LogLevel is
    an int: debug=1 info=2 warn=3 error=4 fatal=5, serialized as a JSON number)."""
    assert get(broker, "/config/log_level").body == b"2"
    r = put(broker, "/config/log_level", b"fatal")
    assert r.status == 200, r
    assert r.body == b"5", r
    assert get(broker, "/config/log_level").body == b"5"
    r = put(broker, "/config/log_level", b"WARN")  # parsed case-insensitively
    assert r.status == 200 and r.body == b"3", r
    r = put(broker, "/config/log_level", b"debug")
    assert r.status == 200 and r.body == b"1", r
    assert_error(put(broker, "/config/log_level", b"bad"), 400, "INVALID_VALUE")
    assert_error(put(broker, "/config/log_level", b""), 413, "INVALID_VALUE")
    assert get(broker, "/config/log_level").body == b"1"  # failed PUTs changed nothing


def test_config_put_lookupd_addresses(broker):
    """H21: PUT nsqlookupd_tcp_addresses takes a JSON array and answers the new value."""
    addrs = '["127.0.0.1:1","127.0.0.1:2"]'
    r = put(broker, "/config/nsqlookupd_tcp_addresses", addrs.encode())
    assert r.status == 200, r
    assert r.body == addrs.encode(), r
    assert r.header("Content-Type") == JSON_CT
    assert get(broker, "/config/nsqlookupd_tcp_addresses").body == addrs.encode()
    for bad in [b"not json", b'{"a":1}', b'"127.0.0.1:1"', b"[1,2]"]:
        assert_error(put(broker, "/config/nsqlookupd_tcp_addresses", bad), 400, "INVALID_VALUE")
    assert_error(put(broker, "/config/nsqlookupd_tcp_addresses", b""), 413, "INVALID_VALUE")
    assert get(broker, "/config/nsqlookupd_tcp_addresses").body == addrs.encode()
    r = put(broker, "/config/nsqlookupd_tcp_addresses", b"[]")
    assert r.status == 200 and r.body == b"[]", r
    assert get(broker, "/ping").body == b"OK"


def test_config_put_other_options_rejected(broker):
    """H21: only log_level and nsqlookupd_tcp_addresses are settable -> 400 INVALID_OPTION;
    an empty body is checked first -> 413 INVALID_VALUE."""
    for opt in ["mem_queue_size", "tcp_address", "msg_timeout", "nope"]:
        assert_error(put(broker, f"/config/{opt}", b"5"), 400, "INVALID_OPTION")
        assert_error(put(broker, f"/config/{opt}", b""), 413, "INVALID_VALUE")
    assert get(broker, "/config/mem_queue_size").body == b"10000"


def test_config_put_oversized_body(brokers):
    """H21: a PUT body longer than --max-msg-size -> 413 INVALID_VALUE."""
    b = brokers(args=["--max-msg-size=100"])
    assert_error(put(b, "/config/log_level", b"d" * 101), 413, "INVALID_VALUE")
    assert_error(put(b, "/config/nsqlookupd_tcp_addresses", b"[" + b" " * 100 + b"]"),
                 413, "INVALID_VALUE")
    r = put(b, "/config/nsqlookupd_tcp_addresses", b"[" + b" " * 98 + b"]")  # 100 bytes
    assert r.status == 200 and r.body == b"[]", r


# ------------------------------------------------------------------ keep-alive / pipelining


def test_keepalive_200_requests_one_connection(broker):
    """H2/H6: 200 requests (pub, errors, stats) over one keep-alive connection, answered
    in order on the same TCP connection."""
    conn = http.client.HTTPConnection("127.0.0.1", broker.http_port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        local = sock.getsockname()
        for i in range(200):
            if i % 50 == 25:
                r = request(broker, "GET", "/nope", conn=conn)
                assert_error(r, 404, "NOT_FOUND")
            elif i % 50 == 26:
                r = request(broker, "POST", "/pub?topic=ka", body=b"", conn=conn)
                assert_error(r, 400, "MSG_EMPTY")
            else:
                r = request(broker, "POST", "/pub?topic=ka", body=f"m{i}".encode(), conn=conn)
                assert r.status == 200 and r.body == b"OK", (i, r)
            assert conn.sock is sock, f"connection was re-opened at request {i}"
        assert sock.getsockname() == local
        r = request(broker, "GET", "/stats?format=json&topic=ka", conn=conn)
        assert conn.sock is sock
        t = find_topic(r.json(), "ka")
        assert t["message_count"] == 192 and t["depth"] == 192, t
    finally:
        conn.close()


def test_pipelined_requests_answered_in_order(broker):
    """H2: several requests written in one send on one connection are all answered, in
    request order (HTTP/1.1 pipelining)."""
    reqs = [
        b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /pub?topic=pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst",
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /pub?topic=pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond",
        b"POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz",
        b"POST /topic/create?topic=pipe2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /stats?format=json&topic=pipe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /config/mem_queue_size HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    s = socket.create_connection(("127.0.0.1", broker.http_port), timeout=10)
    try:
        s.sendall(b"".join(reqs))
        f = s.makefile("rb")
        got = [read_http_response(f) for _ in reqs]
    finally:
        s.close()
    assert got[0][0] == 200 and got[0][2] == b"OK"
    assert got[1][0] == 200 and got[1][2] == b"OK"
    assert got[2][0] == 404 and got[2][2] == b'{"message":"NOT_FOUND"}'
    assert got[3][0] == 200 and got[3][2] == b"OK"
    assert got[4][0] == 400 and got[4][2] == b'{"message":"MISSING_ARG_TOPIC"}'
    assert got[5][0] == 200 and got[5][2] == b""
    doc = json.loads(got[6][2])
    assert [t["topic_name"] for t in doc["topics"]] == ["pipe"]
    assert doc["topics"][0]["message_count"] == 2
    assert doc["topics"][0]["message_bytes"] == len(b"first") + len(b"second")
    assert got[7][0] == 200 and got[7][2] == b"10000"
    assert find_topic(stats(broker), "pipe2") is not None


# ------------------------------------------------------------------ H22 debug


@pytest.mark.parametrize("method,path", [
    ("GET", "/debug/pprof/"),
    ("GET", "/debug/pprof/cmdline"),
    ("GET", "/debug/pprof/symbol"),
    ("POST", "/debug/pprof/symbol"),
    ("GET", "/debug/pprof/heap"),
    ("GET", "/debug/pprof/goroutine"),
    ("GET", "/debug/pprof/block"),
    ("GET", "/debug/pprof/threadcreate"),
    ("PUT", "/debug/setblockrate?rate=1"),
    ("POST", "/debug/freememory"),
])
def test_debug_routes_answer_200(broker, method, path):
    """H22: the pprof/debug routes of nsqd exist and answer 200 (stubs are allowed)."""
    r = request(broker, method, path, body=b"" if method != "GET" else None)
    assert r.status == 200, r
    # the broker is still serving afterwards
    assert get(broker, "/ping").body == b"OK"
