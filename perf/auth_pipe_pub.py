"""Pipelined single PUBs on one connection: AUTH (if asked), then N PUBs of 100 B
in one stream; time from the first PUB byte sent to the last OK read."""
import socket, struct, sys, threading, time
port, n, do_auth = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"  V2")
buf = bytearray()
def frames(k):
    global buf
    got = 0
    while got < k:
        chunk = s.recv(1 << 20)
        if not chunk: raise SystemExit("closed")
        buf += chunk
        off = 0
        while len(buf) - off >= 4:
            size = struct.unpack_from(">i", buf, off)[0]
            if len(buf) - off < 4 + size: break
            if struct.unpack_from(">i", buf, off + 4)[0] != 0: raise SystemExit(bytes(buf[off+8:off+4+size]))
            off += 4 + size; got += 1
        del buf[:off]
if do_auth:
    s.sendall(b"AUTH\n" + struct.pack(">i", 4) + b"perf"); frames(1)
one = b"PUB pipe\n" + struct.pack(">i", 100) + b"x" * 100
data = one * n
t0 = time.perf_counter()
th = threading.Thread(target=s.sendall, args=(data,)); th.start()
frames(n); th.join()
print(round(n / (time.perf_counter() - t0)))
