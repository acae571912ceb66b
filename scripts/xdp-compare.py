#!/usr/bin/env python3
"""udpecho's XDP path against the limits of the same veth path, side by side, and the STAMP reflector time.

usage: scripts/xdp-compare.py [--rounds N=3] [--duration S=3] [--scenarios a,b] [--bench DIR=/tmp/udpbench]
                              [--udpecho PATH=.build/release/udpecho] [--udpecho-args '...'] [--pin]
                              [--stamp-count N=2000] [--bpf-stats] [--json FILE]

Two test hosts of our own, network namespaces `udpecho-xs` (server) and `udpecho-xc` (client), joined by a veth pair
(documentation addresses 198.51.100.1 and .2), set up as ../shared/bench/README.md says: an XDP_PASS program on the
client's end (without one the frames sent back with XDP_TX are dropped there) and `ethtool -K tx off` there (full UDP
checksums). Removed at the end. Servers, on port 7000 of the server's host, one at a time, round by round
(A B C A B C ...):
  udpecho-xdp   `udpecho server --xdp`, every guard on (the per-source rate and the global budget raised above the
                load, so that they are on and run but do not drop);
  xdp-echo      ../shared/bench's reference XDP echo (`ip link set ... xdp obj xdp-echo.bpf.o`): swap and XDP_TX,
                no guard, no checksum check;
  c-limit       ../shared/bench's recvmmsg/sendmmsg server: the socket path's limit.
udpload runs in the client's host. Per run: echoes/s; the machine's busy CPU time (all CPUs, /proc/stat, user +
system + softirq + irq...) over the echoes, in µs per echo; and the softirq time alone (where XDP and the kernel's
receive path run) over the echoes. Medians over the rounds, and each server's ratios to xdp-echo's.

Then the STAMP reflector time (T3 - T2, from the reflected packets) that `udpecho ping --stamp` reports through the
same veth, with `udpecho server --protocol stamp` with and without --xdp: p50 and p99 over --stamp-count probes.

--pin runs udpload on CPU 1 and the servers on CPU 0 (taskset): the machine swings ±30 % between rounds otherwise.
--bpf-stats adds each XDP program's own time a run (the kernel's run_time_ns over run_cnt, kernel.bpf_stats_enabled
on for the run; the counting costs about 40 ns a run, which a trivial XDP_PASS program shows): the program's cost
apart from the rest of the path.
Needs root, ip, ethtool, taskset, and ../shared/bench built (`./build.sh`).
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

SCENARIOS = {
    "pipelined-64": ["--sockets", "4", "--window", "32", "--payload", "64"],
    "pipelined-64-gso": ["--sockets", "4", "--window", "32", "--payload", "64", "--gso"],
    "pipelined-1400-gso": ["--sockets", "4", "--window", "16", "--payload", "1400", "--gso"],
}
SERVER_NS, CLIENT_NS = "udpecho-xs", "udpecho-xc"
SERVER_LINK, CLIENT_LINK = "uexs0", "uexc0"
SERVER_IP, CLIENT_IP = "198.51.100.1", "198.51.100.2"
PORT = 7000


def run(*command, check=True):
    return subprocess.run(command, check=check, capture_output=True, text=True)


def ip(*arguments, check=True):
    return run("ip", *arguments, check=check)


def setup(bench):
    teardown()
    ip("netns", "add", SERVER_NS)
    ip("netns", "add", CLIENT_NS)
    ip("link", "add", SERVER_LINK, "netns", SERVER_NS, "type", "veth", "peer", "name", CLIENT_LINK, "netns", CLIENT_NS)
    ip("-n", SERVER_NS, "addr", "add", f"{SERVER_IP}/24", "dev", SERVER_LINK)
    ip("-n", CLIENT_NS, "addr", "add", f"{CLIENT_IP}/24", "dev", CLIENT_LINK)
    for ns, link in [(SERVER_NS, SERVER_LINK), (CLIENT_NS, CLIENT_LINK)]:
        ip("-n", ns, "link", "set", link, "up")
        ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", CLIENT_NS, "link", "set", "dev", CLIENT_LINK, "xdp", "obj", f"{bench}/xdp-pass.bpf.o", "sec", "xdp")
    run("ip", "netns", "exec", CLIENT_NS, "ethtool", "-K", CLIENT_LINK, "tx", "off")


def teardown():
    for ns in [SERVER_NS, CLIENT_NS]:
        pids = ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        ip("netns", "del", ns, check=False)


def cpu_times():
    """(busy, softirq) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal, softirq


def pinned(cpu, command, pin):
    return ["taskset", "-c", str(cpu)] + command if pin else command


def start_server(name, args):
    exec_ns = ["ip", "netns", "exec", SERVER_NS]
    if name == "xdp-echo":
        ip("-n", SERVER_NS, "link", "set", "dev", SERVER_LINK, "xdp", "obj", f"{args.bench}/xdp-echo.bpf.o", "sec", "xdp")
        return None
    if name == "c-limit":
        command = [f"{args.bench}/c-limit", str(PORT), SERVER_IP]
    else:
        command = [args.udpecho, "server", "--address", f"{SERVER_IP}:{PORT}", "--quiet", "--xdp", SERVER_LINK,
                   "--rate-limit", "100000000", "--rate-burst", "10000000", "--global-rate", "100000000"]
        command += shlex.split(args.udpecho_args)
    proc = subprocess.Popen(exec_ns + pinned(0, command, args.pin), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ready = "xdp: answering" if name == "udpecho-xdp" else None
    deadline = time.time() + 20
    if ready:
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"{name} did not start: {proc.stderr.read()}")
            if line.startswith(ready):
                break
    else:
        time.sleep(0.5)
    return proc


def stop_server(name, proc):
    if name == "xdp-echo":
        ip("-n", SERVER_NS, "link", "set", "dev", SERVER_LINK, "xdp", "off")
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def program_times():
    """{program name: (run_time_ns, run_cnt)} of the XDP programs loaded, as the kernel counts them
    (kernel.bpf_stats_enabled; a tail call's time counts in the program that made it)."""
    shown = json.loads(run("bpftool", "-j", "prog", "show").stdout or "[]")
    return {p.get("name", ""): (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in shown if p.get("type") == "xdp"}


def load(args, scenario):
    command = [f"{args.bench}/udpload", "--target", f"{SERVER_IP}:{PORT}", "--duration", str(args.duration), "--json"]
    programs_before = program_times() if args.bpf_stats else {}
    before = cpu_times()
    result = run("ip", "netns", "exec", CLIENT_NS, *pinned(1, command + SCENARIOS[scenario], args.pin), check=False)
    after = cpu_times()
    programs_after = program_times() if args.bpf_stats else {}
    data = json.loads(result.stdout.strip().splitlines()[-1])
    echoes = max(1, data["received_all"])
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    # The server's program's time a run: the one that is not the client's XDP_PASS (nanoseconds, stats included).
    program_ns = 0.0
    for name, (time_ns, count) in programs_after.items():
        if name != "xdp_pass" and name in programs_before and count > programs_before[name][1]:
            program_ns = (time_ns - programs_before[name][0]) / (count - programs_before[name][1])
    return {
        "program_ns": program_ns,
        "pps": data["pps"],
        "busy_us": (after[0] - before[0]) * tick / echoes,
        "softirq_us": (after[1] - before[1]) * tick / echoes,
        "lost": data["lost"], "corrupt": data["corrupt"],
    }


def stamp_reflector_time(args, xdp):
    command = [args.udpecho, "server", "--protocol", "stamp", "--address", f"{SERVER_IP}:862", "--quiet"]
    if xdp:
        command += ["--xdp", SERVER_LINK]
    proc = subprocess.Popen(["ip", "netns", "exec", SERVER_NS] + pinned(0, command, args.pin),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    ping = run("ip", "netns", "exec", CLIENT_NS, *pinned(1, [args.udpecho, "ping", "--stamp", f"{SERVER_IP}:862",
               "-c", str(args.stamp_count), "-i", "1ms", "--json"], args.pin), check=False)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=5)
    times = []
    for line in ping.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        reflector = (event.get("stamp") or {}).get("reflector_ms")
        if event.get("type") == "reply" and reflector is not None:
            times.append(reflector * 1000)
    if not times:
        raise SystemExit(f"no STAMP replies: {ping.stderr}")
    times.sort()
    return {"replies": len(times), "p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--bench", default="/tmp/udpbench")
    parser.add_argument("--udpecho", default=os.path.abspath(".build/release/udpecho"))
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--udpecho-args", default="", help="more arguments for udpecho server (e.g. guards off)")
    parser.add_argument("--stamp-count", type=int, default=2000)
    parser.add_argument("--json")
    parser.add_argument("--bpf-stats", action="store_true",
                        help="also the XDP program's own time a run (kernel.bpf_stats_enabled, bpftool)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.duration <= 30 or not 10 <= args.stamp_count <= 100000:
        raise SystemExit("--rounds 1-20, --duration 0.5-30 s, --stamp-count 10-100000")
    for tool in ["ip", "ethtool", "taskset"]:
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}")
    servers = ["udpecho-xdp", "xdp-echo", "c-limit"]
    scenarios = args.scenarios.split(",")
    results = {s: {n: [] for n in servers} for s in scenarios}
    if args.bpf_stats:
        if not shutil.which("bpftool"):
            raise SystemExit("--bpf-stats needs bpftool")
        run("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
    setup(args.bench)
    try:
        for scenario in scenarios:
            for round_ in range(args.rounds):
                for name in servers:
                    proc = start_server(name, args)
                    try:
                        results[scenario][name].append(load(args, scenario))
                    finally:
                        stop_server(name, proc)
                    print(f"{scenario} round {round_ + 1} {name}: {results[scenario][name][-1]}", file=sys.stderr)
        stamp = {"socket": stamp_reflector_time(args, False), "xdp": stamp_reflector_time(args, True)}
    finally:
        teardown()
        if args.bpf_stats:
            run("sysctl", "-qw", "kernel.bpf_stats_enabled=0", check=False)
    print(f"{'scenario':20} {'server':12} {'echoes/s':>10} {'x xdp-echo':>10} {'busy us/echo':>13} {'x':>6} "
          f"{'softirq us/echo':>16} {'x':>6} {'lost':>5} {'corrupt':>7}")
    summary = {}
    for scenario in scenarios:
        medians = {}
        for name in servers:
            runs = results[scenario][name]
            medians[name] = {k: statistics.median(r[k] for r in runs)
                             for k in ["pps", "busy_us", "softirq_us", "program_ns"]}
            medians[name]["lost"] = sum(r["lost"] for r in runs)
            medians[name]["corrupt"] = sum(r["corrupt"] for r in runs)
        reference = medians["xdp-echo"]
        for name in servers:
            m = medians[name]
            print(f"{scenario:20} {name:12} {m['pps']:10.0f} {m['pps'] / reference['pps']:10.2f} "
                  f"{m['busy_us']:13.2f} {m['busy_us'] / reference['busy_us']:6.2f} {m['softirq_us']:16.2f} "
                  f"{m['softirq_us'] / max(1e-9, reference['softirq_us']):6.2f} {m['lost']:5d} {m['corrupt']:7d}")
        if args.bpf_stats:
            print(f"{scenario:20} program ns a run (bpf_stats, their own ~40 ns included): "
                  f"udpecho-xdp {medians['udpecho-xdp']['program_ns']:.0f}, xdp-echo {reference['program_ns']:.0f}")
        summary[scenario] = medians
    for mode, value in stamp.items():
        print(f"STAMP reflector time ({mode}): p50 {value['p50_us']:.2f} us, p99 {value['p99_us']:.2f} us "
              f"over {value['replies']} replies")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "medians": summary, "stamp": stamp, "pinned": args.pin}, f, indent=1)


if __name__ == "__main__":
    main()
