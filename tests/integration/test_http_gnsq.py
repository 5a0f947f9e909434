"""A real client library against the HTTP API: gnsq.NsqdHTTPClient (urllib3).

Rows: H4, H5, H6, H7, H8, H14-H19, H23 (nsq tools send
`Accept: application/vnd.nsq; version=1.0` and read JSON V1 bodies). gnsq pulls in gevent,
so it runs in a subprocess to keep monkey patching out of the pytest process.
"""

import json
import subprocess
import sys
import textwrap

from helpers.http_api import find_channel, find_topic, stats

SCRIPT = textwrap.dedent(r"""
    import base64, json, sys
    from gnsq import NsqdHTTPClient
    from gnsq.errors import NSQHttpError

    port = int(sys.argv[1])
    c = NsqdHTTPClient("127.0.0.1", port)
    out = {}
    out["ping"] = c.ping().decode()
    out["info"] = c.info()
    out["create_topic"] = c.create_topic("gq").decode()
    out["create_channel"] = c.create_channel("gq", "ch").decode()
    out["create_channel2"] = c.create_channel("gq", "tmp").decode()
    out["publish"] = c.publish("gq", b"\x00bin\xffary\n").decode()
    out["mpub_text"] = c.multipublish("gq", [b"t1", b"t2\r", b"t3"]).decode()
    out["mpub_bin"] = c.multipublish("gq", [b"b\n1", b"b\n2"], binary=True).decode()
    out["publish_defer"] = c.publish("gq", b"deferred", defer=60000).decode()
    out["stats"] = c.stats(topic="gq")
    out["pause"] = c.pause_channel("gq", "tmp").decode()
    out["stats_paused"] = c.stats(topic="gq", channel="tmp")
    out["unpause"] = c.unpause_channel("gq", "tmp").decode()
    out["empty"] = c.empty_channel("gq", "tmp").decode()
    out["stats_after_empty"] = c.stats(topic="gq", channel="tmp")
    out["delete_channel"] = c.delete_channel("gq", "tmp").decode()
    out["text"] = c.stats(text=True).decode()
    try:
        c.delete_channel("gq", "tmp")
        out["delete_again"] = "no error"
    except NSQHttpError as e:
        out["delete_again"] = str(e)
    try:
        c.empty_topic("nope")
        out["empty_missing"] = "no error"
    except NSQHttpError as e:
        out["empty_missing"] = str(e)
    print(json.dumps(out))
""")


def run_gnsq(broker):
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(broker.http_port)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    return json.loads(p.stdout)


def test_gnsq_http_client_end_to_end(broker, tcp):
    """H4-H8, H14-H19, H23: gnsq's HTTP client drives every admin call it has; the
    messages it published arrive byte-exact over TCP."""
    out = run_gnsq(broker)
    assert out["ping"] == "OK"
    assert out["info"]["http_port"] == broker.http_port
    assert out["info"]["tcp_port"] == broker.tcp_port
    for k in ["create_topic", "create_channel", "create_channel2", "pause", "unpause",
              "empty", "delete_channel"]:
        assert out[k] == "", (k, out[k])
    for k in ["publish", "mpub_text", "mpub_bin", "publish_defer"]:
        assert out[k] == "OK", (k, out[k])

    [t] = out["stats"]["topics"]
    assert t["topic_name"] == "gq" and t["message_count"] == 7
    assert [c["channel_name"] for c in t["channels"]] == ["ch", "tmp"]
    ch = t["channels"][0]
    assert ch["depth"] == 6 and ch["deferred_count"] == 1 and ch["message_count"] == 7
    [tp] = out["stats_paused"]["topics"]
    assert [c["paused"] for c in tp["channels"]] == [True]
    [te] = out["stats_after_empty"]["topics"]
    assert te["channels"][0]["depth"] == 0 and te["channels"][0]["deferred_count"] == 0
    assert "Topics:" in out["text"] and "[gq             ]" in out["text"]
    assert "<404>" in out["delete_again"], out["delete_again"]
    assert "<404>" in out["empty_missing"], out["empty_missing"]

    doc = stats(broker)
    assert [c["channel_name"] for c in find_topic(doc, "gq")["channels"]] == ["ch"]
    c = tcp(broker).sub("gq", "ch", rdy=10)
    got = [m["body"] for m in c.read_messages(6)]
    assert got == [b"\x00bin\xffary\n", b"t1", b"t2\r", b"t3", b"b\n1", b"b\n2"]
    c.expect_nothing(0.3)  # the deferred one is still deferred
    assert find_channel(stats(broker), "gq", "ch")["deferred_count"] == 1
