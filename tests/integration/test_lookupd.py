"""nsqlookupd integration (reference L1-L7, Q16): ringsqd identifies itself to
every `--lookupd-tcp-address`, registers its topics and channels as they come and
go, re-registers everything on a new connection, follows PUT
/config/nsqlookupd_tcp_addresses, creates the channels nsqlookupd knows for a new
topic before its first message moves on, and a pynsq Reader that only knows the
lookupd finds the broker through it and gets every message.

No nsqlookupd package installs here, so the peer is `lookupd_stub.LookupdStub` (the
V1 protocol and /lookup as nsqlookupd 1.3 speaks them). With NSQLOOKUPD_BIN set to a
real nsqlookupd binary, the last test runs the discovery path against it too.
"""

import json
import os
import socket
import subprocess
import time

import pytest

from helpers.broker import free_port
from helpers.clients import Collector, PynsqLoop
from helpers.http_api import post_ok, request
from helpers.wait import wait_for
from helpers.wire import Wire
from lookupd_stub import LookupdStub


@pytest.fixture
def stub():
    s = LookupdStub()
    yield s
    s.close()


def start(brokers, stub=None, args=(), **kw):
    extra = ["--broadcast-address=127.0.0.1"]
    if stub is not None:
        extra.append(f"--lookupd-tcp-address={stub.tcp_address}")
    kw.setdefault("cores", 2)
    return brokers(args=extra + list(args), **kw)


def wait_peer(stub, index=0, timeout=5.0):
    """The index-th connection the stub accepted, once it has identified."""
    def ready():
        peers = stub.all_peers()
        return len(peers) > index and peers[index].identify is not None

    wait_for(ready, timeout=timeout, what=f"lookupd connection #{index + 1} identified")
    return stub.all_peers()[index]


def wait_command(stub, peer, text, timeout=5.0):
    wait_for(lambda: text in stub.commands(peer), timeout=timeout, what=repr(text))


def test_identify_then_register_and_unregister_as_things_change(brokers, stub):
    """L2/L3: magic, then IDENTIFY with version, broadcast ports and address, hostname.
    L5: topic and channel creation (HTTP, PUB, SUB) send REGISTER, deletion
    UNREGISTER (a deleted topic: the topic, then each channel), ephemeral channels
    included; every command gets its OK (the stub answers, the broker goes on)."""
    b = start(brokers, stub)
    peer = wait_peer(stub)
    assert peer.commands[0] == "IDENTIFY"
    assert peer.identify == {
        "version": "1.3.0",
        "tcp_port": b.tcp_port,
        "http_port": b.http_port,
        "hostname": socket.gethostname(),
        "broadcast_address": "127.0.0.1",
    }

    post_ok(b, "/topic/create?topic=alpha")
    wait_command(stub, peer, "REGISTER alpha")
    post_ok(b, "/channel/create?topic=alpha&channel=c1")
    wait_command(stub, peer, "REGISTER alpha c1")

    p = Wire(b.tcp_address)
    p.cmd(b"PUB beta", b"x")
    assert p.read_frame() == (0, b"OK")
    wait_command(stub, peer, "REGISTER beta")
    s = Wire(b.tcp_address)
    s.cmd(b"SUB beta tmp#ephemeral")
    assert s.read_frame() == (0, b"OK")
    wait_command(stub, peer, "REGISTER beta tmp#ephemeral")
    s.close()
    wait_command(stub, peer, "UNREGISTER beta tmp#ephemeral")

    post_ok(b, "/channel/create?topic=beta&channel=keep")
    wait_command(stub, peer, "REGISTER beta keep")
    post_ok(b, "/channel/delete?topic=alpha&channel=c1")
    wait_command(stub, peer, "UNREGISTER alpha c1")
    post_ok(b, "/topic/delete?topic=beta")
    wait_command(stub, peer, "UNREGISTER beta keep")
    cmds = stub.commands(peer)
    assert cmds.index("UNREGISTER beta") < cmds.index("UNREGISTER beta keep"), cmds
    p.close()

    # nothing else was sent, and one connection did it all
    assert set(cmds) == {
        "IDENTIFY", "REGISTER alpha", "REGISTER alpha c1", "REGISTER beta",
        "REGISTER beta tmp#ephemeral", "UNREGISTER beta tmp#ephemeral",
        "REGISTER beta keep", "UNREGISTER alpha c1", "UNREGISTER beta",
        "UNREGISTER beta keep",
    }, cmds
    assert len(stub.all_peers()) == 1


def test_a_restarted_broker_registers_what_it_restored(brokers, stub):
    """L4: after IDENTIFY, a topic without channels is registered alone and every
    channel of the others, from what nsqd.dat and the disk restored. A clean stop
    closes the connection (nsqlookupd then forgets the producer)."""
    b = start(brokers, cores=2)
    post_ok(b, "/topic/create?topic=lonely")
    post_ok(b, "/topic/create?topic=busy")
    post_ok(b, "/channel/create?topic=busy&channel=c1")
    post_ok(b, "/channel/create?topic=busy&channel=c2")
    assert b.stop() == 0

    b = start(brokers, stub, data_dir=b.data_dir, cores=2)
    peer = wait_peer(stub)
    want = {"REGISTER lonely", "REGISTER busy c1", "REGISTER busy c2"}
    wait_for(lambda: want <= set(stub.commands(peer)), what=f"{want}")
    cmds = stub.commands(peer)
    assert cmds[0] == "IDENTIFY", cmds
    assert not [c for c in cmds if c.startswith("UNREGISTER")], cmds
    assert b.stop() == 0
    assert peer.closed.wait(5), "the lookupd connection outlived the broker"


def test_a_dropped_lookupd_connection_is_remade_with_everything_registered(brokers, stub):
    """L6: when nsqlookupd goes away (its connections close), the command that
    finds out fails and closes; a later one reconnects, identifies again and
    registers every topic and channel, including those created meanwhile."""
    b = start(brokers, stub)
    first = wait_peer(stub)
    post_ok(b, "/topic/create?topic=before")
    post_ok(b, "/channel/create?topic=before&channel=c")
    wait_command(stub, first, "REGISTER before c")
    stub.drop_all()

    created = []
    for i in range(10):
        created.append(f"during{i}")
        post_ok(b, f"/topic/create?topic=during{i}")
        time.sleep(0.1)
        if len(stub.all_peers()) > 1:
            break
    second = wait_peer(stub, index=1)
    want = {"REGISTER before c"} | {f"REGISTER {t}" for t in created}
    wait_for(lambda: want <= set(stub.commands(second)), what=f"{want}")
    assert stub.commands(second)[0] == "IDENTIFY"
    assert b.alive()


def registered_again(stub, want, skip, since, within=3.0):
    """A connection after the first `skip` that sent IDENTIFY first and then every
    command in `want`, within `within` s of `since`; returns its commands."""
    def found():
        for p in stub.all_peers()[skip:]:
            cmds = stub.commands(p)
            if cmds and cmds[0] == "IDENTIFY" and want <= set(cmds):
                return cmds
        return None

    cmds = wait_for(found, timeout=max(0.0, since + within - time.monotonic()),
                    interval=0.02, what=f"IDENTIFY then {sorted(want)}")
    return cmds


def test_a_restarted_lookupd_gets_everything_again_within_3s(brokers, stub):
    """Issue 12 item 4, L3/L4/L6: nsqlookupd stops for 3 s and comes back on the
    same port. The broker notices the closed connection at once, dials again with
    a short back-off, and within 3 s of the lookupd listening again sends IDENTIFY
    first and a REGISTER for every topic and channel as they are now: what was
    created and deleted while the lookupd was down included (nothing lost, nothing
    stale), and no command for a deleted one."""
    b = start(brokers, stub, cores=2)
    for t in ("a", "b", "c"):
        post_ok(b, f"/topic/create?topic={t}")
    post_ok(b, "/channel/create?topic=a&channel=a1")
    post_ok(b, "/channel/create?topic=a&channel=a2")
    post_ok(b, "/channel/create?topic=b&channel=b1")
    first = wait_peer(stub)
    wait_command(stub, first, "REGISTER b b1")
    ports = (stub.tcp_port, stub.http_port)
    stub.close()

    post_ok(b, "/topic/create?topic=while_down")
    post_ok(b, "/channel/delete?topic=a&channel=a2")
    post_ok(b, "/topic/delete?topic=c")
    time.sleep(3)  # the outage itself; the back-off grows meanwhile
    back = LookupdStub(*ports)
    try:
        since = time.monotonic()
        cmds = registered_again(back, {"REGISTER a a1", "REGISTER b b1",
                                       "REGISTER while_down"}, 0, since)
        assert cmds.count("IDENTIFY") == 1, cmds
        assert not [c for c in cmds if c.endswith((" a2", " c")) or "UNREGISTER" in c], cmds
        assert b.alive()
    finally:
        back.close()


def test_a_lookupd_down_at_start_gets_everything_within_3s_of_coming_up(brokers):
    """A lookupd that is not listening when the broker starts (connection refused,
    retried with back-off) gets IDENTIFY and every REGISTER within 3 s of coming up."""
    tcp_port = free_port()
    b = start(brokers, args=[f"--lookupd-tcp-address=127.0.0.1:{tcp_port}"])
    post_ok(b, "/topic/create?topic=early")
    post_ok(b, "/channel/create?topic=early&channel=e1")
    post_ok(b, "/topic/create?topic=alone")
    time.sleep(3)  # the lookupd stays down a while; the back-off grows meanwhile
    late = LookupdStub(tcp_port=tcp_port)
    try:
        registered_again(late, {"REGISTER early e1", "REGISTER alone"}, 0, time.monotonic())
    finally:
        late.close()


def test_a_lookupd_closing_an_idle_connection_is_redialled_at_once(brokers, stub):
    """A lookupd that closes the connection while nothing is being sent: the broker
    sees the EOF on the idle socket (not only at the next PING, 15 s later), dials
    again and registers everything on the new connection within 3 s."""
    b = start(brokers, stub)
    post_ok(b, "/topic/create?topic=idle")
    post_ok(b, "/channel/create?topic=idle&channel=i1")
    first = wait_peer(stub)
    wait_command(stub, first, "REGISTER idle i1")
    since = time.monotonic()
    stub.drop_all()
    cmds = registered_again(stub, {"REGISTER idle i1"}, 1, since)
    assert "PING" not in cmds, cmds
    assert len(stub.live_peers()) == 1


def test_stop_is_prompt_while_a_lookupd_never_answers(brokers):
    """A lookupd that accepts connections but never answers (each IDENTIFY times
    out after 1 s, then back-off and a new dial): SIGTERM still stops the broker
    cleanly at once, without waiting on a dial, a deadline or a back-off timer."""
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(64)  # never accepted: the kernel completes the handshakes
    try:
        b = start(brokers, args=["--lookupd-tcp-address=127.0.0.1:%d" % mute.getsockname()[1]])
        post_ok(b, "/topic/create?topic=t")
        time.sleep(1.5)  # let an IDENTIFY time out and a retry be pending
        t0 = time.monotonic()
        assert b.stop() == 0
        assert time.monotonic() - t0 < 1.0
    finally:
        mute.close()


def test_put_config_lookupd_addresses_adds_and_removes_peers(brokers, stub):
    """L1: PUT /config/nsqlookupd_tcp_addresses connects to a new peer right away
    (identify, register what exists) and closes the connection to a removed one."""
    b = start(brokers)
    post_ok(b, "/topic/create?topic=t")
    post_ok(b, "/channel/create?topic=t&channel=c")
    r = request(b, "PUT", "/config/nsqlookupd_tcp_addresses",
                body=json.dumps([stub.tcp_address]).encode())
    status, body = r.status, r.body
    assert status == 200, body
    assert json.loads(body) == [stub.tcp_address]
    peer = wait_peer(stub)
    wait_command(stub, peer, "REGISTER t c")

    r = request(b, "PUT", "/config/nsqlookupd_tcp_addresses", body=b"[]")
    status, body = r.status, r.body
    assert status == 200 and json.loads(body) == [], (status, body)
    assert peer.closed.wait(5), "the removed peer's connection stayed open"


def test_a_lookupd_named_by_host_name_is_reached(brokers, stub):
    """L1: `localhost:PORT` is dialled at each address the name resolves to, so an
    nsqlookupd listening on 127.0.0.1 is reached even where localhost is ::1 first."""
    port = stub.tcp_address.rsplit(":", 1)[1]
    b = start(brokers, args=[f"--lookupd-tcp-address=localhost:{port}"])
    peer = wait_peer(stub)
    post_ok(b, "/topic/create?topic=named")
    wait_command(stub, peer, "REGISTER named")


def test_an_unreachable_lookupd_never_blocks_the_broker(brokers):
    """L1: a peer that refuses connections costs a logged error per command and
    nothing else: publishing and consuming work."""
    dead = f"127.0.0.1:{free_port()}"
    b = start(brokers, args=[f"--lookupd-tcp-address={dead}"])
    p = Wire(b.tcp_address)
    c = Wire(b.tcp_address)
    c.cmd(b"SUB t c")
    assert c.read_frame() == (0, b"OK")
    c.cmd(b"RDY 10")
    for i in range(5):
        p.cmd(b"PUB t", b"m%d" % i)
        assert p.read_frame() == (0, b"OK")
    assert [c.read_message()["body"] for _ in range(5)] == [b"m%d" % i for i in range(5)]
    p.close()
    c.close()


def wait_lookupd_known(b, stub):
    """Once a REGISTER made after the connection arrived, the broker has taken in
    the lookupd's IDENTIFY answer (its HTTP address, for L7)."""
    peer = wait_peer(stub)
    post_ok(b, "/topic/create?topic=marker")
    wait_command(stub, peer, "REGISTER marker")
    return peer


def consume(b, topic, channel, n):
    c = Wire(b.tcp_address, timeout=10)
    c.cmd(f"SUB {topic} {channel}".encode())
    assert c.read_frame() == (0, b"OK")
    c.cmd(b"RDY %d" % n)
    got = []
    for _ in range(n):
        m = c.read_message()
        got.append(m["body"])
        c.cmd(b"FIN " + m["id"])
    c.close()
    return got


def channel_names(b, topic):
    r = request(b, "GET", f"/stats?format=json&topic={topic}")
    status, body = r.status, r.body
    assert status == 200, body
    topics = json.loads(body)["topics"]
    return sorted(c["channel_name"] for t in topics for c in t["channels"])


def test_a_new_topic_gets_the_channels_lookupd_knows_before_its_first_message(brokers, stub):
    """L7/Q16: the first PUB creates the topic; it asks the lookupd's /channels,
    creates `a` and `b` (not the ephemeral one), and only then moves messages, so
    both channels get all 10 messages although nobody subscribed before."""
    stub.seed_channels("fresh", ["a", "b", "gone#ephemeral"])
    b = start(brokers, stub)
    wait_lookupd_known(b, stub)
    p = Wire(b.tcp_address)
    bodies = [b"fresh %d" % i for i in range(10)]
    for body in bodies:
        p.cmd(b"PUB fresh", body)
        assert p.read_frame() == (0, b"OK")
    p.close()
    wait_for(lambda: channel_names(b, "fresh") == ["a", "b"], what="channels a and b")
    assert stub.channel_queries.count("fresh") == 1
    assert consume(b, "fresh", "a", 10) == bodies
    assert consume(b, "fresh", "b", 10) == bodies


def test_a_failed_channel_query_releases_the_topic(brokers, stub):
    """L7: a lookupd answering 500 is logged and skipped; the topic does not stay
    held: the first subscriber gets what was published."""
    stub.fail_channels("unlucky")
    b = start(brokers, stub)
    wait_lookupd_known(b, stub)
    p = Wire(b.tcp_address)
    p.cmd(b"PUB unlucky", b"still delivered")
    assert p.read_frame() == (0, b"OK")
    p.close()
    wait_for(lambda: "unlucky" in stub.channel_queries, what="the /channels query")
    assert consume(b, "unlucky", "c", 1) == [b"still delivered"]
    assert channel_names(b, "unlucky") == ["c"]


def discover_and_consume(b, lookupd_http, topic):
    """A pynsq Reader given only the lookupd HTTP address gets 200 messages
    published before it started, byte for byte, once each."""
    bodies = [b"lookup %03d " % i + bytes(range(256)) for i in range(200)]
    p = Wire(b.tcp_address)
    for i in range(0, 200, 50):
        payload = b"".join(len(x).to_bytes(4, "big") + x for x in bodies[i:i + 50])
        p.cmd(f"MPUB {topic}".encode(), (50).to_bytes(4, "big") + payload)
        assert p.read_frame() == (0, b"OK")
    p.close()
    loop = PynsqLoop()
    try:
        got = Collector()
        import nsq
        r = nsq.Reader(topic=topic, channel="found", message_handler=got,
                       lookupd_http_addresses=[f"http://{lookupd_http}"],
                       lookupd_poll_interval=1, max_in_flight=50)
        loop.clients.append(r)
        assert loop.run_until(lambda: len(got.got) >= 200, 20), f"{len(got.got)} of 200"
        loop.sleep(0.3)
        assert sorted(got.bodies) == sorted(bodies)
        assert len(got.got) == 200
    finally:
        loop.close()


def test_a_pynsq_reader_finds_the_broker_through_lookupd(brokers, stub):
    """The point of L1-L6: consumers that only know nsqlookupd (pynsq 0.9.1 with
    lookupd_http_addresses) find ringsqd at its broadcast address and consume."""
    b = start(brokers, stub)
    discover_and_consume(b, stub.http_address, "discovered")


@pytest.mark.skipif(not os.environ.get("NSQLOOKUPD_BIN"),
                    reason="set NSQLOOKUPD_BIN to a real nsqlookupd to run this")
def test_with_a_real_nsqlookupd(brokers):
    """The same discovery against a real nsqlookupd: /lookup lists ringsqd as the
    producer with its ports and version, and pynsq consumes through it."""
    tcp, http = free_port(), free_port()
    proc = subprocess.Popen([os.environ["NSQLOOKUPD_BIN"], f"--tcp-address=127.0.0.1:{tcp}",
                             f"--http-address=127.0.0.1:{http}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        b = start(brokers, args=[f"--lookupd-tcp-address=127.0.0.1:{tcp}"])
        post_ok(b, "/topic/create?topic=real")
        lookupd = type("L", (), {"http_port": http})()

        def producers():
            r = request(lookupd, "GET", "/lookup?topic=real")
            status, body = r.status, r.body
            return status == 200 and json.loads(body)["producers"]

        wait_for(producers, what="ringsqd listed by nsqlookupd")
        (prod,) = producers()
        assert (prod["broadcast_address"], prod["tcp_port"], prod["http_port"],
                prod["version"]) == ("127.0.0.1", b.tcp_port, b.http_port, "1.3.0")
        discover_and_consume(b, f"127.0.0.1:{http}", "real")
    finally:
        proc.terminate()
        proc.wait(5)
