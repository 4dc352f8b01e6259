"""test_deploy_helm.py - the Helm chart (deploy/helm/mrad) without a
cluster: `helm lint --strict` and `helm template` through Helm's own
library (helm-python-sdk, Helm 4's Go SDK; no helm binary is packaged for
Debian or on PyPI), every rendered object through the validator of the
manifests (kubernetes-validate, every release from the oldest supported,
and the operator schema), the default rendering against deploy/k8s/, and
the values: GPUs per pod, the API key's Secret, resources, autoscaling,
the operator objects, and values the chart must refuse."""
import copy
import os

import pytest
import yaml

from test_deploy_support import (CHART, K8S, K8S_MIN_VERSION, RULES, helm_lint, helm_notes,
                                 helm_render, validate_k8s)

# Labels Helm adds to every object and selector (release, chart, version).
HELM_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
               "app.kubernetes.io/version", "helm.sh/chart"}


def objects(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def manifests():
    out = {}
    for name in sorted(os.listdir(K8S)):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            with open(os.path.join(K8S, name), encoding="utf-8") as f:
                out.update(objects(d for d in yaml.safe_load_all(f) if d))
    return out


def mrad_object(docs, kind):
    """The chart's object of that kind for mrad itself (not the proxy's)."""
    (doc,) = [d for d in docs if d["kind"] == kind
              and "-proxy" not in d["metadata"]["name"]]
    return doc


def pod_spec(docs):
    return mrad_object(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs):
    (ctr,) = pod_spec(docs)["containers"]
    return ctr


def config(docs):
    return mrad_object(docs, "ConfigMap")["data"]


def test_chart_lints_clean():
    report = helm_lint()
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report
    with open(os.path.join(CHART, "Chart.yaml"), encoding="utf-8") as f:
        chart = yaml.safe_load(f)
    # Installs refuse clusters older than the oldest release checked.
    assert chart["kubeVersion"] == f">={K8S_MIN_VERSION}-0"


def test_lint_sees_bad_values():
    report = helm_lint({"gpu": {"cout": 2}})
    assert any("cout" in m["error"] for m in report["messages"] if m["severity"] == 3), report


def test_default_objects_are_valid():
    docs = helm_render()
    for doc in docs:
        validate_k8s(doc)
    assert {d["kind"] for d in docs} == {
        "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"}
    for d in docs:
        assert d["metadata"]["namespace"] == "mrad"


def normalised(doc):
    """An object without what only Helm adds: its labels (in selectors too),
    the pod's config checksum; and the Secret's value, which differs by
    design (a placeholder in k8s/, a random key from the chart)."""
    doc = copy.deepcopy(doc)

    def strip(labels):
        for k in HELM_LABELS:
            labels.pop(k, None)

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("labels", "matchLabels", "selector") and isinstance(value, dict):
                    strip(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(doc)
    annotations = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations")
    if annotations is not None:
        annotations.pop("checksum/config", None)
        if not annotations:
            doc["spec"]["template"]["metadata"].pop("annotations")
    if doc["kind"] == "Secret":
        keys = sorted({**doc.get("data", {}), **doc.get("stringData", {})})
        doc.pop("data", None)
        doc.pop("stringData", None)
        doc["keys"] = keys
    if doc["kind"] == "Deployment":
        # The chart leaves the count to the autoscaler.
        doc["spec"].pop("replicas", None)
    return doc


def test_defaults_render_the_manifests():
    chart = objects(helm_render())
    shipped = manifests()
    assert set(chart) == set(shipped) - {("Namespace", "mrad")}
    for key, doc in chart.items():
        assert normalised(doc) == normalised(shipped[key]), key
    assert "replicas" not in chart[("Deployment", "mrad")]["spec"]


def test_prometheus_rule_is_the_rules_file():
    (rule,) = [d for d in helm_render() if d["kind"] == "PrometheusRule"]
    with open(RULES, encoding="utf-8") as f:
        assert rule["spec"] == yaml.safe_load(f)
    assert rule["metadata"]["labels"]["release"] == "prometheus"


@pytest.mark.parametrize("values", [
    {"gpu": {"count": 4}, "apiKey": {"existingSecret": "team-key", "secretKey": "token"},
     "image": {"repository": "registry.example/mrad", "tag": "0.1.0-cuda"},
     "resources": {"requests": {"cpu": "8", "memory": "16Gi"}, "limits": {"memory": "64Gi"}}},
    {"gpu": {"count": 0}, "image": {"tag": "cpu"}, "apiKey": {"enabled": False}},
    {"autoscaling": {"enabled": False}, "replicaCount": 3, "podDisruptionBudget": {"enabled": False},
     "serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
    {"config": {"MRAD_DEVICES": "0,1", "MRAD_MAX_QUEUE": 64}, "gpu": {"count": 2},
     "apiKey": {"value": "k" * 40}},
    {"proxy": {"enabled": False}},
    {"proxy": {"replicas": 4, "resolver": "coredns.kube-system.svc.cluster.local",
               "clusterDomain": "example.internal", "podDisruptionBudget": {"enabled": False},
               "service": {"type": "LoadBalancer"}, "image": {"tag": "1.26"}}},
])
def test_values_render_valid_objects(values):
    docs = helm_render(values)
    for doc in docs:
        validate_k8s(doc)


def test_gpu_count():
    for count in (1, 4):
        docs = helm_render({"gpu": {"count": count}})
        res = container(docs)["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == str(count)
        assert config(docs)["MRAD_DEVICES"] == "all" and config(docs)["MRAD_BACKEND"] == "cuda"
        assert pod_spec(docs)["tolerations"][0]["key"] == "nvidia.com/gpu"
    docs = helm_render({"gpu": {"count": 0}, "image": {"tag": "cpu"}})
    res = container(docs)["resources"]
    assert "nvidia.com/gpu" not in res["limits"] and "nvidia.com/gpu" not in res["requests"]
    assert config(docs)["MRAD_BACKEND"] == "cpu"
    assert "tolerations" not in pod_spec(docs)
    assert container(docs)["image"] == "mrad:cpu"


def test_resources_keep_the_gpus():
    # Given values merge into the defaults (Helm merges maps); the GPUs
    # come from gpu.count whatever the resources say.
    docs = helm_render({"gpu": {"count": 2},
                        "resources": {"requests": {"cpu": "6"}, "limits": {"memory": "40Gi"}}})
    res = container(docs)["resources"]
    assert res == {"requests": {"cpu": "6", "memory": "4Gi", "nvidia.com/gpu": "2"},
                   "limits": {"cpu": "8", "memory": "40Gi", "nvidia.com/gpu": "2"}}
    docs = helm_render({"gpu": {"count": 1},
                        "resources": {"limits": {"nvidia.com/gpu": "3"}}})
    assert container(docs)["resources"]["limits"]["nvidia.com/gpu"] == "1"


def key_mount(docs):
    ctr, pod = container(docs), pod_spec(docs)
    key_file = config(docs).get("MRAD_API_KEY_FILE")
    if key_file is None:
        return None
    key_dir, key_name = os.path.split(key_file)
    (mount,) = [m for m in ctr["volumeMounts"] if m["mountPath"] == key_dir]
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return vol["secret"]["secretName"], key_name


def test_api_key_secret():
    # The chart's own Secret: a random key by default, the value given else.
    docs = helm_render()
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert key_mount(docs) == (secret["metadata"]["name"], "api-key")
    assert len(secret["data"]["api-key"]) >= 64  # 48 characters, base64
    other = [d for d in helm_render() if d["kind"] == "Secret"][0]
    assert other["data"]["api-key"] != secret["data"]["api-key"]
    docs = helm_render({"apiKey": {"value": "s3cret"}})
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert secret["data"]["api-key"] == "czNjcmV0"
    # An existing Secret: none made, that one mounted under its key.
    docs = helm_render({"apiKey": {"existingSecret": "team-key", "secretKey": "token"}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert key_mount(docs) == ("team-key", "token")
    # No key at all: no Secret, no mount, no MRAD_API_KEY_FILE.
    docs = helm_render({"apiKey": {"enabled": False}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert key_mount(docs) is None
    assert [m["name"] for m in container(docs)["volumeMounts"]] == ["tmp"]


def test_autoscaling_and_replicas():
    docs = objects(helm_render({"autoscaling": {"enabled": True, "minReplicas": 3,
                                                "maxReplicas": 16, "targetQueueDepth": 4}}))
    hpa = docs[("HorizontalPodAutoscaler", "mrad")]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 16)
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "4"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mrad"
    assert "replicas" not in docs[("Deployment", "mrad")]["spec"]
    docs = objects(helm_render({"autoscaling": {"enabled": False}, "replicaCount": 3}))
    assert ("HorizontalPodAutoscaler", "mrad") not in docs
    assert docs[("Deployment", "mrad")]["spec"]["replicas"] == 3


def test_operator_objects_can_be_left_out():
    kinds = {d["kind"] for d in helm_render({"serviceMonitor": {"enabled": False},
                                             "prometheusRule": {"enabled": False}})}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    docs = helm_render({"serviceMonitor": {"labels": {"release": "kps"}}})
    (mon,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert mon["metadata"]["labels"]["release"] == "kps"


def test_names_follow_the_release():
    docs = objects(helm_render(name="edge", namespace="serving"))
    assert ("Deployment", "edge-mrad") in docs and ("ConfigMap", "edge-mrad-config") in docs
    dep = docs[("Deployment", "edge-mrad")]
    assert dep["metadata"]["namespace"] == "serving"
    svc = docs[("Service", "edge-mrad")]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"]["app.kubernetes.io/instance"] == "edge"
    mon = docs[("ServiceMonitor", "edge-mrad")]
    assert mon["spec"]["namespaceSelector"]["matchNames"] == ["serving"]


def test_proxy_values():
    docs = objects(helm_render(name="edge", namespace="serving", values={
        "proxy": {"replicas": 4, "clusterDomain": "example.internal",
                  "resolver": "10.96.0.10"}}))
    dep = docs[("Deployment", "edge-mrad-proxy")]
    assert dep["spec"]["replicas"] == 4
    conf = docs[("ConfigMap", "edge-mrad-proxy-config")]["data"]["nginx.conf"]
    assert "set $mrad_replicas edge-mrad-replicas.serving.svc.example.internal;" in conf
    assert "resolver 10.96.0.10 " in conf
    assert ("Service", "edge-mrad-replicas") in docs
    # A new configuration rolls the proxy's pods.
    other = objects(helm_render(name="edge", namespace="serving"))
    ann = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert ann != other[("Deployment", "edge-mrad-proxy")]["spec"]["template"]["metadata"][
        "annotations"]["checksum/config"]
    # Off: no proxy object; the headless Service stays (it names the pods).
    names = {n for _, n in objects(helm_render({"proxy": {"enabled": False}}))}
    assert not {n for n in names if "proxy" in n} and "mrad-replicas" in names


def test_shutdown_fits_the_grace_period():
    docs = helm_render({"shutdown": {"preStopSeconds": 10, "drainTimeoutMs": 60000,
                                     "terminationGracePeriodSeconds": 80}})
    ctr = container(docs)
    assert ctr["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sleep", "10"]
    assert config(docs)["MRAD_DRAIN_TIMEOUT_MS"] == "60000"
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 80


@pytest.mark.parametrize("values,message", [
    ({"shutdown": {"terminationGracePeriodSeconds": 30}}, "terminationGracePeriodSeconds"),
    ({"gpu": {"count": -1}}, "minimum"),
    ({"config": {"MRAD_PORT": "9000"}}, "MRAD_PORT"),
    ({"config": {"max_queue": "1"}}, "max_queue"),
    ({"imagee": {}}, "imagee"),
    ({"proxy": {"replicas": 0}}, "minimum"),
    ({"proxy": {"resolvr": "x"}}, "resolvr"),
])
def test_chart_refuses(values, message):
    with pytest.raises(Exception, match=message):
        helm_render(values)


def test_notes_say_how_to_reach_it():
    notes = helm_notes()
    assert "port-forward svc/mrad 8080:8080" in notes and "Authorization: Bearer" in notes
    assert "prometheus-adapter/values.yaml" in notes
    assert "port-forward svc/mrad-proxy 8080:8080" in notes
