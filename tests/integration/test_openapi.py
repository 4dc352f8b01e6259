"""The OpenAPI document of the /v1 API (protocol/openapi.yaml) against the
validator, the daemon's route tables and error table, and the daemon
itself.

The document must be a valid OpenAPI document (openapi-spec-validator);
its paths and methods must be exactly the routes of server/api-*.c, with
the API key where the route's surface wants one; its error codes and
statuses must be those of server/errors.c; the daemon must serve it byte
for byte at GET /v1/openapi.yaml; and real answers of the daemon (JSON
and msgpack attention answers, error bodies, the session answer,
/v1/info, the probes) must be what the document says, status, media type,
headers and body (validated with jsonschema), as must the requests the
daemon accepts, while bodies it refuses are refused by the schemas too.
"""
import glob
import json
import os
import re

import jsonschema
import msgpack
import numpy as np
import referencing
import referencing.jsonschema
import yaml
from openapi_spec_validator import validate as validate_openapi

import wire
from mrad_server import REPO, MradServer

DOC_PATH = os.path.join(REPO, "protocol", "openapi.yaml")
DOC_BYTES = open(DOC_PATH, "rb").read()
DOC = yaml.safe_load(DOC_BYTES)
DOC_URI = "urn:mrad:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


# ---- the document and the sources -----------------------------------------------

def test_document_is_valid_openapi():
    assert DOC["openapi"].startswith("3.1.")
    validate_openapi(DOC)


def routes_of_the_daemon():
    """{(METHOD, path with "*" segments): needs the key} from the route
    tables of server/api-*.c and the key prefix of each surface; the
    document describes /v1 and the probes, not the /v2 surface (KServe's
    own protocol)."""
    routes = {}
    files = sorted(glob.glob(os.path.join(REPO, "server", "api-*.c")))
    assert files
    for f in files:
        src = open(f).read()
        m = re.search(r"const struct mrad_api \w+ = \{[^;]*?\.key_prefix = "
                      r"(NULL|\"([^\"]*)\")", src, re.S)
        assert m, f"{f}: no struct mrad_api"
        prefix = m.group(2)
        if prefix == "/v2":
            continue
        table = re.search(r"static const struct mrad_route routes\[\] = \{(.*?)\n\};",
                          src, re.S)
        assert table, f"{f}: no route table"
        for method, path in re.findall(r"\{\s*\"([A-Z]+)\",\s*\"([^\"]+)\"",
                                       table.group(1)):
            routes[(method, path)] = prefix is not None and path.startswith(prefix)
    # Every surface of server/routes.c has its file, and the other way.
    listed = re.findall(r"&(mrad_api_\w+)", open(os.path.join(REPO, "server",
                                                              "routes.c")).read())
    assert sorted(listed) == sorted("mrad_api_" + os.path.basename(f)[4:-2]
                                    for f in files)
    return routes


def routes_of_the_document():
    """{(METHOD, path with "*" segments): needs the key}."""
    routes = {}
    top = DOC.get("security", [])
    for path, item in DOC["paths"].items():
        star = re.sub(r"\{[^/}]+\}", "*", path)
        for method in METHODS:
            if method in item:
                security = item[method].get("security", top)
                routes[(method.upper(), star)] = bool(security)
    return routes


def test_document_has_every_route_and_no_other():
    served, documented = routes_of_the_daemon(), routes_of_the_document()
    assert sorted(served) == sorted(documented)
    # The key: under /v1/ the bearer scheme, elsewhere none.
    assert served == documented
    for op in (item[m] for item in DOC["paths"].values() for m in METHODS
               if m in item):
        for req in op.get("security", DOC["security"]):
            assert set(req) <= set(DOC["components"]["securitySchemes"])


def test_spec_lists_every_route():
    spec = open(os.path.join(REPO, "protocol", "SPEC.md")).read()
    for path, item in DOC["paths"].items():
        for method in METHODS:
            if method in item:
                assert f"`{method.upper()} {path}`" in spec, (method, path)


def errors_of_the_daemon():
    """{code: status} of the error table (server/errors.c)."""
    src = open(os.path.join(REPO, "server", "errors.c")).read()
    rows = re.findall(r"\{MRAD_SRC_\w+,\s*\w+,\s*(\d+),\s*\"(\w+)\"\}", src)
    assert rows
    table = {}
    for status, code in rows:
        assert table.setdefault(code, int(status)) == int(status), code
    # 499 is the access log's word for a client gone before its answer:
    # no answer carries it.
    assert table.pop("client_closed_request") == 499
    return table


def deref(obj):
    """An OpenAPI object, following a $ref into the document."""
    while "$ref" in obj:
        obj = resolve_pointer(obj["$ref"])
    return obj


def resolve_pointer(ref):
    assert ref.startswith("#/")
    node = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def error_codes_allowed(schema):
    """The codes an error answer's schema narrows the Error schema to
    (None when it does not)."""
    schema = deref(schema)
    subs = schema.get("allOf", [])
    if {"$ref": "#/components/schemas/Error"} not in subs:
        return None
    for sub in subs:
        code = sub.get("properties", {}).get("error", {}) \
            .get("properties", {}).get("code")
        if code is not None:
            return {code["const"]} if "const" in code else set(code["enum"])
    return None


def test_error_codes_and_statuses_match_the_daemon():
    table = errors_of_the_daemon()
    codes = DOC["components"]["schemas"]["ErrorCode"]
    assert sorted(codes["enum"]) == sorted(table)
    words = " ".join(codes["description"].split())
    for code, status in table.items():
        assert f"`{code}` {status}" in words, code
    # Every documented error answer has the Error schema, and the codes it
    # allows answer with its status.
    for path, item in DOC["paths"].items():
        for method in (m for m in METHODS if m in item):
            for status, resp in item[method]["responses"].items():
                if int(status) < 400:
                    continue
                schema = deref(resp)["content"]["application/json"]["schema"]
                allowed = error_codes_allowed(schema)
                assert allowed, (path, method, status)
                for code in allowed:
                    assert table[code] == int(status), (path, method, status, code)


def test_request_keys_are_the_codecs():
    """The request's keys in the document are those of the codec
    (protocol/request.c), and so are the session bodies'."""
    src = open(os.path.join(REPO, "protocol", "request.c")).read()
    names = re.search(r"rkey_names\[[^\]]*\] = \{(.*?)\};", src, re.S)
    assert names
    codec = set(re.findall(r"\"(\w+)\"", names.group(1)))
    schemas = DOC["components"]["schemas"]
    doc = set(schemas["AttentionParams"]["properties"]) | \
        set(schemas["AttentionRequest"]["properties"])
    assert doc == codec
    kv_names = re.search(r"names\[4\] = \{(.*?)\};", src, re.S)
    assert set(re.findall(r"\"(\w+)\"", kv_names.group(1))) == \
        set(schemas["SessionCreate"]["properties"])
    assert set(schemas["SessionAppend"]["properties"]) == \
        set(schemas["SessionCreate"]["properties"]) - {"ttl_ms"}


# ---- validating against the document ------------------------------------------------

def _is_string(checker, instance):
    # A msgpack bin decodes to bytes: the document's `format: binary`.
    return isinstance(instance, (str, bytes))


VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "string", _is_string))
REGISTRY = referencing.Registry().with_resource(
    DOC_URI, referencing.Resource.from_contents(
        DOC, default_specification=referencing.jsonschema.DRAFT202012))


def validator(pointer):
    """A validator of the schema at `pointer` (a JSON pointer into the
    document), its $refs resolved in the document."""
    return VALIDATOR({"$ref": DOC_URI + "#" + pointer}, registry=REGISTRY)


def esc(s):
    return s.replace("~", "~0").replace("/", "~1")


def follow(pointer):
    """(pointer, object) of the OpenAPI object at `pointer`, after the
    $refs it leads through."""
    obj = resolve_pointer("#" + pointer)
    while "$ref" in obj:
        pointer = obj["$ref"][1:]
        obj = resolve_pointer(obj["$ref"])
    return pointer, obj


def schema_pointer(base, media):
    """The pointer of the schema of `media` in the content of the request
    body or response at `base` (a pointer)."""
    base, obj = follow(base)
    assert media in obj["content"], (base, media, sorted(obj["content"]))
    return f"{base}/content/{esc(media)}/schema"


def operation(method, path):
    return f"/paths/{esc(path)}/{method.lower()}"


def check_request(method, path, media, body, valid=True):
    """A request body (the Python object) against the document."""
    v = validator(schema_pointer(operation(method, path) + "/requestBody", media))
    errors = list(v.iter_errors(body))
    if valid:
        assert not errors, [e.message for e in errors]
    else:
        assert errors, f"the document accepts a body the daemon refuses: {body!r}"


def check_answer(method, path, answer):
    """An answer of the daemon to `method path` (path as in the document)
    is one the document describes: a documented status, a documented media
    type, a body that validates, the documented headers well formed.
    Returns the decoded body."""
    status, headers, body = answer
    responses = resolve_pointer("#" + operation(method, path))["responses"]
    assert str(status) in responses, (method, path, status)
    base, resp = follow(operation(method, path) + f"/responses/{status}")
    for name in resp.get("headers", {}):
        value = headers.get(name.lower())
        if value is None:
            continue
        hp, h = follow(f"{base}/headers/{esc(name)}")
        integer = deref(h["schema"]).get("type") == "integer"
        validator(hp + "/schema").validate(int(value) if integer else value)
    if "content" not in resp:
        assert body == b"", (method, path, status)
        return None
    media = headers.get("content-type", "").split(";")[0].strip()
    if media == "application/json":
        data = json.loads(body)
    elif media == "application/msgpack":
        data = msgpack.unpackb(body, raw=False)
    else:
        data = body.decode()
    errors = list(validator(schema_pointer(base, media)).iter_errors(data))
    assert not errors, [e.message for e in errors]
    return data


# ---- the daemon -----------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
MSGPACK = {"Content-Type": "application/msgpack"}


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def post(srv, path, body, headers):
    return srv.request("POST", path, body=body, headers=headers)


def test_daemon_serves_the_document_byte_for_byte(mrad):
    status, headers, body = mrad.get("/v1/openapi.yaml")
    assert status == 200
    assert headers["content-type"] == "application/yaml"
    assert body == DOC_BYTES
    check_answer("GET", "/v1/openapi.yaml", (status, headers, body))
    status, headers, body = mrad.request("HEAD", "/v1/openapi.yaml")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == len(DOC_BYTES)


def test_the_document_needs_the_key_when_the_daemon_has_keys(tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text("openapi-test-key\n")
    with MradServer(["--api-key-file", str(keyfile)], threads=1) as srv:
        answer = srv.get("/v1/openapi.yaml")
        assert answer[0] == 401
        assert answer[1]["www-authenticate"] == "Bearer"
        check_answer("GET", "/v1/openapi.yaml", answer)
        answer = srv.get("/v1/openapi.yaml",
                         headers={"Authorization": "Bearer openapi-test-key"})
        assert answer[0] == 200 and answer[2] == DOC_BYTES
        info = check_answer("GET", "/v1/info", srv.get(
            "/v1/info", headers={"Authorization": "Bearer openapi-test-key"}))
        assert info["auth"] is True
        # The probes are open.
        check_answer("GET", "/healthz", srv.get("/healthz"))


def test_attention_answers_match_the_document(mrad):
    q, k = rand(1, 2, 40, 8, seed=1), rand(1, 1, 50, 8, seed=2)
    mask = np.ones((1, 50), np.uint8)
    mask[0, -3:] = 0
    # JSON, with every parameter of the request table.
    req = json.loads(wire.encode_request(
        q, k, k, mask=mask, fmt="json", method="mra2", block_per_row=2,
        prior_first=1, prior_diagonal=1, scale=0.5, timeout_ms=5000,
        id="openapi-1", causal=True, q_mask=np.ones((1, 40), np.uint8)))
    req["num_blocks"] = 3
    check_request("POST", "/v1/attention", "application/json", req)
    answer = post(mrad, "/v1/attention", json.dumps(req).encode(), JSON)
    assert answer[0] == 200, answer[2]
    got = check_answer("POST", "/v1/attention", answer)
    assert got["id"] == "openapi-1" and got["out"]["shape"] == [1, 2, 40, 8]
    # msgpack: the same schema, with data as bin.
    req = msgpack.unpackb(wire.encode_request(q, k, k, dtype="f16",
                                              method="exact"), raw=False)
    check_request("POST", "/v1/attention", "application/msgpack", req)
    answer = post(mrad, "/v1/attention", msgpack.packb(req), MSGPACK)
    assert answer[0] == 200
    got = check_answer("POST", "/v1/attention", answer)
    assert isinstance(got["out"]["data"], bytes) and "id" not in got


def test_error_answers_match_the_document(mrad):
    q = rand(1, 1, 4, 8)
    good = json.loads(wire.encode_request(q, q, q, fmt="json"))
    # 400: the document refuses what the daemon refuses.
    bad_bodies = [
        {k: v for k, v in good.items() if k != "k"},        # k missing
        dict(good, blocks=1),                                # unknown key
        dict(good, block_per_row=0),                         # out of range
        dict(good, block_per_row=2 ** 32),
        dict(good, prior_first=-1),
        dict(good, num_blocks=0),
        dict(good, timeout_ms=0),
        dict(good, scale=0),
        dict(good, scale="1"),
        dict(good, causal=1),                                # not a boolean
        dict(good, method="mra3"),
        dict(good, id="x" * 129),
        dict(good, kv="a/b"),                                # not an id
        dict(good, kv="abc"),                                # kv and k
        dict(good, k_append=good["k"], v_append=good["v"]),  # without kv
        dict(good, q=dict(good["q"], dtype="u8")),
        dict(good, q=dict(good["q"], shape=[1, 4, 8])),
        dict(good, q=dict(good["q"], layout="C")),
        dict(good, mask={"dtype": "u8", "shape": [1, 4], "data": [1, 2, 1, 1]}),
        dict(good, mask={"dtype": "u8", "shape": [1, 4],
                         "data": [True, True, True, True]}),
    ]
    for b in bad_bodies:
        check_request("POST", "/v1/attention", "application/json", b, valid=False)
        answer = post(mrad, "/v1/attention", json.dumps(b).encode(), JSON)
        assert answer[0] == 400, (b, answer)
        assert check_answer("POST", "/v1/attention", answer)["error"]["code"] == \
            "bad_request"
    # 415, 404 kv_not_found, 413.
    answer = post(mrad, "/v1/attention", b"{}", {"Content-Type": "text/plain"})
    assert answer[0] == 415
    check_answer("POST", "/v1/attention", answer)
    missing = dict(good, kv="0" * 32)
    del missing["k"], missing["v"]
    check_request("POST", "/v1/attention", "application/json", missing)
    answer = post(mrad, "/v1/attention", json.dumps(missing).encode(), JSON)
    assert answer[0] == 404 and answer[1]["x-mrad-kv"] == "0" * 32
    check_answer("POST", "/v1/attention", answer)
    big = json.loads(wire.encode_request(rand(1, 1, 4, 300), rand(1, 1, 4, 300),
                                         rand(1, 1, 4, 300), fmt="json"))
    answer = post(mrad, "/v1/attention", json.dumps(big).encode(), JSON)
    assert answer[0] == 413
    check_answer("POST", "/v1/attention", answer)
    # Unknown paths and wrong methods: the Error schema, their codes.
    v = validator("/components/schemas/Error")
    for method, path, status, code in [("GET", "/nowhere", 404, "not_found"),
                                       ("GET", "/v1/nowhere", 404, "not_found"),
                                       ("GET", "/v1/attention", 405,
                                        "method_not_allowed"),
                                       ("PUT", "/v1/kv/abc", 405,
                                        "method_not_allowed")]:
        st, hd, b = mrad.request(method, path)
        assert st == status and hd["content-type"] == "application/json"
        v.validate(json.loads(b))
        assert json.loads(b)["error"]["code"] == code


def test_session_answers_match_the_document(mrad):
    k = rand(1, 2, 6, 8, seed=3)
    create = {"k": wire.tensor(k, "f32", "json"), "v": wire.tensor(k, "f32", "json"),
              "mask": wire.tensor(np.ones((1, 6), np.uint8), "u8", "json"),
              "ttl_ms": 60000}
    check_request("POST", "/v1/kv", "application/json", create)
    check_request("POST", "/v1/kv", "application/json", dict(create, ttl_ms=0),
                  valid=False)
    answer = post(mrad, "/v1/kv", json.dumps(create).encode(), JSON)
    assert answer[0] == 201, answer[2]
    info = check_answer("POST", "/v1/kv", answer)
    sid = info["kv"]
    assert answer[1]["x-mrad-kv"] == sid and re.fullmatch(r"[0-9a-f]{32}", sid)
    assert info["shape"] == [1, 2, 6, 8] and info["tokens"] == 6
    # Append (msgpack in, JSON out), then what it holds.
    append = msgpack.unpackb(wire.pack({"k": wire.tensor(k[:, :, :2], "f32"),
                                        "v": wire.tensor(k[:, :, :2], "f32")},
                                       "msgpack"), raw=False)
    check_request("POST", "/v1/kv/{id}/append", "application/msgpack", append)
    check_request("POST", "/v1/kv/{id}/append", "application/json",
                  dict(create), valid=False)  # ttl_ms only at create
    answer = post(mrad, f"/v1/kv/{sid}/append", msgpack.packb(append), MSGPACK)
    assert answer[0] == 200
    assert answer[1]["content-type"] == "application/json"
    assert check_answer("POST", "/v1/kv/{id}/append", answer)["tokens"] == 8
    answer = mrad.get(f"/v1/kv/{sid}")
    assert check_answer("GET", "/v1/kv/{id}", answer)["shape"] == [1, 2, 8, 8]
    # A step on the session, both ways of naming it.
    q = rand(1, 4, 1, 8, seed=4)
    step = {"kv": sid, "causal": True, "q": wire.tensor(q, "f32", "json"),
            "k_append": wire.tensor(q[:, :2], "f32", "json"),
            "v_append": wire.tensor(q[:, :2], "f32", "json")}
    check_request("POST", "/v1/attention", "application/json", step)
    answer = post(mrad, "/v1/attention", json.dumps(step).encode(), JSON)
    assert answer[0] == 200 and answer[1]["x-mrad-kv"] == sid
    check_answer("POST", "/v1/attention", answer)
    on_path = {key: val for key, val in step.items() if key != "kv"}
    check_request("POST", "/v1/kv/{id}/attention", "application/json", on_path)
    check_request("POST", "/v1/kv/{id}/attention", "application/json", step,
                  valid=False)
    answer = post(mrad, f"/v1/kv/{sid}/attention", json.dumps(on_path).encode(),
                  JSON)
    assert answer[0] == 200, answer[2]
    check_answer("POST", "/v1/kv/{id}/attention", answer)
    bad = dict(on_path, mask_append=wire.tensor(np.ones((1, 1), np.uint8), "u8",
                                                "json"))
    del bad["k_append"], bad["v_append"]
    check_request("POST", "/v1/kv/{id}/attention", "application/json", bad,
                  valid=False)
    answer = post(mrad, f"/v1/kv/{sid}/attention", json.dumps(bad).encode(), JSON)
    assert answer[0] == 400
    check_answer("POST", "/v1/kv/{id}/attention", answer)
    # The end of it.
    answer = mrad.request("DELETE", f"/v1/kv/{sid}")
    assert answer[0] == 204 and answer[1]["x-mrad-kv"] == sid
    check_answer("DELETE", "/v1/kv/{id}", answer)
    for method, path in [("GET", "/v1/kv/{id}"), ("DELETE", "/v1/kv/{id}")]:
        answer = mrad.request(method, path.replace("{id}", sid))
        assert answer[0] == 404
        assert check_answer(method, path, answer)["error"]["code"] == "kv_not_found"


def test_sessions_full_is_507():
    with MradServer(["--kv-max-sessions", "0"], threads=1) as srv:
        k = rand(1, 1, 2, 8)
        create = {"k": wire.tensor(k, "f32", "json"), "v": wire.tensor(k, "f32", "json")}
        answer = post(srv, "/v1/kv", json.dumps(create).encode(), JSON)
        assert answer[0] == 507
        check_answer("POST", "/v1/kv", answer)


def test_info_and_probes_match_the_document(mrad):
    info = check_answer("GET", "/v1/info", mrad.get("/v1/info"))
    assert info["auth"] is False
    # Every key the daemon sends is documented, at every level.
    schema = DOC["components"]["schemas"]["Info"]
    assert set(info) == set(schema["properties"])
    for key, sub in schema["properties"].items():
        if sub.get("type") == "object":
            assert set(info[key]) == set(sub["properties"]), key
    assert check_answer("GET", "/healthz", mrad.get("/healthz")) == {"status": "ok"}
    assert check_answer("GET", "/readyz", mrad.get("/readyz")) == {"status": "ready"}
    status, headers, body = mrad.get("/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    check_answer("GET", "/metrics", (status, headers, body))
