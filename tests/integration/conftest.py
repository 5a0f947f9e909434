"""The fixtures of the integration tests; the code they use lives in helpers/.

Every test gets fresh brokers (the real `ringsqd` binary on free loopback ports, a
fresh data path each); nothing is mocked.
"""

import pytest

from helpers.authd import AuthServer
from helpers.broker import Broker
from helpers.http_api import Consumer
from helpers.wire import Wire


@pytest.fixture
def brokers():
    """brokers(args=(), cores=None, data_dir=None, log_dir=None, env=None) -> Broker.

    Restart on the same data path with brokers(..., data_dir=old.data_dir) once the
    old process is gone (old.stop() or old.kill9()). At teardown every process still
    running is killed and every data path and log directory removed; a broker that
    exited without the test stopping it fails the test with its log: the broker must
    never die on input."""
    started = []

    def start(**opts):
        b = Broker(**opts)
        started.append(b)
        return b

    yield start
    died = []
    for b in started:
        if not b.stopped_on_purpose and b.proc.poll() is not None:
            died.append(f"exit {b.proc.returncode}: {b.log()[-3000:]}")
        if b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()
        if not b._log.closed:
            b._log.close()
    for b in started:
        b.cleanup()
    assert not died, f"ringsqd died during the test: {died}"


@pytest.fixture
def broker(brokers):
    """A broker with default flags on every CPU."""
    return brokers()


@pytest.fixture
def connect():
    """connect(broker, magic=b"  V2", timeout=5.0) -> Wire; every connection is
    closed at teardown."""
    conns = []

    def make(broker, magic=b"  V2", timeout=5.0):
        c = Wire(broker.tcp_address, magic=magic, timeout=timeout)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()


@pytest.fixture
def wire(broker, connect):
    """A raw connection to the default broker, magic already sent."""

    def make(magic=b"  V2"):
        return connect(broker, magic=magic)

    return make


@pytest.fixture
def tcp():
    """tcp(broker, identify=None) -> helpers.http_api.Consumer; all closed at teardown."""
    conns = []

    def make(broker, identify=None):
        c = Consumer(broker, identify)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()


@pytest.fixture
def loop():
    """A private pynsq IOLoop for one test (helpers.clients.PynsqLoop)."""
    from helpers.clients import PynsqLoop

    lp = PynsqLoop()
    yield lp
    lp.close()


@pytest.fixture
def authd():
    """authd(**kw) -> a new AuthServer(**kw); every one is shut down at teardown."""
    servers = []

    def make(**kw):
        s = AuthServer(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()
