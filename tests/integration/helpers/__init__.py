"""Helpers for the integration tests; holds no tests (so no module here is named
test_*). Fixtures live in ../conftest.py; the modules here are plain code:

- broker: `Broker`, the one ringsqd process wrapper, `free_port`, `BIN`, `ROOT`;
- wire: raw protocol V2 connections, frames, publishers and a fast consumer;
- http_api: a small HTTP client, /stats, /metrics and the HTTP-side consumer;
- wait: every poll-until helper (`wait_for`, `wait_channel`, `wait_topic`);
- disk: segment files, finishing then stopping;
- clients: pynsq / gnsq drivers.

Row IDs (C*, D*, H*, Q*, T*) refer to /work/shared/nsqd-reference.md.
"""
