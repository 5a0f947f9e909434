"""POST /pub and POST /mpub, checked by consuming over TCP.

Rows: H6 (/pub), H7 (/mpub), with T6/T7 (message layout and id), Q8 (deferred),
Q16 (auto-creation). Statuses and codes from nsqd v1.3.0 nsqd/http.go doPUB/doMPUB
and readMPUB in nsqd/protocol_v2.go.
"""

import os
import struct
import time

import pytest

from helpers.http_api import (
    assert_error,
    assert_ok_text,
    check_message_header,
    find_topic,
    post,
    raw_chunked_post,
    stats,
    topic_stat,
)
from helpers.wait import wait_channel, wait_topic
from helpers.wire import mpub_body

ALL_BYTES = bytes(range(256))


# ------------------------------------------------------------------ /pub success


def test_pub_binary_body_delivered_byte_exact(broker, tcp):
    """H6/T6/T7: a /pub body with all 256 byte values reaches a TCP consumer unchanged,
    with a 16-hex id, attempts 1 and a current nanosecond timestamp."""
    c = tcp(broker).sub("bin", "ch", rdy=1)
    body = ALL_BYTES * 4 + b"\n\r\n\x00"
    r = post(broker, "/pub?topic=bin", body, headers={"Content-Type": "application/octet-stream"})
    assert_ok_text(r)
    m = c.read_message()
    assert m["body"] == body
    check_message_header(m)
    c.fin(m["id"])
    wait_topic(broker, "bin", message_bytes=len(body))


def test_pub_http_and_tcp_messages_look_the_same(broker, tcp):
    """H6/T6/T7: a message published over HTTP has the same shape as one published over
    TCP PUB: 16 lowercase hex id from the topic's generator (ids increase), attempts 1,
    timestamp in ns of the publish time."""
    c = tcp(broker).sub("same", "ch", rdy=10)
    p = tcp(broker)
    t0 = time.time_ns()
    p.pub("same", b"via-tcp")
    assert_ok_text(post(broker, "/pub?topic=same", b"via-http"))
    p.pub("same", b"via-tcp-2")
    t1 = time.time_ns()
    msgs = c.read_messages(3)
    assert [m["body"] for m in msgs] == [b"via-tcp", b"via-http", b"via-tcp-2"]
    for m in msgs:
        check_message_header(m)
        assert t0 - 10**9 <= m["timestamp"] <= t1 + 10**9, (t0, m["timestamp"], t1)
    ids = [m["id"] for m in msgs]
    assert len(set(ids)) == 3
    assert ids == sorted(ids), ids  # one snowflake generator per topic (T7)


def test_pub_creates_topic_and_counts(broker):
    """H6/Q16: /pub auto-creates the topic; depth/message_count/message_bytes follow."""
    assert find_topic(stats(broker), "auto") is None
    for body in [b"a", b"bb", b"ccc"]:
        assert_ok_text(post(broker, "/pub?topic=auto", body))
    t = find_topic(stats(broker), "auto")
    assert t["depth"] == 3 and t["message_count"] == 3 and t["message_bytes"] == 6, t


def test_pub_ephemeral_and_max_length_topic_names(broker):
    """H6/T8: '#ephemeral' suffix and 64-char names are valid; 65 chars are not."""
    assert_ok_text(post(broker, "/pub?topic=eph%23ephemeral", b"x"))
    name64 = "t" * 64
    assert_ok_text(post(broker, f"/pub?topic={name64}", b"x"))
    assert_error(post(broker, f"/pub?topic={'t' * 65}", b"x"), 400, "INVALID_TOPIC")
    names = [t["topic_name"] for t in stats(broker)["topics"]]
    assert "eph#ephemeral" in names and name64 in names and "t" * 65 not in names


# ------------------------------------------------------------------ /pub errors


def test_pub_missing_and_invalid_topic(broker):
    """H6: no topic -> 400 MISSING_ARG_TOPIC; bad name -> 400 INVALID_TOPIC; nothing created."""
    assert_error(post(broker, "/pub", b"x"), 400, "MISSING_ARG_TOPIC")
    assert_error(post(broker, "/pub?topik=a", b"x"), 400, "MISSING_ARG_TOPIC")
    for bad in ["bad$name", "", "a%20b", "a:b", "sp%C3%A9cial", "x%23ephemeralx"]:
        assert_error(post(broker, f"/pub?topic={bad}", b"x"), 400, "INVALID_TOPIC")
    assert stats(broker)["topics"] == []


def test_pub_empty_body(broker):
    """H6: an empty body -> 400 MSG_EMPTY (checked before the topic; topic not created)."""
    assert_error(post(broker, "/pub?topic=empty", b""), 400, "MSG_EMPTY")
    # body is checked before the topic argument
    assert_error(post(broker, "/pub", b""), 400, "MSG_EMPTY")
    assert find_topic(stats(broker), "empty") is None


def test_pub_msg_too_big(brokers):
    """H6: Content-Length > --max-msg-size -> 413 MSG_TOO_BIG; a chunked body that grows past
    it while reading -> 413 MSG_TOO_BIG; exactly max-msg-size is accepted."""
    b = brokers(args=["--max-msg-size=100"])
    assert_error(post(b, "/pub?topic=big", b"x" * 101), 413, "MSG_TOO_BIG")
    # Content-Length is checked before the topic argument
    assert_error(post(b, "/pub", b"x" * 101), 413, "MSG_TOO_BIG")
    assert_error(post(b, "/pub?topic=big", b"y" * 101, chunked=True), 413, "MSG_TOO_BIG")
    assert_error(raw_chunked_post(b, "/pub?topic=big", b"y" * 5000), 413, "MSG_TOO_BIG")
    assert find_topic(stats(b), "big") is None
    assert_ok_text(post(b, "/pub?topic=big", b"x" * 100))
    assert_ok_text(post(b, "/pub?topic=big", b"y" * 100, chunked=True))
    t = find_topic(stats(b), "big")
    assert t["message_count"] == 2 and t["message_bytes"] == 200, t


def test_pub_defer_invalid(brokers):
    """H6/X5: defer not an integer or outside [0, --max-req-timeout] -> 400 INVALID_DEFER
    (not clamped); nothing is published."""
    b = brokers(args=["--max-req-timeout=10s"])
    for bad in ["-1", "10001", "abc", "1.5", "", "1e3", "99999999999999999999"]:
        assert_error(post(b, f"/pub?topic=d&defer={bad}", b"x"), 400, "INVALID_DEFER")
    assert topic_stat(b, "d", "message_count") in (None, 0)
    assert_ok_text(post(b, "/pub?topic=d&defer=10000", b"x"))
    assert_ok_text(post(b, "/pub?topic=d&defer=0", b"x"))
    assert topic_stat(b, "d", "message_count") == 2


def test_pub_defer_default_max(broker):
    """H6: with the default --max-req-timeout (1h) defer=3600000 is fine, 3600001 is not."""
    assert_ok_text(post(broker, "/pub?topic=d1&defer=3600000", b"x"))
    assert_error(post(broker, "/pub?topic=d1&defer=3600001", b"x"), 400, "INVALID_DEFER")


def test_pub_defer_delays_delivery(broker, tcp):
    """H6/Q8: /pub?defer=ms puts the message in the channel's deferred queue: not delivered
    before the delay, delivered after it; deferred_count shows it meanwhile."""
    c = tcp(broker).sub("later", "ch", rdy=1)
    t0 = time.time()
    assert_ok_text(post(broker, "/pub?topic=later&defer=1500", b"deferred-body"))
    wait_channel(broker, "later", "ch", deferred_count=1, timeout=1.0)
    assert topic_stat(broker, "later", "message_count") == 1
    c.expect_nothing(1.0)
    m = c.read_message(timeout=4.0)
    elapsed = time.time() - t0
    assert m["body"] == b"deferred-body"
    assert elapsed >= 1.4, elapsed
    check_message_header(m)
    wait_channel(broker, "later", "ch", deferred_count=0)


# ------------------------------------------------------------------ /mpub text mode


def test_mpub_text_mode_split_rules(broker, tcp):
    """H7: text mode splits on \\n, skips empty lines, keeps a trailing \\r in the body;
    messages are delivered byte-exact and in order."""
    c = tcp(broker).sub("txt", "ch", rdy=20)
    body = b"one\ntwo\r\n\n\nthree \n\r\n\x00\x01\xff\n\nlast"
    assert_ok_text(post(broker, "/mpub?topic=txt", body))
    want = [b"one", b"two\r", b"three ", b"\r", b"\x00\x01\xff", b"last"]
    msgs = c.read_messages(len(want))
    assert [m["body"] for m in msgs] == want
    for m in msgs:
        check_message_header(m)
    c.expect_nothing(0.3)
    t = find_topic(stats(broker, topic="txt"), "txt")
    assert t["message_count"] == len(want)
    assert t["message_bytes"] == sum(map(len, want))


def test_mpub_text_mode_trailing_newline_and_binary_false(broker, tcp):
    """H7: a trailing newline adds no message; binary=false and binary=0 are text mode."""
    c = tcp(broker).sub("txt2", "ch", rdy=20)
    assert_ok_text(post(broker, "/mpub?topic=txt2", b"a\nb\n"))
    assert_ok_text(post(broker, "/mpub?topic=txt2&binary=false", b"c\nd"))
    assert_ok_text(post(broker, "/mpub?topic=txt2&binary=0", b"e\n\nf\n"))
    msgs = c.read_messages(6)
    assert [m["body"] for m in msgs] == [b"a", b"b", b"c", b"d", b"e", b"f"]
    c.expect_nothing(0.3)


def test_mpub_text_only_newlines_publishes_nothing(broker):
    """H7: a text body of only newlines holds no message: 200 OK, nothing enqueued."""
    assert_ok_text(post(broker, "/mpub?topic=nl", b"\n\n\n"))
    assert topic_stat(broker, "nl", "message_count") in (None, 0)


def test_mpub_text_msg_too_big(brokers):
    """H7: a line longer than --max-msg-size -> 413 MSG_TOO_BIG, none of the batch is
    published; the \\r is part of the line (100 bytes + \\r is too big)."""
    b = brokers(args=["--max-msg-size=100"])
    assert_error(post(b, "/mpub?topic=mt", b"ok\n" + b"x" * 101 + b"\nok"), 413, "MSG_TOO_BIG")
    assert_error(post(b, "/mpub?topic=mt", b"x" * 100 + b"\r\nok"), 413, "MSG_TOO_BIG")
    assert topic_stat(b, "mt", "message_count") in (None, 0)
    assert_ok_text(post(b, "/mpub?topic=mt", b"x" * 100 + b"\n" + b"y" * 100))
    assert topic_stat(b, "mt", "message_count") == 2


def test_mpub_body_too_big(brokers):
    """H7: Content-Length > --max-body-size -> 413 BODY_TOO_BIG (before the topic check);
    a chunked text body that grows past it -> 413 BODY_TOO_BIG; binary mode too."""
    b = brokers(args=["--max-msg-size=100", "--max-body-size=1000"])
    assert_error(post(b, "/mpub?topic=bb", b"a\n" * 500 + b"z"), 413, "BODY_TOO_BIG")
    assert_error(post(b, "/mpub", b"a\n" * 501), 413, "BODY_TOO_BIG")
    lines = b"\n".join([b"L" * 60] * 20)  # 1219 bytes, every line within max-msg-size
    assert_error(raw_chunked_post(b, "/mpub?topic=bb", lines), 413, "BODY_TOO_BIG")
    binbody = mpub_body([b"m" * 90] * 11)  # 4 + 11*94 = 1038 bytes
    assert_error(post(b, "/mpub?topic=bb&binary=true", binbody), 413, "BODY_TOO_BIG")
    assert topic_stat(b, "bb", "message_count") in (None, 0)
    assert_ok_text(post(b, "/mpub?topic=bb", b"a\n" * 500))  # exactly 1000 bytes
    assert topic_stat(b, "bb", "message_count") == 500


# ------------------------------------------------------------------ /mpub binary mode


@pytest.mark.parametrize("param", ["true", "1", "yes", "non_normalized_binary_param"])
def test_mpub_binary_mode(broker, tcp, param):
    """H7: binary=true / 1 and any unrecognised value (deprecated, treated as true) read
    [4B count]([4B size][data])*; bodies with \\n and all byte values arrive intact, in order."""
    c = tcp(broker).sub("bin", "ch", rdy=50)
    msgs = [ALL_BYTES, b"line1\nline2\n", b"\r\n", b"\n", os.urandom(1000), b"x"]
    msgs += [f"n{i}".encode() for i in range(20)]
    r = post(broker, f"/mpub?topic=bin&binary={param}", mpub_body(msgs))
    assert_ok_text(r)
    got = c.read_messages(len(msgs))
    assert [m["body"] for m in got] == msgs
    for m in got:
        check_message_header(m)
    c.expect_nothing(0.3)
    t = find_topic(stats(broker, topic="bin"), "bin")
    assert t["message_count"] == len(msgs)
    assert t["message_bytes"] == sum(map(len, msgs))


def test_mpub_binary_errors(brokers):
    """H7: binary-mode errors are 413 with the readMPUB code minus 'E_': BAD_BODY for the
    count, BAD_MESSAGE for a message; nothing of a bad batch is published."""
    b = brokers(args=["--max-msg-size=100", "--max-body-size=1000"])
    u = "/mpub?topic=be&binary=true"
    # count problems -> BAD_BODY
    assert_error(post(b, u, b""), 413, "BAD_BODY")
    assert_error(post(b, u, b"\x00\x00"), 413, "BAD_BODY")
    assert_error(post(b, u, struct.pack(">i", 0)), 413, "BAD_BODY")
    assert_error(post(b, u, struct.pack(">i", -1)), 413, "BAD_BODY")
    assert_error(post(b, u, struct.pack(">i", (1000 - 4) // 5 + 1)), 413, "BAD_BODY")
    # message problems -> BAD_MESSAGE
    assert_error(post(b, u, struct.pack(">ii", 1, 0)), 413, "BAD_MESSAGE")
    assert_error(post(b, u, struct.pack(">ii", 1, -5) + b"xxxxx"), 413, "BAD_MESSAGE")
    assert_error(post(b, u, struct.pack(">ii", 1, 101) + b"x" * 101), 413, "BAD_MESSAGE")
    assert_error(post(b, u, struct.pack(">ii", 2, 3) + b"abc"), 413, "BAD_MESSAGE")
    assert_error(post(b, u, struct.pack(">ii", 1, 10) + b"short"), 413, "BAD_MESSAGE")
    assert_error(post(b, u, struct.pack(">i", 1) + b"\x00\x00"), 413, "BAD_MESSAGE")
    assert topic_stat(b, "be", "message_count") in (None, 0)
    # a valid one still works; 100 bytes is the maximum message
    assert_ok_text(post(b, u, mpub_body([b"x" * 100, b"y"])))
    assert topic_stat(b, "be", "message_count") == 2


def test_mpub_missing_and_invalid_topic(broker):
    """H7: no topic -> 400 MISSING_ARG_TOPIC; bad name -> 400 INVALID_TOPIC."""
    assert_error(post(broker, "/mpub", b"a\nb"), 400, "MISSING_ARG_TOPIC")
    assert_error(post(broker, "/mpub?binary=true", mpub_body([b"a"])), 400, "MISSING_ARG_TOPIC")
    assert_error(post(broker, "/mpub?topic=no!pe", b"a\nb"), 400, "INVALID_TOPIC")
    assert_error(post(broker, f"/mpub?topic={'a' * 65}", b"a"), 400, "INVALID_TOPIC")
    assert stats(broker)["topics"] == []


def test_mpub_large_batch_in_order(broker, tcp):
    """H7: 500 binary-mode messages of varied random content arrive byte-exact and in order."""
    c = tcp(broker).sub("many", "ch", rdy=600)
    msgs = [os.urandom(1 + (i * 37) % 700) for i in range(500)]
    assert_ok_text(post(broker, "/mpub?topic=many&binary=1", mpub_body(msgs)))
    got = c.read_messages(len(msgs))
    assert [m["body"] for m in got] == msgs
    ids = [m["id"] for m in got]
    assert len(set(ids)) == 500


def test_errors_after_the_topic_name_leave_the_topic_created(brokers):
    """H6/H7 as nsqd 1.3.0's http.go orders them: /pub checks the body (size, empty) before
    it even parses the query, then reads the topic, which GetTopic creates, then defer; /mpub
    checks Content-Length, then reads (and creates) the topic, then the body. So a bad defer
    or a bad /mpub body fails with the topic created and empty, and a bad query string on
    /pub is only reported for a body that passed its checks."""
    b = brokers(args=["--max-msg-size=100", "--max-body-size=1000"])
    assert_error(post(b, "/pub?topic=d1&defer=abc", b"x"), 400, "INVALID_DEFER")
    assert_error(post(b, "/mpub?topic=m1&binary=true", struct.pack(">i", 0)), 413, "BAD_BODY")
    assert_error(post(b, "/mpub?topic=m2", b"ok\n" + b"x" * 101), 413, "MSG_TOO_BIG")
    assert_error(post(b, "/mpub?topic=m3", b"x" * 1001), 413, "BODY_TOO_BIG")
    for name in ["d1", "m1", "m2"]:
        t = find_topic(stats(b), name)
        assert t is not None and t["message_count"] == 0, (name, t)
    assert find_topic(stats(b), "m3") is None, "Content-Length is checked before the topic"
    # A query Go's url.ParseQuery refuses (';'): the body's errors come first on /pub.
    assert_error(post(b, "/pub?topic=q;x", b"x" * 101), 413, "MSG_TOO_BIG")
    assert_error(post(b, "/pub?topic=q;x", b""), 400, "MSG_EMPTY")
    assert_error(post(b, "/pub?topic=q;x", b"x"), 400, "INVALID_REQUEST")
