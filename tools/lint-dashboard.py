#!/usr/bin/env python3
"""lint-dashboard.py - checks Grafana dashboards (JSON model) with the rules
of Grafana's dashboard linter (github.com/grafana/dashboard-linter, a Go
program that neither Debian nor PyPI ships), rule for rule and under the
same names, with PromQL parsed by promql-parser (a port of Prometheus'
parser):

  template-datasource-rule     a variable of type datasource, named
                               `datasource` (or `<type>_datasource`),
                               labelled "Data source" (warning)
  template-job-rule            a `job` and an `instance` variable: a
  template-instance-rule       Prometheus query on $datasource, multi-value,
                               "All" = `.+`, labelled "Job"/"Instance"
                               (warning)
  template-label-promql-rule   variable queries are label_names(),
                               label_values(), metrics() or query_result()
                               over valid PromQL
  template-on-time-change-reload-rule
                               query variables refresh on a time range
                               change (refresh 2)
  uneditable-dashboard         `editable: false`
  panel-datasource-rule        every panel and every query of it use the
                               datasource variable, not a fixed uid
  panel-no-targets-rule        graph, stat, gauge, table and timeseries
                               panels have queries
  panel-title-description-rule those panels have a title and a description
  panel-units-rule             and a valid unit (Grafana's list)
  target-promql-rule           every query parses as PromQL once Grafana's
                               variables are filled in
  target-job-rule              every selector of every query has
  target-instance-rule         job=~"$job" and instance=~"$instance"
  target-rate-interval-rule    rate() and irate() take [$__rate_interval]
  target-counter-agg-rule      a counter (`*_total`) is only read through
                               rate(), irate() or increase()

The Go linter checks panel datasources on graph, singlestat, table and
timeseries panels only; here every panel with queries, and each query, is
held to it.  Rows are looked into, collapsed or not.

Usage: lint-dashboard.py [--strict] FILE...
Prints one line per finding (FILE: SEVERITY RULE: message) and exits 1
when there is an error (with --strict, a warning too), 0 otherwise.
"""
import argparse
import datetime
import json
import re
import sys

import promql_parser

# Sample values of Grafana's global variables (as the Go linter fills them
# in); distinct durations so that $__rate_interval can be recognised after
# parsing.  The parser takes milliseconds only up to 2^32, so seconds here.
GLOBALS = {
    "__rate_interval": "8869990s",
    "__interval": "4867856s",
    "__interval_ms": "7781188786",
    "__range_ms": "6737667980",
    "__range_s": "9397795485",
    "__range": "6069770s",
    "__auto": "12345s",
}
RATE_INTERVAL = datetime.timedelta(seconds=8869990)

PROMETHEUS_PANELS = {"singlestat", "graph", "table-old", "timeseries", "stat", "gauge",
                     "state-timeline", "table", "barchart", "bargauge", "heatmap"}
CHECKED_PANELS = {"stat", "singlestat", "graph", "table-old", "timeseries", "gauge"}

# Grafana's units (packages/grafana-data/src/valueFormats/categories.ts),
# as the Go linter lists them.
VALID_UNITS = set("""
none string short percent percentunit humidity dB hex0x hex sci locale pixel
accMS2 accFS2 accG degree radian grad arcmin arcsec areaM2 areaF2 areaMI2
flops mflops gflops tflops pflops eflops zflops yflops
ppm conppb conngm3 conngNm3 conμgm3 conμgNm3 conmgm3 conmgNm3 congm3 congNm3 conmgdL conmmolL
currencyUSD currencyGBP currencyEUR currencyJPY currencyRUB currencyUAH currencyBRL
currencyDKK currencyISK currencyNOK currencySEK currencyCZK currencyCHF currencyPLN
currencyBTC currencymBTC currencyμBTC currencyZAR currencyINR currencyKRW currencyIDR
currencyPHP currencyVND
bytes decbytes bits decbits kbytes deckbytes mbytes decmbytes gbytes decgbytes tbytes
dectbytes pbytes decpbytes
pps binBps Bps binbps bps KiBs Kibits KBs Kbits MiBs Mibits MBs Mbits GiBs Gibits GBs
Gbits TiBs Tibits TBs Tbits PiBs Pibits PBs Pbits
dateTimeAsIso dateTimeAsIsoNoDateIfToday dateTimeAsUS dateTimeAsUSNoDateIfToday
dateTimeAsLocal dateTimeAsLocalNoDateIfToday dateTimeAsSystem dateTimeFromNow
watt kwatt megwatt gwatt mwatt Wm2 voltamp kvoltamp voltampreact kvoltampreact watth
watthperkg kwatth kwattm amph kamph mamph joule ev amp kamp mamp volt kvolt mvolt dBm
ohm kohm Mohm farad µfarad nfarad pfarad ffarad henry mhenry µhenry lumens
flowgpm flowcms flowcfs flowcfm litreh flowlpm flowmlpm lux
forceNm forcekNm forceN forcekN Hs KHs MHs GHs THs PHs EHs
massmg massg masslb masskg masst lengthmm lengthin lengthft lengthm lengthkm lengthmi
pressurembar pressurebar pressurekbar pressurepa pressurehpa pressurekpa pressurehg
pressurepsi
radbq radci radgy radrad radsv radmsv radusv radrem radexpckg radr radsvh radmsvh radusvh
rotrpm rothz rotrads rotdegs celsius fahrenheit kelvin
hertz ns µs ms s m h d dtdurationms dtdurations dthms dtdhms timeticks clockms clocks
cps ops reqps rps wps iops cpm opm rpm wpm mps mpm
velocityms velocitykmh velocitymph velocityknot mlitre litre m3 Nm3 dm3 gallons
bool bool_yes_no bool_on_off
""".split())

VARIABLE = re.compile(r"\$(\w+)|\$\{([^}]+)\}|\[\[([^\[\]]+)\]\]")


class Findings:
    def __init__(self, path):
        self.path, self.items = path, []

    def error(self, rule, msg):
        self.items.append(("error", rule, msg))

    def warning(self, rule, msg):
        self.items.append(("warning", rule, msg))


def expand(expr, variables):
    """Fills Grafana's variables in as sample values, outside double-quoted
    strings (where a matcher's "$job" must stay as written)."""
    def sample(name):
        name = name.split(":")[0]
        if name in GLOBALS:
            return GLOBALS[name]
        if name.startswith("__auto_interval"):
            return "10s"
        return name
    parts = expr.split('"')
    for i in range(0, len(parts), 2):
        parts[i] = VARIABLE.sub(lambda m: sample(next(g for g in m.groups() if g)), parts[i])
    return '"'.join(parts)


def parse(expr, variables):
    return promql_parser.parse(expand(expr, variables))


def children(node):
    kind = type(node).__name__
    if kind == "BinaryExpr":
        return [node.lhs, node.rhs]
    if kind == "AggregateExpr":
        return [c for c in (node.param, node.expr) if c is not None and not isinstance(c, str)]
    if kind == "Call":
        return list(node.args)
    if kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
        return [node.expr]
    if kind == "MatrixSelector":
        return [node.vector_selector]
    return []


def walk(node, parents=()):
    """Yields (node, its ancestors, nearest last) depth first."""
    yield node, parents
    for c in children(node):
        yield from walk(c, parents + (node,))


def matcher_groups(selector):
    """The matcher lists of a selector: one, or one per `or` alternative."""
    m = selector.matchers
    return [list(m.matchers)] if m.matchers or not m.or_matchers else [list(g) for g in m.or_matchers]


def datasource_uid(ds):
    if isinstance(ds, dict):
        return ds.get("uid") or ""
    return ds or ""


def is_ds_variable(uid, names):
    return any(uid in (f"${n}", f"${{{n}}}") for n in names)


def panels_of(dashboard):
    def walk_panels(panels):
        for p in panels:
            yield p
            yield from walk_panels(p.get("panels", []))
    yield from walk_panels(dashboard.get("panels", []))


def variable_query(var):
    q = var.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


# ------------------------------------------------------------- dashboard

def lint_templates(d, f):
    variables = d.get("templating", {}).get("list", [])
    ds_vars = [v for v in variables if v.get("type") == "datasource"]
    if not ds_vars:
        f.error("template-datasource-rule", "no templated data source")
    for v in ds_vars:
        query = (v.get("query") or "").lower()
        names = {f"{query}_datasource"} | ({"datasource"} if len(ds_vars) == 1 else set())
        labels = {f"{query.title()} data source"} | ({"Data source"} if len(ds_vars) == 1 else set())
        if v.get("name") not in names:
            f.error("template-datasource-rule",
                    f"data source variable named '{v.get('name')}', should be one of {sorted(names)}")
        if v.get("label") not in labels:
            f.warning("template-datasource-rule",
                      f"data source variable labelled '{v.get('label')}', should be one of {sorted(labels)}")
    prometheus = bool(ds_vars) and (ds_vars[0].get("query") == "prometheus")
    ds_names = [v["name"] for v in ds_vars]
    if prometheus:
        for name, rule in (("job", "template-job-rule"), ("instance", "template-instance-rule")):
            var = next((v for v in variables if v.get("name") == name), None)
            if var is None:
                f.error(rule, f"no `{name}` variable")
                continue
            uid = datasource_uid(var.get("datasource"))
            if not is_ds_variable(uid, ds_names):
                f.error(rule, f"`{name}` variable uses data source '{uid}', not the variable")
            if var.get("type") != "query":
                f.error(rule, f"`{name}` variable is a '{var.get('type')}', not a query")
            if var.get("label") != name.title():
                f.warning(rule, f"`{name}` variable labelled '{var.get('label')}', not '{name.title()}'")
            if not var.get("multi"):
                f.error(rule, f"`{name}` variable is not multi-value")
            if var.get("allValue") != ".+":
                f.error(rule, f"`{name}` variable's allValue is '{var.get('allValue')}', not '.+'")
        for var in variables:
            if var.get("type") != "query":
                continue
            query = variable_query(var)
            m = re.fullmatch(r"\s*([a-z_]+)\((.*)\)\s*", query, re.S)
            if not m or m.group(1) not in ("label_names", "label_values", "metrics", "query_result"):
                f.error("template-label-promql-rule", f"variable '{var.get('name')}': invalid query '{query}'")
                continue
            fn, args = m.groups()
            expr = None
            if fn == "query_result":
                expr = args
            elif fn == "label_values" and "," in args:
                expr = args.rsplit(",", 1)[0]
            elif fn == "label_names" and args.strip():
                expr = args
            if expr is not None:
                try:
                    parse(expr, variables)
                except ValueError as e:
                    f.error("template-label-promql-rule",
                            f"variable '{var.get('name')}': invalid PromQL in '{query}': {e}")
    for var in variables:
        if var.get("type") == "query" and var.get("refresh") != 2:
            f.error("template-on-time-change-reload-rule",
                    f"variable '{var.get('name')}' refreshes on {var.get('refresh')}, not on a time range change (2)")
    return prometheus, ds_names, variables


def panel_unit(p):
    fc = p.get("fieldConfig") or {}
    unit = ""
    for o in fc.get("overrides", []):
        for prop in o.get("properties", []):
            if prop.get("id") == "unit":
                unit = prop.get("value") or ""
    return unit or (fc.get("defaults") or {}).get("unit", "")


def has_mappings(p):
    fc = p.get("fieldConfig") or {}
    if (fc.get("defaults") or {}).get("mappings"):
        return True
    return any(prop.get("id") == "mappings" and prop.get("value")
               for o in fc.get("overrides", []) for prop in o.get("properties", []))


def lint_panel(p, f, ds_names):
    kind, title = p.get("type"), p.get("title", "")
    where = f"panel '{title}'"
    targets = p.get("targets") or []
    if kind in CHECKED_PANELS:
        if not targets:
            f.error("panel-no-targets-rule", f"{where} has no queries")
        if not title or not p.get("description"):
            f.error("panel-title-description-rule", f"{where} lacks a title or a description")
        fields = ((p.get("options") or {}).get("reduceOptions") or {}).get("fields", "")
        if not (kind == "stat" and fields) and not has_mappings(p):
            unit = panel_unit(p)
            if unit not in VALID_UNITS:
                f.error("panel-units-rule", f"{where} has no or an invalid unit: '{unit}'")
    if targets:
        uid = datasource_uid(p.get("datasource"))
        if not is_ds_variable(uid, ds_names):
            f.error("panel-datasource-rule", f"{where} uses data source '{uid}', not the variable")
        for t in targets:
            if "datasource" in t and not is_ds_variable(datasource_uid(t["datasource"]), ds_names):
                f.error("panel-datasource-rule",
                        f"{where} query {t.get('refId')} uses data source "
                        f"'{datasource_uid(t['datasource'])}', not the variable")


def lint_target(p, t, f, variables):
    expr = t.get("expr", "")
    where = f"panel '{p.get('title', '')}' query {t.get('refId')}"
    if not expr:
        if not t.get("panelId"):
            f.error("target-promql-rule", f"{where} is empty")
        return
    try:
        tree = parse(expr, variables)
    except ValueError as e:
        f.error("target-promql-rule", f"{where}: invalid PromQL '{expr}': {e}")
        return
    for node, parents in walk(tree):
        kind = type(node).__name__
        if kind == "VectorSelector":
            for label, rule in (("job", "target-job-rule"), ("instance", "target-instance-rule")):
                for group in matcher_groups(node):
                    ok = any(m.name == label and m.op == promql_parser.MatchOp.Re and m.value == f"${label}"
                             for m in group)
                    if not ok:
                        f.error(rule, f"{where}: selector {node.name or ''} lacks {label}=~\"${label}\"")
            if (node.name or "").endswith("_total"):
                ok = (len(parents) >= 2 and type(parents[-1]).__name__ == "MatrixSelector"
                      and type(parents[-2]).__name__ == "Call"
                      and parents[-2].func.name in ("rate", "irate", "increase"))
                if not ok:
                    f.error("target-counter-agg-rule",
                            f"{where}: counter {node.name} is not read through rate, irate or increase")
        elif kind == "MatrixSelector" and node.range != RATE_INTERVAL and parents:
            call = parents[-1]
            if type(call).__name__ == "Call" and call.func.name in ("rate", "irate"):
                f.error("target-rate-interval-rule", f"{where}: {call.func.name}() should take [$__rate_interval]")


def lint(d, f):
    if d.get("editable", True):
        f.error("uneditable-dashboard", "the dashboard is editable; it should say `editable: false`")
    prometheus, ds_names, variables = lint_templates(d, f)
    for p in panels_of(d):
        lint_panel(p, f, ds_names)
        if prometheus and p.get("type") in PROMETHEUS_PANELS:
            for t in p.get("targets") or []:
                lint_target(p, t, f, variables)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strict", action="store_true", help="warnings fail too")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    failed = False
    for path in args.files:
        f = Findings(path)
        with open(path, encoding="utf-8") as fh:
            lint(json.load(fh), f)
        for severity, rule, msg in f.items:
            print(f"{path}: {severity} {rule}: {msg}")
            failed |= severity == "error" or args.strict
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
