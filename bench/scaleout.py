#!/usr/bin/env python3
"""scaleout.py - the scale-out step of `make bench` (bench/80-scaleout.sh):
mrad replicas behind the proxies of deploy/proxy/ on loopback ports.

- Decode-step latency: one session, one step in flight (bin/mra-load
  --decode), sent to a replica directly, through HAProxy and through NGINX,
  in back-to-back rounds (direct, haproxy, nginx, direct, ...) so that the
  machine's drift hits all three alike.  Target: p50 through a proxy within
  1.2x of direct.
- Stateless throughput: closed-loop load (bin/mra-load --concurrency) on
  one replica directly, on HAProxy with one replica behind it and on
  HAProxy with three, in back-to-back rounds.  Printed, with no target: on
  a machine of a few shared cores three replicas share the cores one
  already used (docs/PERFORMANCE.md gives the arithmetic for real hosts).

Prints the figures and writes bench-out/scaleout.json.  Standard library
only.  BENCH_QUICK=1: one short round of each, for a smoke run.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY_DIR = os.path.join(ROOT, "deploy", "proxy")


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http(url, proc, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"scaleout: {what} exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"scaleout: {what} never answered {url}")


def find(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


class Procs:
    """The processes started, stopped together."""

    def __init__(self):
        self.procs = []
        self.dirs = []

    def start(self, args, env=None, what=None, health=None):
        p = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        if health:
            wait_http(health, p, what or args[0])
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def start_mrad(procs, binary, port, threads):
    procs.start([binary, "--host", "127.0.0.1", "--port", str(port), "--backend", "cpu",
                 "--threads", str(threads), "--log-level", "warn"],
                what=f"mrad on {port}", health=f"http://127.0.0.1:{port}/healthz")


def start_haproxy(procs, port, backends):
    # The shipped file names three replicas; with fewer, the missing
    # ones repeat the first (the same replica under other names).
    env = dict(os.environ, MRAD_PROXY_BIND=f"127.0.0.1:{port}")
    for i in range(3):
        env[f"MRAD_REPLICA_{i + 1}"] = f"127.0.0.1:{backends[i % len(backends)]}"
    procs.start([find("haproxy"), "-db", "-f", os.path.join(PROXY_DIR, "haproxy.cfg")],
                env=env, what="haproxy", health=f"http://127.0.0.1:{port}/healthz")


def start_nginx(procs, port, backends):
    text = open(os.path.join(PROXY_DIR, "nginx.conf"), encoding="utf-8").read()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    for i in range(3):
        text = text.replace(f":{8091 + i}", f":{backends[i % len(backends)]}")
    prefix = tempfile.mkdtemp(prefix="mrad-bench-nginx-")
    os.chmod(prefix, 0o755)
    procs.dirs.append(prefix)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(text)
    procs.start([find("nginx"), "-p", prefix, "-c", conf, "-g", "daemon off;"],
                what="nginx", health=f"http://127.0.0.1:{port}/healthz")


def load(mra_load, port, args, duration, warmup):
    out = subprocess.run([mra_load, "--url", f"http://127.0.0.1:{port}", "--json", "--quiet",
                          "--duration", str(duration), "--warmup", str(warmup)] + args,
                         capture_output=True, text=True, timeout=duration + warmup + 120,
                         check=True)
    rep = json.loads(out.stdout)
    bad = sum(v for k, v in rep["status"].items() if k != "200")
    if bad:
        print(f"scaleout: {bad} of {rep['sent']} requests failed on port {port}: "
              f"{rep['status']}", file=sys.stderr)
    if bad * 100 > rep["sent"]:
        sys.exit("scaleout: more than 1 % of the requests failed")
    return rep


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("BIN", os.path.join(ROOT, "bin")))
    ap.add_argument("--quick", action="store_true", default=bool(os.environ.get("BENCH_QUICK")))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "scaleout.json"))
    a = ap.parse_args()
    for tool in ("haproxy", "nginx"):
        if find(tool) is None:
            sys.exit(f"scaleout: {tool} is not installed (tools/deps.sh installs it)")
    mrad = os.path.join(a.bin, "mrad")
    mra_load = os.path.join(a.bin, "mra-load")
    rounds, seconds, warmup = (1, 1, 0.3) if a.quick else (5, 2, 0.5)
    t_rounds, t_seconds = (1, 1) if a.quick else (3, 3)
    # A decoding step of a mid-sized model: 32 query heads on 8 key/value
    # heads of 128, a context of 4096 tokens, one query and one new token.
    decode = ["--decode", "--concurrency", "1", "--sessions", "1", "--shape", "1,32,1,128",
              "--hkv", "8", "--decode-context", "1024" if a.quick else "4096"]
    # Stateless requests: 8 heads, 256 queries on 256 keys of 64.
    stateless = ["--concurrency", "8", "--shape", "1,8,256,64"]
    cores = os.cpu_count() or 1

    procs = Procs()
    try:
        reps = free_ports(3)
        px = free_ports(4)
        for p in reps:
            start_mrad(procs, mrad, p, cores)
        start_haproxy(procs, px[0], reps)
        start_nginx(procs, px[1], reps)
        start_haproxy(procs, px[2], reps[:1])
        print(f"replicas on {reps}, haproxy on {px[0]}, nginx on {px[1]}, "
              f"haproxy with one replica on {px[2]}")

        # ---- decode-step latency, direct against the proxies
        lat = {"direct": [], "haproxy": [], "nginx": []}
        ports = {"direct": reps[0], "haproxy": px[0], "nginx": px[1]}
        for _ in range(rounds):
            for k in lat:
                rep = load(mra_load, ports[k], decode, seconds, warmup)
                lat[k].append(rep["latency_ms"]["p50"])
        p50 = {k: statistics.median(v) for k, v in lat.items()}
        # Each ratio is judged on the median of its rounds' ratios: both
        # sides of a round ran seconds apart.
        ratios = {k: statistics.median(x / d for x, d in zip(lat[k], lat["direct"]))
                  for k in ("haproxy", "nginx")}

        # ---- stateless throughput: 1 replica direct, through the proxy, 3
        thr = {"1 replica direct": [], "1 replica via haproxy": [], "3 replicas via haproxy": []}
        tports = {"1 replica direct": reps[0], "1 replica via haproxy": px[2],
                  "3 replicas via haproxy": px[0]}
        for _ in range(t_rounds):
            for k in thr:
                rep = load(mra_load, tports[k], stateless, t_seconds, warmup)
                thr[k].append(rep["throughput_rps"])
        rps = {k: statistics.median(v) for k, v in thr.items()}
    finally:
        procs.stop()

    target = 1.2
    print(f"decode step (1x32x1x128, Hkv 8, context {decode[-1]}, one step in flight), "
          f"p50 of {rounds} rounds of {seconds} s:")
    for k in ("direct", "haproxy", "nginx"):
        line = f"  {k:8s} p50 {p50[k]:7.3f} ms  (rounds {', '.join(f'{x:.3f}' for x in lat[k])})"
        if k != "direct":
            added = (p50[k] - p50["direct"]) * 1000
            ok = "ok" if ratios[k] <= target else "MISSED"
            line += (f"  {ratios[k]:.2f}x direct (median of the rounds' ratios), "
                     f"{added:+.0f} us  [target <= {target}x: {ok}]")
        print(line)
    gain = statistics.median(x / y for x, y in zip(thr["3 replicas via haproxy"],
                                                   thr["1 replica via haproxy"]))
    gain_direct = statistics.median(x / y for x, y in zip(thr["3 replicas via haproxy"],
                                                          thr["1 replica direct"]))
    print(f"stateless throughput (1x8x256x64 mra2, 8 in flight, {cores} cores, "
          f"{t_rounds} rounds of {t_seconds} s):")
    for k, v in rps.items():
        print(f"  {k:24s} {v:8.1f} req/s  (rounds {', '.join(f'{x:.1f}' for x in thr[k])})")
    print(f"  3 replicas / 1 replica through the proxy: {gain:.2f}x, / 1 replica direct: "
          f"{gain_direct:.2f}x (medians of the rounds' ratios; no target: the replicas, the "
          f"proxy and the load share these {cores} cores; see docs/PERFORMANCE.md)")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump({"decode_p50_ms": p50, "decode_rounds_ms": lat, "decode_ratio": ratios,
                   "decode_target": target, "stateless_rps": rps, "stateless_rounds": thr,
                   "replica_gain": gain, "replica_gain_vs_direct": gain_direct, "cores": cores, "quick": a.quick}, f, indent=1)
    print(f"wrote {os.path.relpath(a.out, ROOT)}")


if __name__ == "__main__":
    main()
