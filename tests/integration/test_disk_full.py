"""Disk full: publishing fails cleanly, health turns NOK, nothing acknowledged is lost,
and everything works again once space is back (T30, T31, H4, Q20, D7).

The data path is on a 16 MiB tmpfs (O_DIRECT works on tmpfs from Linux 6.6) or, when
tmpfs cannot be used, on a loop-mounted 32 MiB ext4 image (no reserved blocks, so root
cannot write past "full"; RINGSQ_TEST_SMALL_DISK=ext4 forces it). Both need root; without them the test is skipped with the
reason. The test fills the file system with a filler file leaving ~1.5 MiB (the broker
preallocates segment files in chunks of a few MiB), publishes until the broker refuses,
then deletes the filler.
"""

import mmap
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest

from helpers.http_api import metric, post_ok, request
from helpers.wait import wait_for
from helpers.wire import FRAME_ERROR, OK, cmd_bytes, Conn, mpub_body, RawConsumer

MiB = 1 << 20


def o_direct_works(directory):
    """Can a 4 KiB aligned O_DIRECT write be done in `directory`?"""
    path = os.path.join(directory, ".odirect-probe")
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        buf = mmap.mmap(-1, 4096)
        buf.write(b"x" * 4096)
        os.write(fd, buf)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)


def umount(mnt):
    if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


@pytest.fixture
def small_disk():
    """A mounted small file system: yields (mount point, description)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mnt = tempfile.mkdtemp(prefix="ringsq-small-disk-")
    img = None
    reasons = []
    how = "tmpfs 16 MiB"
    if os.environ.get("RINGSQ_TEST_SMALL_DISK") == "ext4":  # to exercise the fallback
        r = subprocess.CompletedProcess([], 1, "", "skipped (RINGSQ_TEST_SMALL_DISK=ext4)")
    else:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt], capture_output=True, text=True)
    if r.returncode == 0 and not o_direct_works(mnt):
        reasons.append("tmpfs has no O_DIRECT on this kernel")
        umount(mnt)
        r = None
    elif r.returncode != 0:
        reasons.append(f"tmpfs mount: {r.stderr.strip()}")
        r = None
    if r is None:
        how = "ext4 loop 32 MiB"
        fd, img = tempfile.mkstemp(prefix="ringsq-small-disk-", suffix=".img")
        os.close(fd)
        os.truncate(img, 32 * MiB)
        mk = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
        steps = [[mk, "-q", "-F", "-m", "0", img], ["mount", "-o", "loop", img, mnt]]
        for step in steps:
            try:
                r = subprocess.run(step, capture_output=True, text=True)
            except OSError as e:
                r = subprocess.CompletedProcess(step, 1, "", str(e))
            if r.returncode != 0:
                reasons.append(f"{' '.join(step[:2])}: {r.stderr.strip()}")
                os.unlink(img)
                os.rmdir(mnt)
                pytest.skip("cannot mount a small file system: " + "; ".join(reasons))
    try:
        yield mnt, how
    finally:
        umount(mnt)
        try:
            os.rmdir(mnt)
        except OSError:
            pass
        if img:
            os.unlink(img)


def fill(mnt, leave):
    """A filler file taking all free space of `mnt` but `leave` bytes."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    path = os.path.join(mnt, "filler")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(free - leave, 4096))
    finally:
        os.close(fd)
    return path


def body(tag, i, size=1024):
    head = b"%s-%06d|" % (tag, i)
    return head + bytes((i * 31 + k) & 0xFF for k in range(size - len(head)))


def test_disk_full_fails_publishes_then_recovers(small_disk, brokers):
    """T30/T31: on a full disk MPUB gets `E_MPUB_FAILED MPUB failed <reason>` and PUB
    `E_PUB_FAILED PUB failed <reason>`, each closing the connection (fatal, T11); H4/Q20:
    GET /ping answers 500 `NOK - <reason>`; the broker keeps running. Once the filler is
    deleted a PUB succeeds again and /ping answers 200 `OK`. Every message acknowledged
    before, during and after is delivered exactly once, byte for byte; nothing delivered
    was never sent."""
    mnt, how = small_disk
    data = os.path.join(mnt, "data")
    os.mkdir(data)
    b = brokers(args=["--mem-queue-size=0"], data_dir=data, cores=2)
    post_ok(b, "/topic/create?topic=full")
    post_ok(b, "/channel/create?topic=full&channel=c")
    sent, acked = [], []

    p = Conn(b)
    for i in range(200):
        x = body(b"before", i)
        sent.append(x)
        p.cmd("PUB full", x)
        assert p.read_frame() == OK
        acked.append(x)
    p.close()

    filler = fill(mnt, int(1.5 * MiB))
    p = Conn(b)
    err = None
    for k in range(640):  # at most 64 MiB: more than the file system holds
        batch = [body(b"fill", k * 100 + j) for j in range(100)]
        sent.extend(batch)
        p.send(cmd_bytes("MPUB full", mpub_body(batch)))
        fr = p.read_frame()
        if fr != OK:
            err = fr
            break
        acked.extend(batch)
    assert err is not None, f"64 MiB accepted on a full {how}"
    assert err[0] == FRAME_ERROR and err[1].startswith(b"E_MPUB_FAILED MPUB failed "), err
    assert len(err[1]) > len(b"E_MPUB_FAILED MPUB failed "), "the reason is missing"
    assert p.is_closed(3.0), "E_MPUB_FAILED must close the connection"

    big = body(b"big", 0, size=512 * 1024)
    sent.append(big)
    p = Conn(b)
    p.cmd("PUB full", big)
    fr = p.read_frame()
    assert fr[0] == FRAME_ERROR and fr[1].startswith(b"E_PUB_FAILED PUB failed "), fr
    assert p.is_closed(3.0), "E_PUB_FAILED must close the connection"

    r = request(b, "GET", "/ping")
    status, text = r.status, r.body
    assert status == 500 and text.startswith(b"NOK - ") and len(text) > 6, (status, text)
    assert b.alive()
    assert metric(b, "ringsq_disk_failing_queues") >= 1

    os.unlink(filler)

    def publish_again():
        c = Conn(b)
        x = body(b"after", len(sent))
        sent.append(x)
        try:
            c.cmd("PUB full", x)
            if c.read_frame() == OK:
                acked.append(x)
                return True
        except (OSError, ConnectionError):
            pass
        finally:
            c.close()
        time.sleep(0.1)
        return False

    wait_for(publish_again, timeout=10, what="PUB OK once space is back")

    def ping_ok():
        r = request(b, "GET", "/ping")
        return (r.status, r.body) == (200, b"OK")

    wait_for(ping_ok, timeout=5, what="/ping 200 OK")
    assert metric(b, "ringsq_disk_failing_queues") == 0
    p = Conn(b)
    more = [body(b"more", i) for i in range(300)]
    sent.extend(more)
    p.cmd("MPUB full", mpub_body(more))
    assert p.read_frame() == OK
    acked.extend(more)
    p.close()

    c = RawConsumer(b, "full", "c", rdy=2500)
    got = [m.body for m in c.take(len(acked), quiet=1.0, timeout=60)]
    g = set(got)
    assert len(got) == len(g), f"{len(got) - len(g)} duplicates"
    missing = [x[:20] for x in acked if x not in g]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost: {missing[:3]}"
    unknown = g - set(sent)
    assert not unknown, f"{len(unknown)} delivered bodies never sent"


def read_until_closed(p, limit):
    """Every frame `p` gets until the broker closes it (at most `limit` frames)."""
    frames = []
    while len(frames) < limit:
        try:
            frames.append(p.read_frame(timeout=10))
        except (ConnectionError, OSError):
            break
    return frames


def test_pipelined_durable_publishes_on_a_full_disk(small_disk, brokers):
    """Issue 11 review: a publisher that pipelines PUBs (no wait for each OK) at
    --sync-every=1 on a disk that fills up gets, in command order, OKs, then exactly one
    `E_PUB_FAILED PUB failed <reason>` (T30, fatal: T11), then the close: no frame after
    the error, and no PUB started after the failure was known is answered. Every
    acknowledged message is delivered once space is back, exactly once, byte for byte."""
    mnt, how = small_disk
    data = os.path.join(mnt, "data")
    os.mkdir(data)
    b = brokers(args=["--mem-queue-size=0", "--sync-every=1"], data_dir=data, cores=2)
    post_ok(b, "/topic/create?topic=pfull")
    post_ok(b, "/channel/create?topic=pfull&channel=c")
    filler = fill(mnt, int(1.5 * MiB))
    sent = [body(b"pipe", i, size=16 * 1024) for i in range(300)]  # 4.8 MiB: more than fits
    p = Conn(b)

    def send_all():
        try:
            p.send(b"".join(cmd_bytes("PUB pfull", x) for x in sent))
        except OSError:
            pass  # the broker closed its reading side after the failure

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    frames = read_until_closed(p, len(sent) + 1)
    sender.join(timeout=30)
    oks = 0
    while oks < len(frames) and frames[oks] == OK:
        oks += 1
    assert oks < len(sent), f"4.8 MiB acknowledged on a full {how}"
    assert len(frames) == oks + 1, f"after {oks} OKs: {frames[oks:oks + 3]}"
    err = frames[oks]
    assert err[0] == FRAME_ERROR and err[1].startswith(b"E_PUB_FAILED PUB failed "), err
    p.close()

    os.unlink(filler)
    acked = sent[:oks]
    c = RawConsumer(b, "pfull", "c", rdy=500)
    got = [m.body for m in c.take(len(acked), quiet=1.0, timeout=60)]
    g = set(got)
    assert len(got) == len(g), f"{len(got) - len(g)} duplicates"
    missing = [i for i, x in enumerate(acked) if x not in g]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost: {missing[:5]}"
    assert not g - set(sent), "delivered bodies never sent"
