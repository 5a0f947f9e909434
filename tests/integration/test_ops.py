"""What an operator sees: log lines (C5, issue 12 item 6), flags that do
nothing yet, systemd readiness (item 7), nsqd's example config (C1)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import tomllib
import urllib.request
from pathlib import Path

import pytest

from helpers.broker import BIN, ROOT, free_port
from helpers.wait import wait_for

NSQD_EXAMPLE = ROOT / "tests" / "data" / "nsqd.cfg.example"
DEPLOY_CFG = ROOT / "deploy" / "ringsqd.cfg"
INERT = [
    "--queue-scan-worker-pool-max",
    "--queue-scan-selection-count",
]
# C5: Go's log.Ldate|log.Ltime|log.Lmicroseconds, then nsqd's level.
NSQD_LINE = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} (DEBUG|INFO|WARNING|ERROR): "


def http(b, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{b.http_port}{path}", data=body, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, r.read()


# ---------------------------------------------------------------- --log-prefix (C5)


def test_every_line_starts_with_nsqd_prefix_by_default(brokers):
    b = brokers(args=["--queue-scan-selection-count=7"])  # also logs a WARNING
    http(b, "POST", "/pub?topic=t", b"x")
    assert b.stop() == 0
    lines = b.log().splitlines()
    assert len(lines) >= 5, lines
    for line in lines:
        assert re.match(r"\[nsqd\] " + NSQD_LINE, line), line
    assert any(" WARNING: " in line for line in lines)


def test_log_prefix_flag_and_config_key(brokers, tmp_path):
    b = brokers(args=["--log-prefix=<ringsq-test> "])
    assert b.stop() == 0
    lines = b.log().splitlines()
    assert lines
    for line in lines:
        assert re.match(re.escape("<ringsq-test> ") + NSQD_LINE, line), line

    cfg = tmp_path / "prefix.cfg"
    cfg.write_text('log_prefix = "[from-file] "\n')
    b = brokers(args=[f"--config={cfg}"])
    assert b.stop() == 0
    for line in b.log().splitlines():
        assert line.startswith("[from-file] "), line


def test_empty_log_prefix(brokers):
    b = brokers(args=["--log-prefix="])
    assert b.stop() == 0
    for line in b.log().splitlines():
        assert re.match(NSQD_LINE, line), line


# ---------------------------------------------------------------- flags not yet in effect


def help_entries():
    """`--flag` -> its help text, from `ringsqd --help`."""
    r = subprocess.run([BIN, "--help"], capture_output=True, timeout=10)
    assert r.returncode == 0
    entries, current = {}, None
    for line in r.stdout.decode().splitlines():
        m = re.match(r"\s+(--[a-z0-9-]+)", line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif current:
            entries[current] += " " + line.strip()
    return entries


def test_help_says_which_flags_do_nothing_yet():
    entries = help_entries()
    marked = sorted(f for f, text in entries.items() if "[accepted, not yet in effect]" in text)
    assert marked == sorted(INERT)


def test_startup_warns_once_about_inert_flags_that_are_set(brokers):
    b = brokers(
        args=[
            "--queue-scan-selection-count=7",
            "--tls-min-version=",  # empty: nothing that would change
            "--queue-scan-worker-pool-max=4",  # nsqd's default
        ]
    )
    assert b.stop() == 0
    warned = [line for line in b.log().splitlines() if "not yet in effect" in line]
    assert len(warned) == 1, warned
    assert warned[0].endswith(
        "WARNING: accepted but not yet in effect, ignored: --queue-scan-selection-count"
    ), warned


def test_no_inert_warning_with_defaults(brokers):
    b = brokers()
    assert b.stop() == 0
    assert "not yet in effect" not in b.log()


# ---------------------------------------------------------------- start and stop lines (item 6)


def started_line(b):
    wait_for(lambda: " started: data path " in b.log(), what="the start-up line")
    lines = [line for line in b.log().splitlines() if " started: data path " in line]
    assert len(lines) == 1, b.log()
    return lines[0]


def test_start_and_stop_lines_report_queues_and_messages(brokers):
    data = tempfile.mkdtemp(prefix="ringsq-ops-")
    b = brokers(data_dir=data)
    line = started_line(b)
    assert f"ringsq 0.1.0 (speaks nsqd 1.3.0) started: data path {data}, " in line
    assert "0 topic(s) and 0 channel(s) opened holding 0 message(s)" in line
    assert re.search(r"limits: memlock (\d+ KiB|unlimited)[^,]*, open files (\d+|unlimited), ", line), line
    cores = int(re.search(r", (\d+) core\(s\), ", line).group(1))
    assert cores >= 1

    http(b, "POST", "/topic/create?topic=a")
    http(b, "POST", "/channel/create?topic=a&channel=c1")
    http(b, "POST", "/channel/create?topic=a&channel=c2")
    http(b, "POST", "/topic/create?topic=b")
    for i in range(5):
        http(b, "POST", "/pub?topic=a", b"a%d" % i)
    for i in range(3):
        http(b, "POST", "/pub?topic=b", b"b%d" % i)
    http(b, "POST", "/pub?topic=a&defer=600000", b"later")  # deferred in c1 and c2
    assert b.stop() == 0
    lines = b.log().splitlines()
    wrote = [line for line in lines if "INFO: wrote to disk: " in line]
    assert len(wrote) == 1, lines
    # 5 + 1 deferred in each of a's channels, 3 in b: all in memory until the stop;
    # 4 queues: topics a and b, channels a:c1 and a:c2.
    assert wrote[0].endswith(
        "wrote to disk: 15 message(s) from memory, in flight and deferred; "
        "4 queue(s) closed holding 15 message(s); nsqd.dat written (2 topic(s), 2 channel(s))"
    ), wrote
    assert re.search(r"INFO: ringsqd stopped cleanly in \d+ ms$", lines[-1]), lines[-1]

    b2 = brokers(data_dir=data, args=["--log-level=debug"])
    line = started_line(b2)
    assert "2 topic(s) and 2 channel(s) opened holding 15 message(s)" in line
    log = b2.log()
    assert re.search(r"DEBUG: opened channel core=\d+ topic=a channel=c1 depth=5 in_flight=0 deferred=1$", log, re.M), log
    assert re.search(r"DEBUG: opened topic core=\d+ topic=b depth=3$", log, re.M), log
    # At info, the queues are one line, not one per queue.
    assert b2.stop() == 0
    b3 = brokers(data_dir=data)
    started_line(b3)
    assert "opened" not in b3.log().replace(" opened holding ", ""), b3.log()


# ---------------------------------------------------------------- --log-format=json


def test_json_log_lines_parse(brokers):
    b = brokers(args=["--log-format=json", "--queue-scan-selection-count=7"])
    http(b, "POST", "/pub?topic=t", b"x")
    assert b.stop() == 0
    lines = b.log().splitlines()
    objs = [json.loads(line) for line in lines]  # every line is one object
    assert all({"timestamp", "level", "message"} <= o.keys() for o in objs), objs
    messages = [o["message"] for o in objs]
    assert any(" started: data path " in m for m in messages), messages
    assert {"level": "WARN", "message": "accepted but not yet in effect, ignored: --queue-scan-selection-count"}.items() <= next(
        o for o in objs if "not yet in effect" in o["message"]
    ).items()
    assert re.fullmatch(r"ringsqd stopped cleanly in \d+ ms", objs[-1]["message"]), objs[-1]


def test_startup_error_is_one_prefixed_line():
    r = subprocess.run(
        [BIN, f"--tcp-address=127.0.0.1:{free_port()}", "--cores=4096", f"--data-path={tempfile.mkdtemp()}"],
        capture_output=True,
        timeout=10,
    )
    assert r.returncode == 1
    err = r.stderr.decode().splitlines()
    assert len(err) == 1, err
    assert re.match(r"\[nsqd\] " + NSQD_LINE.replace("(DEBUG|INFO|WARNING|ERROR)", "ERROR"), err[0]), err
    assert "ERROR: --cores 4096 exceeds the " in err[0], err


# ---------------------------------------------------------------- memlock warning


def can_switch_user():
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("prlimit"):
        return False
    r = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "test", "-x", BIN],
        capture_output=True,
    )
    return r.returncode == 0


@pytest.mark.skipif(not can_switch_user(), reason="needs root, setpriv, prlimit and a binary user nobody can run")
def test_memlock_too_small_is_one_warning_line():
    """io_uring's locked memory is counted per user: a first broker of user
    nobody takes most of an 8 MiB limit (its one core registers 3 x 2.3 MiB),
    so the second cannot register its buffers. glommio's multi-line dump per
    ring becomes one line."""
    procs, dirs = [], []
    try:
        for _ in range(2):
            d = tempfile.mkdtemp(prefix="ringsq-memlock-")
            os.chmod(d, 0o777)
            dirs.append(d)
            log = open(os.path.join(d, "log"), "wb")
            procs.append(
                subprocess.Popen(
                    [
                        "prlimit", "--memlock=8388608:8388608",
                        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        BIN, f"--tcp-address=127.0.0.1:{free_port()}", "--http-address=",
                        f"--data-path={d}", "--cores=1",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            path = os.path.join(d, "log")
            wait_for(lambda: " started: data path " in Path(path).read_text(), what="start-up line")
        second = Path(dirs[1], "log").read_text()
        warned = [line for line in second.splitlines() if "WARNING" in line]
        assert len(warned) == 1, second
        assert "locked memory limit (8192 KiB" in warned[0]
        assert "too small for io_uring registered buffers on 1 core(s)" in warned[0]
        assert "`ulimit -l unlimited`" in warned[0] and "LimitMEMLOCK=infinity" in warned[0]
        assert "registering buffers" not in second and "SkippingOs" not in second
        assert "memlock 8192 KiB," in second
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- systemd readiness (item 7)


class Notify:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, abstract):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"ringsq-test-notify-{os.getpid()}-{free_port()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="ringsq-notify-")
            self.env = os.path.join(self.dir, "notify.sock")
            self.sock.bind(self.env)

    def recv(self, timeout=10.0):
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_after_listeners_then_stopping(abstract):
    n = Notify(abstract)
    tcp, http_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="ringsq-notify-data-")
    proc = subprocess.Popen(
        [BIN, f"--tcp-address=127.0.0.1:{tcp}", f"--http-address=127.0.0.1:{http_port}", f"--data-path={data}"],
        env={**os.environ, "NOTIFY_SOCKET": n.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first = n.recv()
        # Both listeners accept at the moment READY=1 arrives.
        assert accepts(tcp) and accepts(http_port)
        assert first.splitlines() == ["READY=1", "STATUS=serving"], first
        proc.send_signal(signal.SIGTERM)
        second = n.recv()
        assert second.splitlines()[0] == "STOPPING=1", second
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        n.sock.close()
        shutil.rmtree(data, ignore_errors=True)


def test_no_notify_socket_no_error(brokers):
    os.environ.pop("NOTIFY_SOCKET", None)
    b = brokers()
    assert b.stop() == 0
    assert "cannot notify systemd" not in b.log()


# ---------------------------------------------------------------- nsqd's example config (C1)


def config_value(b, key):
    status, body = http(b, "GET", f"/config/{key}")
    assert status == 200
    try:
        return json.loads(body)
    except ValueError:
        return body.decode()


GO_UNITS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def expected(key, value):
    """What GET /config/<key> answers for a config value (nsqd's types)."""
    if key == "log_level":
        return {"debug": 1, "info": 2, "warn": 3, "error": 4, "fatal": 5}[value]
    if key == "tls_required":
        return 0 if value is False else value
    if isinstance(value, str):
        m = re.fullmatch(r"(\d+)(ms|s|m|h)", value)
        if m:
            return int(m.group(1)) * GO_UNITS[m.group(2)]
    return value


def test_nsqd_example_config_loads_unchanged(brokers):
    """contrib/nsqd.cfg.example's keys and values (our copy) start ringsqd,
    and every value is in effect; only the ports and data path are flags."""
    cfg = tomllib.loads(NSQD_EXAMPLE.read_text())
    b = brokers(args=[f"--config={NSQD_EXAMPLE}"])
    assert "not yet in effect" not in b.log()
    checked = 0
    for key, value in cfg.items():
        if key in ("tcp_address", "http_address", "tls_min_version"):
            continue  # overridden by flags; tls_min_version "" is nsqd's default
        assert config_value(b, key) == expected(key, value), key
        checked += 1
    assert checked == len(cfg) - 3
    assert config_value(b, "max_msg_size") == 1024768  # not the default 1048576
    assert b.stop() == 0


def test_deploy_sample_config_loads(brokers):
    """deploy/ringsqd.cfg is nsqd's example plus ringsq's keys: the same
    values are in effect and ringsq's keys are read."""
    cfg = tomllib.loads(DEPLOY_CFG.read_text())
    nsqd = tomllib.loads(NSQD_EXAMPLE.read_text())
    extra = set(cfg) - set(nsqd)
    assert extra == {"data_path", "spin_before_park", "log_format"}, extra
    assert all(cfg[k] == v for k, v in nsqd.items()), "nsqd's values changed"
    b = brokers(args=[f"--config={DEPLOY_CFG}"])  # --data-path flag wins over /var/lib/nsq
    assert config_value(b, "data_path") == b.data_dir
    assert config_value(b, "max_body_size") == 5123840
    assert b.stop() == 0
    assert re.match(r"\[nsqd\] " + NSQD_LINE, b.log().splitlines()[-1])


@pytest.mark.skipif(not os.environ.get("NSQD_BIN"), reason="set NSQD_BIN to a real nsqd 1.3.0 (shared/tools/build-reference.sh)")
def test_real_nsqd_reads_deploy_config(tmp_path):
    """The way back: nsqd 1.3.0 starts on deploy/ringsqd.cfg unchanged (it
    ignores ringsq's keys) and applies its values."""
    tcp, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            os.environ["NSQD_BIN"], f"--config={DEPLOY_CFG}", f"--data-path={tmp_path}",
            f"--tcp-address=127.0.0.1:{tcp}", f"--http-address=127.0.0.1:{http_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: accepts(http_port), what="nsqd's HTTP listener")
        url = f"http://127.0.0.1:{http_port}/config/max_body_size"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert json.loads(r.read()) == 5123840
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
