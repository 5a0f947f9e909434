"""Our segment files on disk (`<topic>.ringsq.NNNNNN.dat`,
`<topic>:<channel>.ringsq.NNNNNN.dat`), finding bodies in them, and finishing part
of a backlog before a clean stop (D10)."""

import os
import re

from helpers.wait import wait_channel
from helpers.wire import RawConsumer

SEGMENT_RE = re.compile(r"^(?P<queue>.+)\.ringsq\.(?P<num>\d{6})\.dat$")


def finish_then_stop(b, topic, channel, n, left):
    """Take `n` messages of topic/channel without FIN, FIN them in one write, wait
    until the channel holds `left` with nothing in flight, then stop the broker
    cleanly (D10). Returns the messages finished."""
    c = RawConsumer(b, topic, channel, rdy=n, fin=False)
    first = c.take(n, quiet=0.3)
    c.rdy(0)
    c.finish([m.id for m in first])
    wait_channel(b, topic, channel, depth=left, in_flight_count=0)
    assert b.stop() == 0
    c.close()
    return first


def segment_files(data_dir, queue):
    """Our segment files of `queue` (`topic` or `topic:channel`), in number order."""
    out = []
    for name in os.listdir(data_dir):
        m = SEGMENT_RE.match(name)
        if m and m.group("queue") == queue:
            out.append((int(m.group("num")), os.path.join(data_dir, name)))
    return [p for _, p in sorted(out)]


def all_segment_files(data_dir):
    return sorted(n for n in os.listdir(data_dir) if SEGMENT_RE.match(n))


def locate(files, bodies, tag_re):
    """Find every body in the segment `files` by its unique tag: `tag_re` must capture
    the body's index. Returns {index: (path, offset of the body)}; each body must be
    present exactly once and intact."""
    where = {}
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        for m in tag_re.finditer(data):
            i = int(m.group(1))
            if i >= len(bodies):
                continue
            off = m.start()
            if data[off:off + len(bodies[i])] != bodies[i]:
                continue
            assert i not in where, f"body {i} found twice: {where[i]} and {(path, off)}"
            where[i] = (path, off)
    missing = [i for i in range(len(bodies)) if i not in where]
    assert not missing, f"{len(missing)} bodies not found in {files} (first {missing[:5]})"
    return where


def log_lines_with(b, word):
    return [line for line in b.log().splitlines() if word.lower() in line.lower()]
