"""Process behaviour: flags, config file, start-up errors, signals (C1-C6)."""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from helpers.broker import BIN, free_port
from helpers.http_api import post, stats
from helpers.wait import wait_for
from helpers.wire import Wire


def run(args, timeout=10):
    return subprocess.run([BIN, *args], capture_output=True, timeout=timeout)


def test_version_prints_nsqd_compatible_string():
    """--version prints a semver-parsable nsqd version and exits 0."""
    r = run(["--version"])
    assert r.returncode == 0
    assert r.stdout.decode().startswith("nsqd v1.3.0 (built w/ringsq ")


def test_unknown_flag_fails():
    r = run(["--no-such-flag=1"])
    assert r.returncode != 0


def test_too_many_cores_is_a_one_line_error():
    """Start-up errors are one line and exit code 1, never a panic."""
    r = run([f"--tcp-address=127.0.0.1:{free_port()}", "--cores=4096", f"--data-path={tempfile.mkdtemp()}"])
    assert r.returncode == 1
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    assert "--cores 4096 exceeds" in err
    assert "panicked" not in err


def test_bad_node_id_rejected():
    """C2: node-id must be in [0,1024)."""
    r = run(["--node-id=1024"])
    assert r.returncode == 1
    assert b"node-id" in r.stderr


def test_data_path_lock(brokers):
    """C6: a second instance on the same data path exits with nsqd's message."""
    b = brokers()
    r = run([f"--tcp-address=127.0.0.1:{free_port()}", f"--data-path={b.data_dir}"])
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"cannot flock directory {b.data_dir}" in err
    assert "(possibly in use by another instance of nsqd)" in err


def test_port_in_use_fails_instead_of_sharing(brokers):
    """SO_REUSEPORT must not let a second broker share a port silently."""
    b = brokers()
    r = run([f"--tcp-address={b.tcp_address}", f"--data-path={tempfile.mkdtemp()}"])
    assert r.returncode == 1
    assert b"listen" in r.stderr


def test_go_style_flags_and_config_file(tmp_path):
    """C1: single-dash flags, TOML config, command line wins over the file."""
    port = free_port()
    cfg = tmp_path / "nsqd.cfg"
    cfg.write_text(
        'tcp_address = "127.0.0.1:1"\n'
        "max_rdy_count = 50\n"
        'msg_timeout = "5s"\n'
    )
    proc = subprocess.Popen(
        [BIN, f"-config={cfg}", f"-tcp-address=127.0.0.1:{port}", f"-data-path={tmp_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening():
            assert proc.poll() is None, "ringsqd exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, what=f"ringsqd listening on {port}")
        w = Wire(f"127.0.0.1:{port}")
        w.cmd("IDENTIFY", b'{"feature_negotiation":true}')
        ftype, data = w.read_frame()
        assert ftype == 0
        assert b'"max_rdy_count":50' in data
        assert b'"msg_timeout":5000' in data
        w.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly_with_clients_connected(brokers, sig):
    """C4: SIGINT/SIGTERM close listeners and clients, then exit 0."""
    b = brokers(cores=2)
    clients = [Wire(b.tcp_address) for _ in range(6)]
    for i, c in enumerate(clients):
        c.cmd(f"PUB t{i}", b"x")
        assert c.read_frame() == (0, b"OK")
    sub = Wire(b.tcp_address)
    sub.cmd("SUB t0 ch")
    assert sub.read_frame() == (0, b"OK")
    start = time.time()
    b.proc.send_signal(sig)
    assert b.proc.wait(timeout=10) == 0
    assert time.time() - start < 6
    for c in clients + [sub]:
        assert c.is_closed(timeout=2)
    b.stop()


def test_metadata_survives_restart(brokers):
    """D1, D2, C3: topics, channels and paused flags are in nsqd.dat and come back."""
    b = brokers(cores=2)
    assert post(b, "/topic/create?topic=keep").status == 200
    assert post(b, "/channel/create?topic=keep&channel=c1").status == 200
    assert post(b, "/channel/pause?topic=keep&channel=c1").status == 200
    assert post(b, "/topic/create?topic=other").status == 200
    assert post(b, "/topic/pause?topic=other").status == 200
    assert post(b, "/topic/create?topic=gone%23ephemeral").status == 200
    data_dir = b.data_dir
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(timeout=10) == 0
    b.stop()
    with open(os.path.join(data_dir, "nsqd.dat")) as f:
        meta = json.load(f)
    assert meta == {
        "topics": [
            {"channels": [{"name": "c1", "paused": True}], "name": "keep", "paused": False},
            # D1: nsqd writes a topic with no channel as "channels":null
            {"channels": None, "name": "other", "paused": True},
        ],
        "version": "1.3.0",
    }
    b2 = brokers(cores=2, data_dir=data_dir)
    topics = {t["topic_name"]: t for t in stats(b2)["topics"]}
    assert set(topics) == {"keep", "other"}
    assert topics["other"]["paused"] is True
    assert [(c["channel_name"], c["paused"]) for c in topics["keep"]["channels"]] == [("c1", True)]


def test_loads_nsqd_written_metadata_and_skips_bad_names(brokers, tmp_path):
    """D1/D2: an nsqd.dat left by nsqd is taken over; invalid names are skipped."""
    (tmp_path / "nsqd.dat").write_text(json.dumps({
        "topics": [
            {"name": "orders", "paused": False, "channels": [
                {"name": "billing", "paused": False},
                {"name": "bad name", "paused": False},
            ]},
            {"name": "bad!topic", "paused": False, "channels": []},
        ],
        "version": "1.3.0",
    }))
    b = brokers(data_dir=str(tmp_path))
    topics = stats(b)["topics"]
    assert [t["topic_name"] for t in topics] == ["orders"]
    assert [c["channel_name"] for c in topics[0]["channels"]] == ["billing"]
    # A message published now reaches the restored channel (C3).
    w = Wire(b.tcp_address)
    w.cmd("PUB orders", b"after-restart")
    assert w.read_frame() == (0, b"OK")
    c = Wire(b.tcp_address)
    c.cmd("SUB orders billing")
    assert c.read_frame() == (0, b"OK")
    c.cmd("RDY 1")
    assert c.read_message()["body"] == b"after-restart"


def test_loads_nsqd_null_shapes(brokers, tmp_path):
    """D1: nsqd 1.3.0 writes "channels":null for a topic with no channel (and
    "topics":null with none); its loader also takes keys in any case and
    unknown keys. ringsqd starts on all of it."""
    (tmp_path / "nsqd.dat").write_text(
        '{"topics":[{"name":"lonely","paused":true,"channels":null},'
        '{"Name":"orders","channels":[{"name":"billing","paused":null,"x":1}],"future":2}],'
        '"version":"1.3.0"}'
    )
    b = brokers(data_dir=str(tmp_path))
    topics = {t["topic_name"]: t for t in stats(b)["topics"]}
    assert set(topics) == {"lonely", "orders"}
    assert topics["lonely"]["paused"] is True
    assert topics["lonely"]["channels"] == []
    assert [(c["channel_name"], c["paused"]) for c in topics["orders"]["channels"]] == [("billing", False)]
    b.stop()
    (tmp_path / "nsqd.dat").write_text('{"topics":null,"version":"1.3.0"}')
    b = brokers(data_dir=str(tmp_path))
    assert stats(b)["topics"] == []


def test_empty_metadata_is_nsqds_error(tmp_path):
    """D2: an empty nsqd.dat is fatal with nsqd's message."""
    (tmp_path / "nsqd.dat").write_text("")
    r = run([f"--tcp-address=127.0.0.1:{free_port()}", "--http-address=", f"--data-path={tmp_path}"])
    assert r.returncode == 1
    expected = f"failed to parse metadata in {tmp_path / 'nsqd.dat'} - unexpected end of JSON input"
    assert expected.encode() in r.stderr


def test_corrupt_metadata_is_a_clean_error(tmp_path):
    """An unparseable nsqd.dat stops start-up with a one-line error (nsqd is fatal too)."""
    (tmp_path / "nsqd.dat").write_text("{not json")
    r = run([f"--tcp-address=127.0.0.1:{free_port()}", "--http-address=", f"--data-path={tmp_path}"])
    assert r.returncode == 1
    assert b"failed to parse metadata" in r.stderr
    assert b"panicked" not in r.stderr


class UnixWire(Wire):
    """The raw protocol over a unix socket."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.timeout = 5.0
        self.sock.settimeout(self.timeout)
        self.sock.connect(path)
        self.buf = b""
        self.sock.sendall(b"  V2")


def _unix_http_get(path, url):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


@pytest.mark.parametrize("cores", [1, 2])
def test_unix_socket_listeners(tmp_path, cores):
    """T1, H1: an address that is not host:port is a unix socket path."""
    tcp_sock = str(tmp_path / "nsqd.sock")
    http_sock = str(tmp_path / "http.sock")
    proc = subprocess.Popen(
        [BIN, f"--tcp-address={tcp_sock}", f"--http-address={http_sock}",
         f"--data-path={tmp_path}", f"--cores={cores}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:

        def listening():
            assert proc.poll() is None, proc.stderr.read()
            return os.path.exists(tcp_sock) and os.path.exists(http_sock)

        wait_for(listening, what="both unix sockets")
        # Topics on every core, so that consumers move between cores.
        topics = [f"u{i}" for i in range(6)]
        pub = UnixWire(tcp_sock)
        for t in topics:
            pub.cmd(f"PUB {t}", f"over-unix-{t}".encode())
            assert pub.read_frame() == (0, b"OK")
        for t in topics:
            c = UnixWire(tcp_sock)
            c.cmd("IDENTIFY", b'{"heartbeat_interval": 1000}')
            assert c.read_frame() == (0, b"OK")
            c.cmd(f"SUB {t} ch")
            assert c.read_frame() == (0, b"OK")
            c.cmd("RDY 1")
            m = c.read_message()
            assert m["body"] == f"over-unix-{t}".encode()
            c.cmd(b"FIN " + m["id"])
            c.cmd("NOP")
            c.close()
        status, body = _unix_http_get(http_sock, "/info")
        assert status == b"HTTP/1.1 200 OK"
        info = json.loads(body)
        assert info["tcp_port"] == -1 and info["http_port"] == -1
        status, body = _unix_http_get(http_sock, "/stats?format=json")
        stats = json.loads(body)
        assert sorted(t["topic_name"] for t in stats["topics"]) == topics
        assert all(t["channels"][0]["depth"] == 0 for t in stats["topics"])
        # The read deadline (2 x heartbeat) holds on unix sockets too.
        idle = UnixWire(tcp_sock)
        idle.cmd("IDENTIFY", b'{"heartbeat_interval": 1000}')
        assert idle.read_frame() == (0, b"OK")
        start = time.time()
        assert idle.is_closed(timeout=5)
        assert time.time() - start < 4.5
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    # Removed at exit, as Go's unix listener does, so a restart can bind.
    assert not os.path.exists(tcp_sock) and not os.path.exists(http_sock)
