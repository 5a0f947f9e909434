"""Error frames of protocol V2, byte-exact against nsqd 1.3.0 (reference rows T2-T32).

Each case sends raw bytes and asserts the exact error frame (type 1 + exact text) and
whether the connection is then closed (fatal, T11) or still usable (E_FIN_FAILED,
E_REQ_FAILED, E_TOUCH_FAILED are the only non-fatal codes).
"""

import json
import time

import pytest

from helpers.wire import (
    FRAME_ERROR,
    FRAME_MESSAGE,
    FRAME_RESPONSE,
    OK,
    assert_broker_serves,
    assert_usable,
    cmd_bytes,
    expect_error,
    expect_no_frame,
    frame_bytes,
    i32,
    identify,
    identify_ok,
    mpub_body,
    pub,
    read_messages,
    sub,
)

MID = "0123456789abcdef"  # a well-formed message id that is never in flight


def ident_body(**fields):
    return cmd_bytes("IDENTIFY", json.dumps(fields).encode())


def do_sub(w):
    sub(w, "t", "c")


def do_hb_off(w):
    identify_ok(w, heartbeat_interval=-1)


def do_sub_cls(w):
    sub(w, "t", "c")
    w.cmd("CLS")
    assert w.read_frame() == (FRAME_RESPONSE, b"CLOSE_WAIT")


T65 = "a" * 65
EPH65 = "a" * 55 + "#ephemeral"

# (id, broker args, setup, bytes sent, exact error text, fatal)
CASES = [
    # T3 / T12: command line parsing
    ("T12-unknown-command", [], None, b"ASDF\n", "E_INVALID invalid command ASDF", True),
    ("T3-empty-line", [], None, b"\n", "E_INVALID invalid command ", True),
    ("T3-empty-line-crlf", [], None, b"\r\n", "E_INVALID invalid command ", True),
    ("T3-lowercase-command", [], None, b"nop\n", "E_INVALID invalid command nop", True),
    ("T3-leading-space", [], None, b" NOP\n", "E_INVALID invalid command ", True),
    # T13-T16: IDENTIFY body and field validation
    ("T13-identify-body-0", [], None, b"IDENTIFY\n" + i32(0),
     "E_BAD_BODY IDENTIFY invalid body size 0", True),
    ("T13-identify-body-negative", [], None, b"IDENTIFY\n" + i32(-1),
     "E_BAD_BODY IDENTIFY invalid body size -1", True),
    ("T13-identify-body-too-big", [], None, b"IDENTIFY\n" + i32(5242881),
     "E_BAD_BODY IDENTIFY body too big 5242881 > 5242880", True),
    ("T13-identify-body-too-big-flag", ["--max-body-size=100"], None, b"IDENTIFY\n" + i32(101),
     "E_BAD_BODY IDENTIFY body too big 101 > 100", True),
    ("T13-identify-bad-json", [], None, cmd_bytes("IDENTIFY", b"{not json"),
     "E_BAD_BODY IDENTIFY failed to decode JSON body", True),
    ("T13-identify-json-wrong-type", [], None, cmd_bytes("IDENTIFY", b'{"heartbeat_interval":"1000"}'),
     "E_BAD_BODY IDENTIFY failed to decode JSON body", True),
    ("T13-identify-json-array", [], None, cmd_bytes("IDENTIFY", b"[1,2]"),
     "E_BAD_BODY IDENTIFY failed to decode JSON body", True),
    ("T14-heartbeat-999", [], None, ident_body(heartbeat_interval=999),
     "E_BAD_BODY IDENTIFY heartbeat interval (999) is invalid", True),
    ("T14-heartbeat-over-max", [], None, ident_body(heartbeat_interval=60001),
     "E_BAD_BODY IDENTIFY heartbeat interval (60001) is invalid", True),
    ("T14-heartbeat-minus-2", [], None, ident_body(heartbeat_interval=-2),
     "E_BAD_BODY IDENTIFY heartbeat interval (-2) is invalid", True),
    ("T14-heartbeat-over-flag", ["--max-heartbeat-interval=5s"], None, ident_body(heartbeat_interval=5001),
     "E_BAD_BODY IDENTIFY heartbeat interval (5001) is invalid", True),
    ("T15-obuf-timeout-24", [], None, ident_body(output_buffer_timeout=24),
     "E_BAD_BODY IDENTIFY output buffer timeout (24) is invalid", True),
    ("T15-obuf-timeout-over-max", [], None, ident_body(output_buffer_timeout=30001),
     "E_BAD_BODY IDENTIFY output buffer timeout (30001) is invalid", True),
    ("T15-obuf-timeout-minus-2", [], None, ident_body(output_buffer_timeout=-2),
     "E_BAD_BODY IDENTIFY output buffer timeout (-2) is invalid", True),
    ("T15-obuf-timeout-under-min-flag", ["--min-output-buffer-timeout=100ms"], None,
     ident_body(output_buffer_timeout=99),
     "E_BAD_BODY IDENTIFY output buffer timeout (99) is invalid", True),
    ("T15-obuf-size-63", [], None, ident_body(output_buffer_size=63),
     "E_BAD_BODY IDENTIFY output buffer size (63) is invalid", True),
    ("T15-obuf-size-over-max", [], None, ident_body(output_buffer_size=65537),
     "E_BAD_BODY IDENTIFY output buffer size (65537) is invalid", True),
    ("T15-obuf-size-minus-2", [], None, ident_body(output_buffer_size=-2),
     "E_BAD_BODY IDENTIFY output buffer size (-2) is invalid", True),
    ("T15-obuf-both-bad-timeout-first", [], None, ident_body(output_buffer_size=1, output_buffer_timeout=1),
     "E_BAD_BODY IDENTIFY output buffer timeout (1) is invalid", True),
    ("T16-sample-rate-100", [], None, ident_body(sample_rate=100),
     "E_BAD_BODY IDENTIFY sample rate (100) is invalid", True),
    ("T16-sample-rate-minus-1", [], None, ident_body(sample_rate=-1),
     "E_BAD_BODY IDENTIFY sample rate (-1) is invalid", True),
    ("T16-msg-timeout-999", [], None, ident_body(msg_timeout=999),
     "E_BAD_BODY IDENTIFY msg timeout (999) is invalid", True),
    ("T16-msg-timeout-over-max", [], None, ident_body(msg_timeout=900001),
     "E_BAD_BODY IDENTIFY msg timeout (900001) is invalid", True),
    ("T16-msg-timeout-minus-1", [], None, ident_body(msg_timeout=-1),
     "E_BAD_BODY IDENTIFY msg timeout (-1) is invalid", True),
    ("T16-msg-timeout-over-flag", ["--max-msg-timeout=5s"], None, ident_body(msg_timeout=5001),
     "E_BAD_BODY IDENTIFY msg timeout (5001) is invalid", True),
    ("T13-heartbeat-checked-before-sample-rate", [], None, ident_body(heartbeat_interval=1, sample_rate=100),
     "E_BAD_BODY IDENTIFY heartbeat interval (1) is invalid", True),
    ("T19-deflate-and-snappy", [], None, ident_body(feature_negotiation=True, deflate=True, snappy=True),
     "E_IDENTIFY_FAILED cannot enable both deflate and snappy compression", True),
    ("T13-identify-after-sub", [], do_sub, ident_body(client_id="x"),
     "E_INVALID cannot IDENTIFY in current state", True),
    # T21: AUTH without an auth server
    ("T21-auth-disabled", [], None, cmd_bytes("AUTH", b"secret"), "E_AUTH_DISABLED AUTH disabled", True),
    ("T21-auth-extra-param", [], None, cmd_bytes("AUTH x", b"secret"),
     "E_INVALID AUTH invalid number of parameters", True),
    ("T21-auth-body-0", [], None, b"AUTH\n" + i32(0), "E_BAD_BODY AUTH invalid body size 0", True),
    ("T21-auth-body-too-big", [], None, b"AUTH\n" + i32(5242881),
     "E_BAD_BODY AUTH body too big 5242881 > 5242880", True),
    ("T21-auth-after-sub", [], do_sub, cmd_bytes("AUTH", b"secret"), "E_INVALID cannot AUTH in current state", True),
    # T23: SUB
    ("T23-sub-no-params", [], None, b"SUB\n", "E_INVALID SUB insufficient number of parameters", True),
    ("T23-sub-one-param", [], None, b"SUB t\n", "E_INVALID SUB insufficient number of parameters", True),
    ("T23-sub-bad-topic", [], None, b"SUB a!b c\n", 'E_BAD_TOPIC SUB topic name "a!b" is not valid', True),
    ("T23-sub-bad-channel", [], None, b"SUB t c*d\n", 'E_BAD_CHANNEL SUB channel name "c*d" is not valid', True),
    ("T8-sub-topic-65-chars", [], None, f"SUB {T65} c\n".encode(),
     f'E_BAD_TOPIC SUB topic name "{T65}" is not valid', True),
    ("T8-sub-channel-65-chars", [], None, f"SUB t {T65}\n".encode(),
     f'E_BAD_CHANNEL SUB channel name "{T65}" is not valid', True),
    ("T8-sub-ephemeral-65-chars", [], None, f"SUB t {EPH65}\n".encode(),
     f'E_BAD_CHANNEL SUB channel name "{EPH65}" is not valid', True),
    ("T3-sub-double-space", [], None, b"SUB t  c\n", 'E_BAD_CHANNEL SUB channel name "" is not valid', True),
    ("T23-sub-twice", [], do_sub, b"SUB t c2\n", "E_INVALID cannot SUB in current state", True),
    ("T23-sub-heartbeats-disabled", [], do_hb_off, b"SUB t c\n",
     "E_INVALID cannot SUB with heartbeats disabled", True),
    # T24: RDY
    ("T24-rdy-before-sub", [], None, b"RDY 1\n", "E_INVALID cannot RDY in current state", True),
    ("T24-rdy-2501", [], do_sub, b"RDY 2501\n", "E_INVALID RDY count 2501 out of range 0-2500", True),
    ("T24-rdy-3000", [], do_sub, b"RDY 3000\n", "E_INVALID RDY count 3000 out of range 0-2500", True),
    ("T24-rdy-huge", [], do_sub, b"RDY 99999999999\n", "E_INVALID RDY count 99999999999 out of range 0-2500", True),
    ("T24-rdy-over-flag", ["--max-rdy-count=50"], do_sub, b"RDY 51\n",
     "E_INVALID RDY count 51 out of range 0-50", True),
    ("T24-rdy-non-numeric", [], do_sub, b"RDY abc\n", "E_INVALID RDY could not parse count abc", True),
    ("T24-rdy-negative", [], do_sub, b"RDY -1\n", "E_INVALID RDY could not parse count -1", True),
    # T25: FIN
    ("T25-fin-before-sub", [], None, f"FIN {MID}\n".encode(), "E_INVALID cannot FIN in current state", True),
    ("T25-fin-no-param", [], do_sub, b"FIN\n", "E_INVALID FIN insufficient number of params", True),
    ("T25-fin-short-id", [], do_sub, b"FIN abc\n", "E_INVALID invalid message ID", True),
    ("T25-fin-long-id", [], do_sub, f"FIN {MID}0\n".encode(), "E_INVALID invalid message ID", True),
    ("T25-fin-empty-id", [], do_sub, b"FIN \n", "E_INVALID invalid message ID", True),
    ("T25-fin-unknown-id", [], do_sub, f"FIN {MID}\n".encode(),
     f"E_FIN_FAILED FIN {MID} failed ID not in flight", False),
    ("T25-fin-unknown-id-closing", [], do_sub_cls, f"FIN {MID}\n".encode(),
     f"E_FIN_FAILED FIN {MID} failed ID not in flight", False),
    # T26: REQ
    ("T26-req-before-sub", [], None, f"REQ {MID} 0\n".encode(), "E_INVALID cannot REQ in current state", True),
    ("T26-req-two-params", [], do_sub, f"REQ {MID}\n".encode(), "E_INVALID REQ insufficient number of params", True),
    ("T26-req-bad-id", [], do_sub, b"REQ abc 0\n", "E_INVALID invalid message ID", True),
    ("T26-req-bad-timeout", [], do_sub, f"REQ {MID} abc\n".encode(),
     "E_INVALID REQ could not parse timeout abc", True),
    ("T26-req-negative-timeout", [], do_sub, f"REQ {MID} -1\n".encode(),
     "E_INVALID REQ could not parse timeout -1", True),
    ("T26-req-unknown-id", [], do_sub, f"REQ {MID} 0\n".encode(),
     f"E_REQ_FAILED REQ {MID} failed ID not in flight", False),
    ("T26-req-unknown-id-huge-timeout", [], do_sub, f"REQ {MID} 999999999\n".encode(),
     f"E_REQ_FAILED REQ {MID} failed ID not in flight", False),
    # T27: TOUCH
    ("T27-touch-before-sub", [], None, f"TOUCH {MID}\n".encode(), "E_INVALID cannot TOUCH in current state", True),
    ("T27-touch-no-param", [], do_sub, b"TOUCH\n", "E_INVALID TOUCH insufficient number of params", True),
    ("T27-touch-bad-id", [], do_sub, b"TOUCH abc\n", "E_INVALID invalid message ID", True),
    ("T27-touch-unknown-id", [], do_sub, f"TOUCH {MID}\n".encode(),
     f"E_TOUCH_FAILED TOUCH {MID} failed ID not in flight", False),
    # T28: CLS
    ("T28-cls-before-sub", [], None, b"CLS\n", "E_INVALID cannot CLS in current state", True),
    ("T28-cls-twice", [], do_sub_cls, b"CLS\n", "E_INVALID cannot CLS in current state", True),
    ("T9-rdy-after-cls-ignored-then-sub", [], do_sub_cls, b"RDY 5\nSUB t c\n",
     "E_INVALID cannot SUB in current state", True),
    # T30: PUB
    ("T30-pub-no-topic", [], None, b"PUB\n", "E_INVALID PUB insufficient number of parameters", True),
    ("T30-pub-bad-topic", [], None, cmd_bytes("PUB a!b", b"x"), 'E_BAD_TOPIC PUB topic name "a!b" is not valid', True),
    ("T30-pub-empty-topic", [], None, cmd_bytes("PUB ", b"x"), 'E_BAD_TOPIC PUB topic name "" is not valid', True),
    ("T8-pub-topic-65-chars", [], None, cmd_bytes(f"PUB {T65}", b"x"),
     f'E_BAD_TOPIC PUB topic name "{T65}" is not valid', True),
    ("T8-pub-only-ephemeral-suffix", [], None, cmd_bytes("PUB #ephemeral", b"x"),
     'E_BAD_TOPIC PUB topic name "#ephemeral" is not valid', True),
    ("T8-pub-ephemeral-65-chars", [], None, cmd_bytes(f"PUB {EPH65}", b"x"),
     f'E_BAD_TOPIC PUB topic name "{EPH65}" is not valid', True),
    ("T30-pub-body-0", [], None, b"PUB t\n" + i32(0), "E_BAD_MESSAGE PUB invalid message body size 0", True),
    ("T30-pub-body-negative", [], None, b"PUB t\n" + i32(-5), "E_BAD_MESSAGE PUB invalid message body size -5", True),
    ("T30-pub-too-big-default", [], None, b"PUB t\n" + i32(1048577),
     "E_BAD_MESSAGE PUB message too big 1048577 > 1048576", True),
    ("T30-pub-too-big-flag", ["--max-msg-size=100"], None, b"PUB t\n" + i32(101),
     "E_BAD_MESSAGE PUB message too big 101 > 100", True),
    ("T30-pub-len-int32-max", [], None, b"PUB t\n" + i32(2**31 - 1),
     "E_BAD_MESSAGE PUB message too big 2147483647 > 1048576", True),
    # T31: MPUB (X2: the bad-topic text is doubled)
    ("T31-mpub-no-topic", [], None, b"MPUB\n", "E_INVALID MPUB insufficient number of parameters", True),
    ("X2-mpub-bad-topic", [], None, b"MPUB a!b\n" + mpub_body([b"x"]),
     'E_BAD_TOPIC E_BAD_TOPIC MPUB topic name "a!b" is not valid', True),
    ("T31-mpub-body-0", [], None, b"MPUB t\n" + i32(0), "E_BAD_BODY MPUB invalid body size 0", True),
    ("T31-mpub-body-negative", [], None, b"MPUB t\n" + i32(-1), "E_BAD_BODY MPUB invalid body size -1", True),
    ("T31-mpub-body-too-big", [], None, b"MPUB t\n" + i32(5242881),
     "E_BAD_BODY MPUB body too big 5242881 > 5242880", True),
    ("T31-mpub-body-too-big-flag", ["--max-body-size=1000"], None, b"MPUB t\n" + i32(1148),
     "E_BAD_BODY MPUB body too big 1148 > 1000", True),
    ("T31-mpub-count-0", [], None, b"MPUB t\n" + i32(4) + i32(0), "E_BAD_BODY MPUB invalid message count 0", True),
    ("T31-mpub-count-negative", [], None, b"MPUB t\n" + i32(4) + i32(-1),
     "E_BAD_BODY MPUB invalid message count -1", True),
    ("T31-mpub-count-over-max", [], None, b"MPUB t\n" + i32(100) + i32(1048576),
     "E_BAD_BODY MPUB invalid message count 1048576", True),
    ("T31-mpub-count-over-max-flag", ["--max-body-size=1000"], None, b"MPUB t\n" + i32(100) + i32(200),
     "E_BAD_BODY MPUB invalid message count 200", True),
    ("T31-mpub-msg-size-0", [], None, b"MPUB t\n" + i32(20) + i32(3) + i32(1) + b"a" + i32(0),
     "E_BAD_MESSAGE MPUB invalid message(1) body size 0", True),
    ("T31-mpub-msg-size-negative", [], None, b"MPUB t\n" + i32(20) + i32(2) + i32(-7),
     "E_BAD_MESSAGE MPUB invalid message(0) body size -7", True),
    ("T31-mpub-msg-too-big", ["--max-msg-size=100"], None,
     b"MPUB t\n" + i32(300) + i32(2) + i32(100) + b"a" * 100 + i32(101),
     "E_BAD_MESSAGE MPUB message too big 101 > 100", True),
    # T32: DPUB
    ("T32-dpub-two-params", [], None, cmd_bytes("DPUB t", b"x"), "E_INVALID DPUB insufficient number of parameters", True),
    ("T32-dpub-bad-topic", [], None, cmd_bytes("DPUB a!b 0", b"x"),
     'E_BAD_TOPIC DPUB topic name "a!b" is not valid', True),
    ("T32-dpub-bad-timeout", [], None, cmd_bytes("DPUB t abc", b"x"), "E_INVALID DPUB could not parse timeout abc", True),
    ("T32-dpub-negative-timeout", [], None, cmd_bytes("DPUB t -1", b"x"),
     "E_INVALID DPUB could not parse timeout -1", True),
    ("T32-dpub-out-of-range", [], None, cmd_bytes("DPUB t 3600001", b"x"),
     "E_INVALID DPUB timeout 3600001 out of range 0-3600000", True),
    ("T32-dpub-out-of-range-flag", ["--max-req-timeout=10s"], None, cmd_bytes("DPUB t 10001", b"x"),
     "E_INVALID DPUB timeout 10001 out of range 0-10000", True),
    ("T32-dpub-body-0", [], None, b"DPUB t 0\n" + i32(0), "E_BAD_MESSAGE DPUB invalid message body size 0", True),
    ("T32-dpub-too-big-flag", ["--max-msg-size=100"], None, b"DPUB t 10\n" + i32(101),
     "E_BAD_MESSAGE DPUB message too big 101 > 100", True),
]


@pytest.mark.parametrize("args,setup,raw,expected,fatal", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_frame(brokers, connect, args, setup, raw, expected, fatal):
    """T2-T32 (T10, T11, T12): exact error frame text; fatal errors close the connection,
    E_FIN_FAILED / E_REQ_FAILED / E_TOUCH_FAILED leave it usable; the broker keeps serving."""
    b = brokers(args=args)
    w = connect(b)
    if setup:
        setup(w)
    w.send(raw)
    expect_error(w, expected, fatal=fatal)
    assert_broker_serves(b)


@pytest.mark.parametrize("magic", [b"  V1", b"V2  ", b"GET ", b"\x00\x00\x00\x00"])
def test_bad_magic(broker, connect, magic):
    """T2: a wrong 4-byte magic gets exactly one framed error `E_BAD_PROTOCOL`, then close."""
    w = connect(broker, magic=magic)
    w.sock.settimeout(3.0)
    data = b""
    while True:
        chunk = w.sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data == frame_bytes(FRAME_ERROR, b"E_BAD_PROTOCOL")
    assert_broker_serves(broker)


def test_short_magic_then_close(broker, connect):
    """T2: a client that sends 2 magic bytes and closes does not hurt the broker."""
    w = connect(broker, magic=b"  ")
    w.close()
    assert_broker_serves(broker)


def test_success_answers(broker, connect):
    """T13, T23-T32: IDENTIFY/SUB/PUB/MPUB/DPUB answer OK, CLS answers CLOSE_WAIT,
    NOP/RDY/FIN/REQ/TOUCH answer nothing (checked by the next answer being PUB's OK)."""
    w = connect(broker)
    w.cmd("NOP")
    w.cmd("IDENTIFY", b'{"client_id":"x"}')
    assert w.read_frame() == OK
    w.cmd("NOP")
    w.cmd("PUB t", b"a")
    assert w.read_frame() == OK
    w.cmd("MPUB t", mpub_body([b"b", b"c"]))
    assert w.read_frame() == OK
    w.cmd("DPUB t 0", b"d")
    assert w.read_frame() == OK
    w.cmd("SUB t c")
    assert w.read_frame() == OK
    w.cmd("RDY 1")
    m = w.read_message()
    w.cmd(b"TOUCH " + m["id"])
    w.cmd(b"REQ " + m["id"] + b" 0")
    # REQ 0 puts it back on the queue (behind the others): FIN until it comes back
    for _ in range(4):
        m2 = w.read_message()
        w.cmd(b"FIN " + m2["id"])
        if m2["id"] == m["id"]:
            break
    assert m2["id"] == m["id"] and m2["attempts"] == 2
    w.cmd("RDY 0")
    w.cmd("NOP")
    w.cmd("PUB t", b"e")
    assert w.read_frame() == OK
    w.cmd("CLS")
    assert w.read_frame() == (FRAME_RESPONSE, b"CLOSE_WAIT")
    # T28: the server does not close after CLS
    assert not w.is_closed(0.3)
    assert_usable(w)


def test_crlf_and_extra_params(broker, connect):
    """T3: one trailing \\r is stripped; extra params are ignored; PUB works in any state (T9)."""
    w = connect(broker)
    w.send(b"NOP\r\n")
    w.send(cmd_bytes("PUB t\r", b"crlf"))
    assert w.read_frame() == OK
    w.send(cmd_bytes("PUB t extra", b"extra"))
    assert w.read_frame() == OK
    w.send(b"SUB t c extra\r\n")
    assert w.read_frame() == OK
    w.send(b"RDY 2\r\n")
    bodies = sorted(m["body"] for m in read_messages(w, 2))
    assert bodies == [b"crlf", b"extra"]
    # a consumer connection may publish too (T9)
    w.send(cmd_bytes("PUB t", b"from-consumer"))
    fr = w.read_frame()
    if fr[0] == FRAME_MESSAGE:  # the new message may overtake the OK
        assert fr[1][26:] == b"from-consumer"
        fr = w.read_frame()
    assert fr == OK


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"unknown_key": 1, "client_id": "c", "hostname": "h", "user_agent": "ua/1"},
        {"heartbeat_interval": 1000},
        {"heartbeat_interval": 60000},
        {"heartbeat_interval": -1},
        {"heartbeat_interval": 0},
        {"output_buffer_size": 64, "output_buffer_timeout": 25},
        {"output_buffer_size": 65536, "output_buffer_timeout": 30000},
        {"output_buffer_size": -1, "output_buffer_timeout": -1},
        {"sample_rate": 0},
        {"sample_rate": 99},
        {"msg_timeout": 1000},
        {"msg_timeout": 900000},
        {"deflate": True, "snappy": True},  # without feature_negotiation: plain OK
        {"tls_v1": True},
    ],
    ids=lambda f: json.dumps(f, sort_keys=True),
)
def test_identify_boundaries_accepted(broker, connect, fields):
    """T13-T16: in-range IDENTIFY values (bounds included) answer OK; unknown keys ignored."""
    w = connect(broker)
    assert identify(w, **fields) == OK
    assert_usable(w)


def test_identify_twice_before_sub(broker, connect):
    """T9/T13: IDENTIFY is allowed repeatedly while in `init` (nsqd TestOutputBufferingValidity),
    only after SUB is it `E_INVALID cannot IDENTIFY in current state`."""
    w = connect(broker)
    assert identify(w, output_buffer_size=65536, output_buffer_timeout=1000) == OK
    assert identify(w, output_buffer_size=-1, output_buffer_timeout=-1) == OK
    assert identify(w, output_buffer_size=0, output_buffer_timeout=0) == OK
    sub(w, "t", "c")
    w.cmd("IDENTIFY", b"{}")
    expect_error(w, "E_INVALID cannot IDENTIFY in current state", fatal=True)


@pytest.mark.parametrize(
    "topic,channel",
    [
        ("a" * 64, "c"),
        ("t", "b" * 64),
        ("a" * 54 + "#ephemeral", "b" * 54 + "#ephemeral"),
        ("Az09._-", "Az09._-"),
        (".", "-"),
    ],
    ids=["topic-64", "channel-64", "ephemeral-64", "all-chars", "single-char"],
)
def test_valid_names(broker, connect, topic, channel):
    """T8: names up to 64 chars (suffix included) from [.a-zA-Z0-9_-] are accepted by PUB and SUB."""
    w = connect(broker)
    pub(w, topic, b"x")
    sub(w, topic, channel)
    w.cmd("RDY 1")
    assert read_messages(w, 1)[0]["body"] == b"x"


@pytest.mark.parametrize("count", ["", " 0", " 2500"], ids=["no-count", "zero", "max"])
def test_rdy_valid_counts(broker, connect, count):
    """T24: `RDY` (count defaults to 1), `RDY 0` and `RDY 2500` are accepted without an answer."""
    w = connect(broker)
    sub(w, "t", "c")
    w.cmd("RDY" + count)
    assert_usable(w)


def test_dpub_max_defer_accepted(brokers, connect):
    """T32 / X5: DPUB at exactly --max-req-timeout is accepted (range is inclusive)."""
    b = brokers(args=["--max-req-timeout=10s"])
    w = connect(b)
    w.cmd("DPUB t 10000", b"x")
    assert w.read_frame() == OK
    w.cmd("DPUB t 0", b"y")
    assert w.read_frame() == OK


def test_fin_not_owner(broker, connect):
    """T25: FIN of a message in flight to another client is the non-fatal
    `E_FIN_FAILED FIN <id> failed client does not own message`; the owner can still FIN it."""
    a = connect(broker)
    sub(a, "t", "c")
    b = connect(broker)
    sub(b, "t", "c")
    pub(a, "t", b"owned")
    a.cmd("RDY 1")
    m = a.read_message()
    b.cmd(b"FIN " + m["id"])
    expect_error(b, b"E_FIN_FAILED FIN " + m["id"] + b" failed client does not own message", fatal=False)
    b.cmd(b"REQ " + m["id"] + b" 0")
    expect_error(b, b"E_REQ_FAILED REQ " + m["id"] + b" failed client does not own message", fatal=False)
    b.cmd(b"TOUCH " + m["id"])
    expect_error(b, b"E_TOUCH_FAILED TOUCH " + m["id"] + b" failed client does not own message", fatal=False)
    a.cmd(b"FIN " + m["id"])
    assert_usable(a)
    # a second FIN of the same id: no longer in flight
    a.cmd(b"FIN " + m["id"])
    expect_error(a, b"E_FIN_FAILED FIN " + m["id"] + b" failed ID not in flight", fatal=False)


def test_max_channel_consumers(brokers, connect):
    """T23 / Q18: with --max-channel-consumers=1 a second SUB to the same channel is fatal
    `E_SUB_FAILED SUB failed consumers for t:c exceeds limit of 1`; another channel is fine."""
    b = brokers(args=["--max-channel-consumers=1"])
    w1 = connect(b)
    sub(w1, "t", "c")
    w2 = connect(b)
    w2.cmd("SUB t c")
    expect_error(w2, "E_SUB_FAILED SUB failed consumers for t:c exceeds limit of 1", fatal=True)
    w3 = connect(b)
    sub(w3, "t", "other")
    # after the first consumer leaves, the slot is free again
    w1.close()
    deadline = time.time() + 3
    while True:
        w4 = connect(b)
        w4.cmd("SUB t c")
        fr = w4.read_frame()
        if fr == OK or time.time() > deadline:
            break
    assert fr == OK


def test_mpub_validates_all_before_enqueue(broker, connect):
    """T31: all MPUB messages are validated before any is enqueued: a bad 3rd message
    means the first two are never delivered."""
    w = connect(broker)
    w.cmd("MPUB t", mpub_body([b"first", b"second", b""]))
    expect_error(w, "E_BAD_MESSAGE MPUB invalid message(2) body size 0", fatal=True)
    c = connect(broker)
    sub(c, "t", "c")
    p = connect(broker)
    pub(p, "t", b"marker")
    c.cmd("RDY 10")
    assert [m["body"] for m in read_messages(c, 1)] == [b"marker"]
    expect_no_frame(c, 0.3)


def test_mpub_body_size_not_cross_checked(broker, connect):
    """T31: the leading MPUB body-size field is not cross-checked against the content read."""
    c = connect(broker)
    sub(c, "t", "c")
    w = connect(broker)
    content = mpub_body([b"one", b"two", b"three"])  # 4 + 3*4 + 11 = 27 bytes
    w.send(b"MPUB t\n" + i32(5) + content)
    assert w.read_frame() == OK
    c.cmd("RDY 10")
    assert sorted(m["body"] for m in read_messages(c, 3)) == [b"one", b"three", b"two"]


def test_mpub_declaring_more_than_it_sends_is_answered(broker, connect):
    """T31: nsqd reads the count and then each message, never the declared body size:
    an MPUB declaring 1000 bytes more than its messages is answered at its last
    message, and what follows it is the next command."""
    c = connect(broker)
    sub(c, "t", "c")
    w = connect(broker)
    content = mpub_body([b"one", b"two", b"three"])
    w.send(b"MPUB t\n" + i32(len(content) + 1000) + content)
    assert w.read_frame() == OK
    w.send(b"MPUB t\n" + i32(len(content) + 1000) + content + b"PUB t\n" + i32(4) + b"four")
    assert w.read_frame() == OK
    assert w.read_frame() == OK
    c.cmd("RDY 10")
    bodies = [m["body"] for m in read_messages(c, 7)]
    assert sorted(bodies) == sorted([b"one", b"two", b"three"] * 2 + [b"four"])
    expect_no_frame(c, 0.3)
