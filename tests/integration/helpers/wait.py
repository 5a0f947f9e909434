"""Every poll-until helper of the tests: poll a condition, never sleep a fixed time.

A timeout here bounds a wait for a state that must come; it is not a speed claim
(speed is measured by the benchmarks, not by tests)."""

import time

from helpers.http_api import channel_stats, topic_stats


def wait_for(fn, timeout=10.0, interval=0.02, what="condition"):
    """Poll fn() until it returns a truthy value; return it, or fail with the last
    value seen."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def _wait_stats(lookup, expect, timeout, what, shown=lambda x: x):
    """Wait until `lookup()` (a /stats object) has the fields `expect`."""

    def check():
        x = lookup()
        if x is not None and all(x.get(k) == v for k, v in expect.items()):
            return x
        return None

    try:
        return wait_for(check, timeout=timeout, what=f"{what} {expect}")
    except AssertionError:
        raise AssertionError(f"{what}: wanted {expect}, have {shown(lookup())}") from None


def wait_channel(b, topic, channel, timeout=20.0, **expect):
    """Wait until the channel's /stats fields equal `expect` (e.g. depth=10,
    in_flight_count=0); returns the channel object."""
    return _wait_stats(lambda: channel_stats(b, topic, channel), expect, timeout, f"{topic}/{channel}")


def wait_topic(b, topic, timeout=20.0, **expect):
    """Wait until the topic's /stats fields (channels aside) equal `expect`; returns
    the topic object."""

    def without_channels(t):
        return None if t is None else {k: v for k, v in t.items() if k != "channels"}

    return _wait_stats(lambda: topic_stats(b, topic), expect, timeout, topic, without_channels)
