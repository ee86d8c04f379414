"""Local package registry for the package-install workload of
`cargo xtask bench`: a DNS resolver (UDP, answers A 127.0.0.1 for names under
bench.test, NXDOMAIN otherwise) and a TLS server that sends one "package
tarball" per connection. Both listen on 127.0.0.1 only.

Usage: pkg_servers.py CERT KEY
Prints "READY dns=PORT tls=PORT" and serves until stdin is closed (the bench
holds it open) or a bounded lifetime ends."""

import socket
import ssl
import struct
import sys
import threading
import time

MAX_LIFETIME_S = 4 * 3600
FILES_PER_PACKAGE = 25
FILE_BYTES = 1024


def package_payload(name: bytes) -> bytes:
    # Deterministic content: FILES_PER_PACKAGE records of FILE_BYTES.
    out = bytearray()
    for i in range(FILES_PER_PACKAGE):
        line = b"%s/%d " % (name, i)
        out += (line * (FILE_BYTES // len(line) + 1))[:FILE_BYTES]
    return bytes(out)


def dns_answer(q: bytes) -> bytes:
    if len(q) < 12:
        return b""
    (tid, flags, qd, _an, _ns, _ar) = struct.unpack(">HHHHHH", q[:12])
    if qd != 1:
        return b""
    i, labels = 12, []
    while i < len(q) and q[i] != 0:
        n = q[i]
        labels.append(q[i + 1 : i + 1 + n])
        i += 1 + n
    question = q[12 : i + 5]
    qtype = struct.unpack(">H", q[i + 1 : i + 3])[0] if i + 3 <= len(q) else 0
    name = b".".join(labels).lower()
    ok = name.endswith(b".bench.test") and qtype == 1
    rflags = 0x8180 if ok else 0x8183
    hdr = struct.pack(">HHHHHH", tid, rflags, 1, 1 if ok else 0, 0, 0)
    ans = b""
    if ok:
        ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1])
    return hdr + question + ans


def serve_dns(sock: socket.socket) -> None:
    while True:
        q, peer = sock.recvfrom(4096)
        a = dns_answer(q)
        if a:
            sock.sendto(a, peer)


def serve_tls_conn(ctx: ssl.SSLContext, conn: socket.socket) -> None:
    try:
        with ctx.wrap_socket(conn, server_side=True) as s:
            req = b""
            while not req.endswith(b"\n") and len(req) < 1024:
                chunk = s.recv(1024)
                if not chunk:
                    return
                req += chunk
            name = req.strip().split(b" ")[-1]
            body = package_payload(name)
            s.sendall(struct.pack(">I", len(body)) + body)
    except (OSError, ssl.SSLError):
        pass


def serve_tls(ctx: ssl.SSLContext, lsock: socket.socket) -> None:
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve_tls_conn, args=(ctx, conn), daemon=True).start()


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 0))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tls.bind(("127.0.0.1", 0))
    tls.listen(64)
    threading.Thread(target=serve_dns, args=(dns,), daemon=True).start()
    threading.Thread(target=serve_tls, args=(ctx, tls), daemon=True).start()
    print("READY dns=%d tls=%d" % (dns.getsockname()[1], tls.getsockname()[1]), flush=True)
    deadline = time.monotonic() + MAX_LIFETIME_S
    # Serve until the bench closes our stdin (or the lifetime ends).
    t = threading.Thread(target=sys.stdin.read, daemon=True)
    t.start()
    while t.is_alive() and time.monotonic() < deadline:
        t.join(1.0)


if __name__ == "__main__":
    main()
