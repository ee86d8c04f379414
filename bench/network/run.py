#!/usr/bin/env python3
"""Overhead of cilock's network and suspicious-syscall probes (issue 3).

Interleaved rounds of: the open storm (200,000 x openat+close) and a
connect/DNS loop (N x TCP connect+close to a local listener, then a UDP DNS
query to a local responder and its answer), each
  - untraced (no cilock),
  - traced in a step with the base probes only (CILOCK_EBPF_NET=off),
  - traced in a step with the network and syscall probes (default),
  - outside any step while a step with the base probes is active,
  - outside any step while a step with all probes is active.
Only the workload is timed (bench/src/timeit.c, wall time and the CPU time
charged to it, which includes in-kernel BPF time). Prints a Markdown table
of medians and ratios. Run as root from the repository root after
`cargo build --release -p cilock-cli`:

  python3 bench/network/run.py --rounds 5 --opens 200000 --conns 2000
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cc(src, out):
    subprocess.run(["cc", "-O2", "-o", out, src], check=True)


def servers(dns_ip):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", 0))
    l.listen(4096)

    def accept():
        while True:
            c, _ = l.accept()
            c.close()

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((dns_ip, 53))

    def answer():
        while True:
            q, peer = u.recvfrom(512)
            r = bytearray(q)
            r[2] |= 0x80  # QR: a response with no answers
            u.sendto(bytes(r), peer)

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=answer, daemon=True).start()
    return l.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--opens", type=int, default=200000)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--cilock", default=os.path.join(ROOT, "target/release/cilock"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cilock-netbench.")
    timeit, opens, netloop = (os.path.join(tmp, x) for x in ("timeit", "openstorm", "netloop"))
    cc(os.path.join(ROOT, "bench/src/timeit.c"), timeit)
    cc(os.path.join(ROOT, "bench/src/openstorm.c"), opens)
    cc(os.path.join(ROOT, "bench/network/netloop.c"), netloop)
    key = os.path.join(tmp, "key.pem")
    subprocess.run([a.cilock, "keygen", "-o", key], check=True, capture_output=True)
    dns_ip = "127.0.0.79"
    port = servers(dns_ip)
    workloads = {
        "open storm": [opens, str(a.opens), "/etc/hostname"],
        "connect+DNS loop": [netloop, str(a.conns), str(port), dns_ip],
    }
    out = os.path.join(tmp, "t.txt")

    def timed(cmd, wrap=None, env=None):
        if os.path.exists(out):
            os.remove(out)
        full = [timeit, out, "--"] + cmd
        if wrap:
            full = wrap + full
        subprocess.run(full, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall, user, sys_, _, code = open(out).read().split()
        assert code == "0", f"{cmd} failed"
        return int(wall) / 1e6, (int(user) + int(sys_)) / 1e3  # ms

    def run_traced(net):
        env = dict(os.environ, CILOCK_EBPF_NET="on" if net else "off")
        return ["env", f"CILOCK_EBPF_NET={'on' if net else 'off'}", a.cilock, "run", "--no-daemon", "--backend", "ebpf",
                "-k", key, "-s", "bench", "-o", os.path.join(tmp, "att.json"), "--workdir", tmp, "--"], env

    def outside(cmd, net):
        # A step (the sleeper) keeps the probes attached; the workload runs
        # outside it.
        wrap, env = run_traced(net)
        holder = subprocess.Popen(wrap + ["sh", "-c", "read x"], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.5)
        try:
            return timed(cmd)
        finally:
            holder.stdin.close()
            holder.wait()

    scenarios = ["untraced", "traced, base probes", "traced, all probes", "outside step, base probes", "outside step, all probes"]
    res = {(w, s): [] for w in workloads for s in scenarios}
    for r in range(a.rounds):
        for w, cmd in workloads.items():
            for s in scenarios:
                if s == "untraced":
                    t = timed(cmd)
                elif s.startswith("traced"):
                    wrap, env = run_traced(s.endswith("all probes"))
                    t = timed(cmd, wrap, env)
                else:
                    t = outside(cmd, s.endswith("all probes"))
                res[(w, s)].append(t)
                print(f"round {r+1} {w} / {s}: {t[0]:.1f} ms wall, {t[1]:.1f} ms CPU", file=sys.stderr)
    print("| workload | scenario | median wall (ms) | × untraced | median CPU (ms) | × untraced | all ÷ base probes (wall) | all ÷ base probes (CPU) | n |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in workloads:
        base_w = statistics.median(x[0] for x in res[(w, "untraced")])
        base_c = statistics.median(x[1] for x in res[(w, "untraced")])
        for s in scenarios:
            mw = statistics.median(x[0] for x in res[(w, s)])
            mc = statistics.median(x[1] for x in res[(w, s)])
            rw = rc = ""
            if s.endswith("all probes"):
                other = s.replace("all probes", "base probes")
                rw = f"{mw / statistics.median(x[0] for x in res[(w, other)]):.3f}"
                rc = f"{mc / statistics.median(x[1] for x in res[(w, other)]):.3f}"
            print(f"| {w} | {s} | {mw:.1f} | {mw / base_w:.2f} | {mc:.1f} | {mc / base_c:.2f} | {rw} | {rc} | {len(res[(w, s)])} |")


if __name__ == "__main__":
    main()
