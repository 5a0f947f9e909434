"""`Broker`: the real ringsqd binary on free loopback ports, the one process wrapper
every test and script uses.

The binary is taken from $RINGSQD_BIN, else target/release/ringsqd.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BIN = os.environ.get("RINGSQD_BIN", str(ROOT / "target" / "release" / "ringsqd"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A running ringsqd process.

    - `args`: extra flags; `cores`: --cores (None: every CPU); `env`: variables added
      to this process's environment.
    - `data_dir`: the data path (default: a fresh temporary directory). Start a new
      Broker on an old one's data_dir once the old process is gone to restart it.
    - `log_dir`: where the log goes (default: a fresh temporary directory next to, not
      inside, the data path, so that a full data path still takes the log, and a
      restart on the same data path gets a log of its own).
    - Started, its TCP and HTTP listeners accepting, on return (recovery of a large data path may take a
      while, hence the long `ready_timeout`).

    stop() (SIGTERM: clean shutdown, D10) and kill9() (a crash, nothing flushed, D11)
    mark the exit as intended; `stopped_on_purpose` stays False for a process that
    exited by itself."""

    def __init__(self, args=(), cores=None, data_dir=None, log_dir=None, env=None, ready_timeout=60.0):
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="ringsq-test-")
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="ringsq-test-log-")
        self.tcp_address = f"127.0.0.1:{self.tcp_port}"
        self.args = list(args)
        self.cores = cores
        cmd = [
            BIN,
            f"--tcp-address={self.tcp_address}",
            f"--http-address=127.0.0.1:{self.http_port}",
            f"--data-path={self.data_dir}",
        ]
        if cores is not None:
            cmd.append(f"--cores={cores}")
        cmd.extend(self.args)
        self.cmd = cmd
        self.log_path = os.path.join(self.log_dir, f"ringsqd-{self.tcp_port}.log")
        self._log = open(self.log_path, "wb")
        self.stopped_on_purpose = False
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout):
        """Until both listeners accept (the HTTP one may come up after the TCP one),
        unless the test's own flags move the HTTP listener."""
        ports = [self.tcp_port]
        if not any(a.lstrip("-").startswith("http-address") for a in self.args):
            ports.append(self.http_port)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ringsqd exited with {self.proc.returncode}: {self.log()}")
            try:
                for port in ports:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pass
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"ringsqd did not listen in {timeout}s: {self.log()}")

    def log(self):
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=60):
        """SIGTERM: clean shutdown (D10). Returns the exit code, or "timeout" when the
        process had to be killed after `timeout` s. The log stays readable."""
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = "timeout"
        self._log.close()
        return rc

    def kill9(self):
        """SIGKILL: a crash, nothing flushed (D11)."""
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def cleanup(self):
        """Remove the data path and the log directory."""
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.log_dir, ignore_errors=True)
