"""test_deploy_live.py - the monitoring files against a running mrad: a real
Prometheus (Debian's /usr/bin/prometheus) on a free loopback port scrapes a
live bin/mrad every second with the shipped alerting and recording rules
loaded; after a few requests, Prometheus' HTTP API must answer `up`, the
p99 latency from the request histogram, every Grafana dashboard query,
every rule (healthy) and the autoscaler's adapter query with data.  The
metric names the dashboard and rules use are checked against mrad's own
/metrics, the settings shipped for the container, Compose, Kubernetes, the
Helm chart and systemd against the variables `mrad --help` lists, and mrad
is started with the image's and the manifests' settings."""
import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import yaml

from mrad_server import MradServer, encode_msgpack, mrad_binary
from test_deploy_support import (ADAPTER_VALUES, DEPLOY, GPU_ONLY, HISTOGRAMS, K8S, OPTIONAL,
                                 RULES, SIMPLE, SYNTHETIC, dashboard_queries, grafana_expr,
                                 helm_render, load_dashboard, promql_metric_names)

PROMETHEUS = "/usr/bin/prometheus"
REQUESTS = 12


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server scraping one mrad target, for one test module."""

    def __init__(self, tmp, target, rule_file):
        self.port = free_port()
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rule_file],
            "scrape_configs": [{"job_name": "mrad",
                                "static_configs": [{"targets": [target]}]}],
        }
        self.config = os.path.join(tmp, "prometheus.yml")
        with open(self.config, "w", encoding="utf-8") as f:
            yaml.safe_dump(cfg, f)
        self.log = open(os.path.join(tmp, "prometheus.log"), "w+", encoding="utf-8")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config}",
             f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.console.templates=" + tmp, "--web.console.libraries=" + tmp],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.log.seek(0)
        raise RuntimeError("Prometheus did not become ready:\n" + self.log.read()[-3000:])

    def api(self, path, **params):
        data = urllib.parse.urlencode(params).encode() if params else None
        with urllib.request.urlopen(self.url("/api/v1/" + path), data=data, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr):
        """Instant query; returns the result vector (list of samples)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def poll(self, expr, check, timeout=30.0):
        """Re-runs `expr` until check(result) holds; returns the result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if check(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr}: still {result} after {timeout} s")
            time.sleep(0.25)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def value(sample):
    return float(sample["value"][1])


def post_traffic(srv, conn, rng, good, bad):
    for _ in range(good):
        q, k, v = (rng.standard_normal((1, 2, 128, 32), dtype=np.float32) for _ in range(3))
        status, _, body = srv.post(encode_msgpack(q, k, v, block_per_row=2), conn=conn)
        assert status == 200, body[:300]
    for _ in range(bad):
        status, _, _ = srv.post(b'{"q": 1, "unknown": 2}', "application/json", conn=conn)
        assert status == 400


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """mrad with Prometheus scraping it, after traffic: 12 good requests
    and one bad one."""
    assert os.access(mrad_binary(), os.X_OK), f"{mrad_binary()} is not built (make)"
    assert os.access(PROMETHEUS, os.X_OK), "Debian's prometheus package is missing"
    tmp = str(tmp_path_factory.mktemp("prometheus"))
    # The shipped rules, evaluated every second instead of every 15 s.
    with open(RULES, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    for g in rules["groups"]:
        g["interval"] = "1s"
    rule_file = os.path.join(tmp, "mrad.rules.yml")
    with open(rule_file, "w", encoding="utf-8") as f:
        yaml.safe_dump(rules, f)

    with MradServer(threads=2) as srv:
        prom = Prometheus(tmp, f"127.0.0.1:{srv.port}", rule_file)
        try:
            # A scrape before the traffic, so that rates see it begin.
            prom.poll('up{job="mrad"}', lambda r: r and value(r[0]) == 1)
            rng = np.random.default_rng(7)
            conn = srv.connection()
            # A series labelled by route and method begins with its first
            # request: one of each first, and a scrape that saw them, so
            # that the rest of the traffic shows as an increase.
            post_traffic(srv, conn, rng, good=1, bad=1)
            prom.poll('sum(mrad_requests_total{job="mrad", code="200"})',
                      lambda r: r and value(r[0]) >= 1)
            post_traffic(srv, conn, rng, good=REQUESTS - 1, bad=0)
            conn.close()
            # Wait for two scrapes that saw all of it: a rate needs two
            # samples of a series, and the 400 series begins with the first.
            prom.poll('sum(mrad_requests_total{job="mrad", code="200"})',
                      lambda r: r and value(r[0]) >= REQUESTS)
            prom.poll('count_over_time(mrad_requests_total{job="mrad", code="400"}[1m])',
                      lambda r: r and value(r[0]) >= 2)
            yield srv, prom
        finally:
            prom.stop()


def test_prometheus_scrapes_mrad(stack):
    _, prom = stack
    (up,) = prom.query('up{job="mrad"}')
    assert value(up) == 1


def test_p99_latency_from_the_histogram(stack):
    srv, prom = stack
    expr = "histogram_quantile(0.99, sum(rate(mrad_request_duration_seconds_bucket[1m])) by (le))"
    (p99,) = prom.poll(expr, lambda r: r and not math.isnan(value(r[0])))
    # Within the histogram's finite buckets and above zero: each request
    # took some time, and the largest bucket bound holds CPU-sized ones.
    bounds = sorted(float(m) for m in re.findall(
        r'mrad_request_duration_seconds_bucket\{(?:\w+="[^"]*",)*le="([0-9.e+-]+)"\}',
        srv.metrics()))
    assert bounds, "no finite buckets in /metrics"
    assert 0 < value(p99) <= bounds[-1]


def test_every_dashboard_query_answers(stack):
    srv, prom = stack
    backend = prom.query("mrad_build_info")[0]["metric"]["backend"]
    for title, expr in dashboard_queries(load_dashboard()):
        result = prom.query(grafana_expr(expr))
        gpu = promql_metric_names(expr) & GPU_ONLY
        if gpu and backend == "cpu":
            assert result == [], f"{title}: GPU series from a CPU backend"
            continue
        assert result, f"{title}: no data for {grafana_expr(expr)}"


def test_every_rule_evaluates(stack):
    _, prom = stack
    deadline = time.monotonic() + 20
    while True:
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, "rules were not evaluated"
        time.sleep(0.5)
    assert len(rules) == 12
    for r in rules:
        assert r["health"] == "ok", (r["name"], r.get("lastError"))
    # The recording rules produce series, through the capacity gauge or its
    # fallback; no alert fires on a healthy instance.
    for record in ("instance:mrad_request_duration_seconds:p99_5m",
                   "instance_route:mrad_request_duration_seconds:p99_5m",
                   "instance_method:mrad_block_density:mean_5m",
                   "instance:mrad_requests_503:ratio_5m", "instance:mrad_queue:occupancy",
                   # NaN with one replica, but present
                   "instance:mrad_kv_bytes:ratio_to_others"):
        prom.poll(record, bool, timeout=10)
    firing = [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []


def test_autoscaler_adapter_query_answers(stack):
    _, prom = stack
    with open(ADAPTER_VALUES, encoding="utf-8") as f:
        (rule,) = yaml.safe_load(f)["rules"]["custom"]
    # The adapter fills the template with the series and the pod's labels;
    # here the target has none of Kubernetes' labels, so group by instance.
    expr = (rule["metricsQuery"].replace("<<.Series>>", "mrad_queue_depth")
            .replace("<<.LabelMatchers>>", 'job="mrad"').replace("<<.GroupBy>>", "instance"))
    (sample,) = prom.query(expr)
    assert value(sample) >= 0


def live_metric_names(text):
    """Names of the samples and of the # TYPE lines of an exposition."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\w+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[^{ ]+", line).group(0))
    return names


def test_named_metrics_are_exported_by_mrad(stack):
    srv, prom = stack
    live = live_metric_names(srv.metrics())
    backend = prom.query("mrad_build_info")[0]["metric"]["backend"]
    may_lack = OPTIONAL | (GPU_ONLY if backend == "cpu" else set())
    # The names the deployment relies on...
    expected = SIMPLE | {h + "_bucket" for h in HISTOGRAMS}
    # ...and every name the dashboard and the rules select.
    with open(RULES, encoding="utf-8") as f:
        groups = yaml.safe_load(f)["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for _, expr in dashboard_queries(load_dashboard()):
        expected |= promql_metric_names(expr)
    for g in groups:
        for r in g["rules"]:
            expected |= promql_metric_names(r["expr"])
    expected -= SYNTHETIC | recorded
    missing = expected - may_lack - live
    assert not missing, f"named but not exported by mrad: {sorted(missing)}"
    # Prometheus stored the same names from its scrapes.
    stored = set(prom.api("label/__name__/values"))
    assert not (expected - may_lack - stored)


def test_probe_and_healthcheck_paths_answer(stack):
    srv, _ = stack
    with open(os.path.join(K8S, "deployment.yaml"), encoding="utf-8") as f:
        ctr = yaml.safe_load(f)["spec"]["template"]["spec"]["containers"][0]
    paths = {ctr[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    dockerfile = open(os.path.join(DEPLOY, "..", "Dockerfile"), encoding="utf-8").read()
    paths |= set(re.findall(r"http://127\.0\.0\.1:\$\{MRAD_PORT\}(/\w+)", dockerfile))
    assert paths == {"/healthz", "/readyz"}
    for path in paths:
        assert srv.get(path)[0] == 200, path


# --------------------------------------------------- shipped settings

def mrad_variables():
    """The MRAD_* variables `mrad --help` documents."""
    out = subprocess.run([mrad_binary(), "--help"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    names = set(re.findall(r"env (MRAD_[A-Z0-9_]+)", out))
    assert "MRAD_HOST" in names and "MRAD_API_KEY_FILE" in names, out
    return names


def shipped_settings():
    """{where: {variable: value}} of every MRAD_* setting the deployment
    files set."""
    out = {}
    env = {}
    with open(os.path.join(DEPLOY, "systemd", "mrad.env"), encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                k, _, v = line.strip().partition("=")
                env[k] = v
    out["systemd mrad.env"] = env
    with open(os.path.join(K8S, "configmap.yaml"), encoding="utf-8") as f:
        out["k8s configmap"] = yaml.safe_load(f)["data"]
    dropins = {}
    for path in glob.glob(os.path.join(DEPLOY, "systemd", "**", "*.conf"), recursive=True) + \
            [os.path.join(DEPLOY, "systemd", "mrad.service")]:
        for m in re.finditer(r"^#?Environment=(MRAD_\w+)=(\S*)", open(path).read(), re.M):
            dropins[m.group(1)] = m.group(2)
    out["systemd units"] = dropins
    compose = yaml.safe_load(open(os.path.join(DEPLOY, "compose.yaml"), encoding="utf-8"))
    out["compose"] = {k: str(v) for k, v in compose["services"]["mrad"]["environment"].items()}
    (cm,) = [d for d in helm_render() if d["kind"] == "ConfigMap"
             and d["metadata"]["name"] == "mrad-config"]
    out["helm chart"] = cm["data"]
    docker = {}
    text = open(os.path.join(DEPLOY, "..", "Dockerfile"), encoding="utf-8").read()
    for m in re.finditer(r"\b(MRAD_[A-Z0-9_]+)=(\S+)", text):
        docker[m.group(1)] = m.group(2)
    out["Dockerfile"] = docker
    return out


def test_shipped_settings_are_mrad_variables():
    known = mrad_variables()
    for where, env in shipped_settings().items():
        assert env, where
        unknown = set(env) - known
        assert not unknown, f"{where}: {unknown} are not variables of mrad"


def get_status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_mrad_runs_with_the_kubernetes_settings(tmp_path):
    """The ConfigMap's settings (MRAD_DEVICES=all included) start mrad,
    with the host, ports and backend set for this machine; the API key file
    works as mounted, and the admin port serves the probes and /metrics
    without it, as the kubelet and Prometheus call them."""
    with open(os.path.join(K8S, "configmap.yaml"), encoding="utf-8") as f:
        env = dict(yaml.safe_load(f)["data"])
    with open(os.path.join(K8S, "secret.yaml"), encoding="utf-8") as f:
        secret = yaml.safe_load(f)["stringData"]
    key_name = os.path.basename(env["MRAD_API_KEY_FILE"])
    key_file = tmp_path / key_name
    key_file.write_text(secret[key_name] + "\n")
    env["MRAD_API_KEY_FILE"] = str(key_file)
    assert env["MRAD_DEVICES"] == "all"
    admin = free_port()
    env["MRAD_ADMIN_PORT"] = str(admin)
    with MradServer(env=env, threads=2) as srv:
        rng = np.random.default_rng(1)
        q, k, v = (rng.standard_normal((1, 1, 64, 16), dtype=np.float32) for _ in range(3))
        body = encode_msgpack(q, k, v)
        assert srv.post(body)[0] == 401
        auth = {"Authorization": "Bearer " + secret[key_name]}
        assert srv.post(body, headers=auth)[0] == 200
        assert srv.get("/healthz")[0] == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert get_status(admin, path) == 200, path


def dockerfile_env(stage):
    """The MRAD_* settings an image variant runs with: the final stage's
    ENV and the runtime stage's (`runtime-cuda`, `runtime-cpu`)."""
    text = open(os.path.join(DEPLOY, "..", "Dockerfile"), encoding="utf-8").read()
    env = {}
    for part in (text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0],
                 text.rsplit("\nFROM runtime-", 1)[1]):
        for m in re.finditer(r"\b(MRAD_[A-Z0-9_]+)=(\S+)", part):
            env[m.group(1)] = m.group(2)
    return env


@pytest.mark.parametrize("stage", ["runtime-cuda", "runtime-cpu"])
def test_mrad_runs_with_the_image_settings(stage):
    """mrad starts with an image's settings: the CUDA image's
    MRAD_BACKEND=auto and MRAD_DEVICES=all take every GPU there is, here
    none, so one CPU worker; on a host with GPUs, one worker per GPU."""
    env = dockerfile_env(stage)
    if stage == "runtime-cuda":
        assert env["MRAD_DEVICES"] == "all" and env["MRAD_BACKEND"] == "auto"
    env["MRAD_PORT"] = "0"
    env.pop("MRAD_HOST")
    # MradServer passes --backend cpu; the image's backend wins here.
    with MradServer(["--backend", env["MRAD_BACKEND"]], env=env, threads=2) as srv:
        info = json.loads(srv.get("/v1/info")[2])
        assert srv.get("/healthz")[0] == 200
        if info["backend"] == "cpu":
            assert info["workers"] == 1
        else:
            assert info["workers"] >= 1


def test_devices_all_with_the_cuda_backend():
    """--backend cuda --devices all: one worker on each usable GPU, or, on a
    host without any (or a build without CUDA), an error that says so
    rather than a silent CPU."""
    try:
        with MradServer(["--backend", "cuda", "--devices", "all"], threads=2) as srv:
            info = json.loads(srv.get("/v1/info")[2])
    except RuntimeError as e:
        assert "no usable GPU for --devices all" in str(e), str(e)
        return
    assert info["backend"] == "cuda" and info["workers"] >= 1, info


# ------------------------------------------------- image runtime libraries

def runtime_packages(stage):
    """Packages the Dockerfile's `stage` installs with apt-get."""
    text = open(os.path.join(DEPLOY, "..", "Dockerfile"), encoding="utf-8").read()
    body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
    m = re.search(r"apt-get install -y --no-install-recommends((?:\s|\\)+[^&]+)", body)
    return set(m.group(1).replace("\\", " ").split())


# In every Debian and Ubuntu image: the C library, and what apt links to.
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6"}
# What the nvidia/cuda runtime image brings for a CUDA build.
CUDA_RUNTIME_LIBS = ("libcudart.so", "libcublas.so", "libcublasLt.so")


def test_image_installs_what_mrad_links_against():
    """Each shared library bin/mrad needs directly (built here on Debian
    bookworm, the CPU image's base) comes from a package the runtime
    stages install, from the base image, or, where this machine builds
    with CUDA, from the CUDA toolkit's runtime that the nvidia/cuda
    runtime image holds."""
    readelf = subprocess.run(["readelf", "-d", mrad_binary()], capture_output=True, text=True,
                             check=True, timeout=10).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf)
    assert needed
    ldd = subprocess.run(["ldd", mrad_binary()], capture_output=True, text=True, check=True,
                         timeout=10).stdout
    paths = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
    installed = runtime_packages("runtime-cpu") | BASE_PACKAGES
    assert runtime_packages("runtime-cuda") == runtime_packages("runtime-cpu")
    for soname in needed:
        if soname.startswith("ld-linux"):
            continue
        path = os.path.realpath(paths[soname])
        if "/cuda" in path:
            assert soname.startswith(CUDA_RUNTIME_LIBS), f"{soname} ({path}) is not in the CUDA runtime image"
            continue
        owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True,
                               timeout=10)
        if owner.returncode != 0:  # dpkg knows the /usr-merged path
            owner = subprocess.run(["dpkg", "-S", path.replace("/usr/lib/", "/lib/", 1)],
                                   capture_output=True, text=True, timeout=10)
        assert owner.returncode == 0, f"{soname}: {owner.stderr}"
        package = owner.stdout.split(":", 1)[0]
        assert package in installed, f"{soname} comes from {package}, not installed in the image"


# ------------------------------------------------------- systemd sandbox

def syscall_set(name, seen=None):
    """The system calls of a systemd set (`@system-service`), nested sets
    expanded, as systemd-analyze lists them."""
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        calls |= syscall_set(word, seen) if word.startswith("@") else {word}
    return calls


def unit_settings():
    with open(os.path.join(DEPLOY, "systemd", "mrad.service"), encoding="utf-8") as f:
        lines = [l.strip() for l in f if "=" in l and not l.lstrip().startswith("#")]
    settings = {}
    for line in lines:
        key, _, val = line.partition("=")
        settings.setdefault(key, []).append(val)
    return settings


def test_systemd_sandbox_allows_what_mrad_does(tmp_path):
    """Runs mrad under strace through start-up, requests and a SIGTERM
    drain, and checks each system call, socket family and memory
    protection it used against the unit's SystemCallFilter,
    RestrictAddressFamilies and MemoryDenyWriteExecute."""
    strace = shutil.which("strace")
    assert strace, "strace is missing (Debian package strace)"
    trace = tmp_path / "trace"
    srv = MradServer(threads=2)
    srv.args = [strace, "-f", "-qq", "-o", str(trace)] + srv.args
    with srv:
        rng = np.random.default_rng(3)
        for method in ("mra2", "mra2_sparse", "exact"):
            q, k, v = (rng.standard_normal((1, 2, 96, 16), dtype=np.float32) for _ in range(3))
            assert srv.post(encode_msgpack(q, k, v, method=method))[0] == 200
        assert srv.get("/metrics")[0] == 200 and srv.get("/v1/info")[0] == 200
        # SIGTERM to mrad itself (strace would detach on its own SIGTERM).
        (child,) = subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True,
                                  text=True, check=True).stdout.split()
        os.kill(int(child), signal.SIGTERM)
        assert srv.wait(30) == 0
    text = trace.read_text()
    used = set(re.findall(r"^\d+\s+([a-z_0-9]+)\(", text, re.M)) - {"execve"}
    assert {"accept4", "epoll_wait", "exit_group"} <= used, sorted(used)

    settings = unit_settings()
    allowed, denied = set(), set()
    for value in settings["SystemCallFilter"]:
        target = denied if value.startswith("~") else allowed
        for name in value.lstrip("~").split():
            target |= syscall_set(name) if name.startswith("@") else {name}
    blocked = sorted(c for c in used if c not in allowed or c in denied)
    assert not blocked, f"the unit's SystemCallFilter blocks {blocked}"

    families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", text))
    assert families and families <= set(settings["RestrictAddressFamilies"][0].split()), families

    assert settings["MemoryDenyWriteExecute"] == ["yes"]
    wx = re.findall(r"^\d+\s+(?:mmap|mprotect|pkey_mprotect)\(.*PROT_WRITE\|PROT_EXEC.*$", text, re.M)
    assert not wx, f"writable and executable mappings: {wx[:3]}"
