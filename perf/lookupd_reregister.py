"""Time for ringsqd to register everything again with an nsqlookupd that comes
back (issue 12 item 4, reference L3/L4/L6), with the test suite's lookupd stub.

    RINGSQD_BIN=target/release/ringsqd python3 perf/lookupd_reregister.py [rounds]

Scenarios, each `rounds` times, with 20 topics x 3 channels registered:
- restart: the stub stops (listener and connections closed) for 3 s, then
  listens again on the same port; time from listening again to the last REGISTER.
- idle close: the stub closes the broker's connection while idle, 6 s after the
  last reconnect (a connection that lived 5 s resets the back-off to 100 ms; one
  lost sooner keeps the doubled delay, at most 2 s); time from the close to the
  last REGISTER on the new connection.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))

from helpers.broker import Broker  # noqa: E402
from helpers.http_api import post_ok  # noqa: E402
from lookupd_stub import LookupdStub  # noqa: E402

TOPICS, CHANNELS, DOWN_S, LIMIT_S = 20, 3, 3.0, 45.0


def want():
    return {f"REGISTER t{i} c{j}" for i in range(TOPICS) for j in range(CHANNELS)}


def time_to_registered(stub, since, skip=0):
    """Seconds from `since` until a connection after the first `skip` has
    IDENTIFY first and every REGISTER."""
    w = want()
    while time.monotonic() - since < LIMIT_S:
        for p in stub.all_peers()[skip:]:
            cmds = stub.commands(p)
            if cmds and cmds[0] == "IDENTIFY" and w <= set(cmds):
                return time.monotonic() - since
        time.sleep(0.005)
    return float("inf")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    stub = LookupdStub()
    b = Broker(args=[f"--lookupd-tcp-address={stub.tcp_address}",
                     "--broadcast-address=127.0.0.1"])
    try:
        for i in range(TOPICS):
            post_ok(b, f"/topic/create?topic=t{i}")
            for j in range(CHANNELS):
                post_ok(b, f"/channel/create?topic=t{i}&channel=c{j}")
        assert time_to_registered(stub, time.monotonic()) < LIMIT_S
        restart, idle = [], []
        for _ in range(rounds):
            ports = (stub.tcp_port, stub.http_port)
            stub.close()
            time.sleep(DOWN_S)
            stub = LookupdStub(*ports)
            restart.append(time_to_registered(stub, time.monotonic()))
        for _ in range(rounds):
            time.sleep(6)
            seen = len(stub.all_peers())
            t0 = time.monotonic()
            stub.drop_all()
            idle.append(time_to_registered(stub, t0, skip=seen))
        for name, xs in (("restart (down 3 s)", restart), ("idle close", idle)):
            print(f"{name:20s} s: " + " ".join(f"{x:.3f}" for x in xs)
                  + f"   max {max(xs):.3f}")
    finally:
        b.stop()
        b.cleanup()
        stub.close()


if __name__ == "__main__":
    main()
