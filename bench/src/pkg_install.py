"""The package-install-like workload of `cargo xtask bench`: for each of N
packages, resolve NAME.registry.bench.test with a DNS query to the local
resolver, fetch the package over TLS (SNI = the name, certificate checked
against the bench CA), unpack it into many small files, and run a
"postinstall" shell command for every 10th package.

Usage: pkg_install.py DNS_PORT TLS_PORT CA_CERT N OUT_DIR
Exits non-zero on any failure."""

import os
import random
import socket
import ssl
import struct
import subprocess
import sys


def resolve(port: int, name: str) -> str:
    tid = random.randrange(65536)
    q = struct.pack(">HHHHHH", tid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(q, ("127.0.0.1", port))
        a, _ = s.recvfrom(4096)
    rid, flags, _qd, an = struct.unpack(">HHHH", a[:8])
    if rid != tid or flags & 0xF != 0 or an < 1:
        raise RuntimeError("DNS lookup of %s failed (flags %#x)" % (name, flags))
    return ".".join(str(b) for b in a[-4:])


def fetch(ctx: ssl.SSLContext, addr: str, port: int, name: str) -> bytes:
    with socket.create_connection((addr, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(b"GET %s\n" % name.encode())
            hdr = b""
            while len(hdr) < 4:
                chunk = s.recv(4 - len(hdr))
                if not chunk:
                    raise RuntimeError("short reply from %s" % name)
                hdr += chunk
            (n,) = struct.unpack(">I", hdr)
            body = bytearray()
            while len(body) < n:
                chunk = s.recv(min(65536, n - len(body)))
                if not chunk:
                    raise RuntimeError("truncated package %s" % name)
                body += chunk
            return bytes(body)


def main() -> None:
    dns_port, tls_port, ca, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    ctx = ssl.create_default_context(cafile=ca)
    files = 0
    for i in range(n):
        name = "pkg%d.registry.bench.test" % i
        addr = resolve(dns_port, name)
        body = fetch(ctx, addr, tls_port, name)
        d = os.path.join(out, "node_modules", "pkg%d" % i)
        os.makedirs(os.path.join(d, "lib"), exist_ok=True)
        size = 1024
        for j in range(len(body) // size):
            sub = "lib" if j % 2 else ""
            with open(os.path.join(d, sub, "f%d.js" % j), "wb") as f:
                f.write(body[j * size : (j + 1) * size])
            files += 1
        with open(os.path.join(d, "package.json"), "w") as f:
            f.write('{"name": "pkg%d", "version": "1.0.%d"}\n' % (i, i))
        files += 1
        if i % 10 == 0:
            subprocess.run(["sh", "-c", "echo installed > .postinstall"], cwd=d, check=True)
    print("installed %d packages, %d files" % (n, files))


if __name__ == "__main__":
    main()
