#!/usr/bin/env python3
"""Per-program cost of cilock's probes (kernel.bpf_stats_enabled): runs the
open storm and the connect/DNS loop in one traced step and prints, for every
cilock program, how often it ran and its mean run time. Run as root from the
repository root after `cargo build --release -p cilock-cli`:

  python3 bench/network/progstats.py --opens 200000 --conns 2000
"""
import argparse, json, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--opens", type=int, default=200000)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--cilock", default=os.path.join(run.ROOT, "target/release/cilock"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cilock-progstats.")
    opens, netloop = os.path.join(tmp, "openstorm"), os.path.join(tmp, "netloop")
    run.cc(os.path.join(run.ROOT, "bench/src/openstorm.c"), opens)
    run.cc(os.path.join(run.ROOT, "bench/network/netloop.c"), netloop)
    key = os.path.join(tmp, "key.pem")
    subprocess.run([a.cilock, "keygen", "-o", key], check=True, capture_output=True)
    port = run.servers("127.0.0.79")
    progs = os.path.join(tmp, "progs.json")
    old = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    started = int(time.time()) - 1
    open("/proc/sys/kernel/bpf_stats_enabled", "w").write("1")
    try:
        script = f"{netloop} {a.conns} {port} 127.0.0.79 && {opens} {a.opens} /etc/hostname && bpftool prog show --json > {progs}"
        subprocess.run([a.cilock, "run", "--no-daemon", "--backend", "ebpf", "-k", key, "-s", "stats",
                        "-o", os.path.join(tmp, "att.json"), "--workdir", tmp, "--", "sh", "-c", script],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        open("/proc/sys/kernel/bpf_stats_enabled", "w").write(old)
    # Only the programs of this cilock: other daemons may run the same
    # ones; this bpftool does not report owner pids, so keep the programs
    # loaded after our start, and say if there was more than one instance.
    rows = []
    mine = [p for p in json.load(open(progs)) if p.get("loaded_at", 0) >= started]
    instances = sum(1 for p in mine if p.get("name") == "sys_exit_open")
    if instances != 1:
        print(f"warning: {instances} cilock instances loaded during the run; counts mix them", file=sys.stderr)
    for p in mine:
        cnt, ns = p.get("run_cnt", 0), p.get("run_time_ns", 0)
        if cnt and p.get("name"):
            rows.append((p["name"], p.get("type", ""), cnt, ns / cnt))
    # Programs of other tools on the machine have other names; keep ours.
    ours = {"sys_exit_open", "sched_process_e", "sched_process_f", "cgroup_attach_t", "connect4", "connect6",
            "sendmsg4", "sendmsg6", "bind4", "bind6", "skb_egress", "skb_ingress"}
    print("| program | type | runs | mean ns/run |")
    print("|---|---|---|---|")
    for name, typ, cnt, mean in sorted(rows, key=lambda r: -r[2]):
        if name in ours or name.startswith("sys_enter_"):
            print(f"| {name} | {typ} | {cnt} | {mean:.0f} |")


if __name__ == "__main__":
    main()
