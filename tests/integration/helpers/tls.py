"""TLS for the tests (T18, T20, H3): certificates made at run time with trustme (none
committed), an ssl client context, and the raw TLS upgrade of a `Wire`."""

import json
import os
import socket
import ssl
import struct
import tempfile

import trustme

from .wire import FRAME_RESPONSE, Wire, cmd_bytes


class Certs:
    """A CA, a server certificate for 127.0.0.1, a client certificate from that CA and
    one from another CA, as PEM files in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ringsq-tls-")
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = self._write("server.pem", server.cert_chain_pems[0].bytes())
        self.key = self._write("server.key", server.private_key_pem.bytes())
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        # The subject CN is what nsqd passes to the auth server as common_name.
        self.client_cn = "ringsq test client"
        self.client = self._pair("client", self.ca.issue_cert("client.test", common_name=self.client_cn))
        self.stranger = self._pair("stranger", self.other_ca.issue_cert("stranger.test"))

    def _write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def _pair(self, name, leaf):
        cert = self._write(f"{name}.pem", b"".join(p.bytes() for p in leaf.cert_chain_pems))
        key = self._write(f"{name}.key", leaf.private_key_pem.bytes())
        return cert, key

    def args(self, *extra):
        return [f"--tls-cert={self.cert}", f"--tls-key={self.key}", *extra]

    def context(self, client=None, maximum=None):
        """An ssl client context trusting the test CA; `client`: (cert, key)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if client:
            ctx.load_cert_chain(*client)
        if maximum:
            ctx.maximum_version = maximum
        return ctx


def identify_tls(w, **fields):
    """IDENTIFY with tls_v1: returns the answer, read in clear."""
    body = json.dumps({"feature_negotiation": True, "tls_v1": True, **fields}).encode()
    w.send(cmd_bytes("IDENTIFY", body))
    ftype, data = w.read_frame()
    assert ftype == FRAME_RESPONSE, (ftype, data)
    return json.loads(data)


def upgrade(w, ctx):
    """The client side of T18 on a Wire whose IDENTIFY answer said tls_v1: the
    handshake on the raw socket; afterwards the Wire reads and writes over TLS."""
    assert not w.buf, "bytes after the IDENTIFY answer must be TLS records"
    w.sock = ctx.wrap_socket(w.sock, server_hostname="127.0.0.1")
    return w


def tls_wire(broker, ctx, **fields):
    """A Wire upgraded to TLS, its framed OK read; returns (wire, IDENTIFY answer)."""
    w = Wire(broker.tcp_address)
    resp = identify_tls(w, **fields)
    assert resp["tls_v1"] is True, resp
    upgrade(w, ctx)
    assert w.read_frame() == (FRAME_RESPONSE, b"OK")
    return w, resp


def refused_handshake(broker, ctx, timeout=5.0):
    """Runs the handshake on a memory BIO over a raw socket and returns what came after
    the server's last TLS record: a refused handshake ends with a clear error frame.
    Returns (ssl error or None, bytes after the TLS records, whether the broker closed)."""
    w = Wire(broker.tcp_address, timeout=timeout)
    identify_tls(w)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    raw = bytearray(w.buf)
    error = None
    closed = False

    def pump():
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        try:
            obj.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        data = outgoing.read()
        if data:
            try:
                w.sock.sendall(data)
            except OSError:
                pass

    try:
        pump()
        while error is None:
            # Hand the TLS layer whole records only; a byte that starts no record
            # (frame lengths start with 0) ends the TLS part.
            while len(raw) >= 5 and raw[0] in (20, 21, 22, 23):
                n = 5 + struct.unpack(">H", raw[3:5])[0]
                if len(raw) < n:
                    break
                incoming.write(bytes(raw[:n]))
                del raw[:n]
                try:
                    pump()
                except ssl.SSLError as e:
                    error = e
                    break
            if error is not None or (raw and raw[0] not in (20, 21, 22, 23)):
                break
            chunk = w.sock.recv(65536)
            if not chunk:
                closed = True
                break
            raw += chunk
        w.sock.settimeout(timeout)
        while not closed:
            chunk = w.sock.recv(65536)
            if not chunk:
                closed = True
            raw += chunk
    except (ConnectionResetError, socket.timeout):
        closed = closed or True
    finally:
        w.close()
    return error, bytes(raw), closed


def tls_args(certs, *extra):
    """Broker flags for TLS with a loopback HTTPS port; returns (args, https_port)."""
    from .broker import free_port

    port = free_port()
    return certs.args(f"--https-address=127.0.0.1:{port}", *extra), port
