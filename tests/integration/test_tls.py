"""HTTPS with --tls-cert/--tls-key (libmicrohttpd on GnuTLS), against a
certificate made at test time with openssl (no key is kept in the tree);
also the --isa flag and the mrad_queue_capacity gauge."""
import http.client
import json
import os
import shutil
import ssl
import subprocess

import numpy as np
import pytest

from mrad_server import MradServer, decode_answer, encode_msgpack, metric_value


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the test certificate (tools/deps.sh installs it)")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "1",
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return str(crt), str(key)


class TlsServer(MradServer):
    """MradServer whose probes go over HTTPS (startup polls /healthz)."""

    def __init__(self, crt, *a, **kw):
        super().__init__(*a, **kw)
        self.ctx = ssl.create_default_context(cafile=crt)

    def connection(self, timeout=60.0):
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                           context=self.ctx)


def test_https_serves_requests_and_refuses_plain_http(cert):
    crt, key = cert
    with TlsServer(crt, ["--tls-cert", crt, "--tls-key", key], threads=1) as srv:
        assert srv.get("/healthz")[0] == 200
        q = np.random.default_rng(1).standard_normal((1, 2, 70, 16)).astype(np.float32)
        status, hdrs, body = srv.post(encode_msgpack(q, q, q, method="exact"))
        assert status == 200
        out, stats, _ = decode_answer(body, hdrs["content-type"])
        assert out.shape == q.shape and stats["method"] == "exact"
        # A client that does not trust the certificate refuses it.
        bare = http.client.HTTPSConnection(srv.host, srv.port, timeout=10,
                                           context=ssl.create_default_context())
        with pytest.raises(ssl.SSLError):
            bare.request("GET", "/healthz")
        bare.close()
        # Plain HTTP on the TLS port gets no HTTP answer.
        plain = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse().read()
        plain.close()
        # curl, a second real client, when it is there.
        if shutil.which("curl"):
            r = subprocess.run(["curl", "-sS", "--cacert", crt, "-o", "/dev/null", "-w",
                                "%{http_code}", f"https://127.0.0.1:{srv.port}/readyz"],
                               capture_output=True, text=True, timeout=30)
            assert r.stdout == "200", r.stderr
        assert srv.get("/healthz")[0] == 200
        assert srv.stop() == 0


def test_tls_flags_are_checked(cert, tmp_path):
    crt, key = cert
    for args in (["--tls-cert", crt], ["--tls-key", key]):
        r = subprocess.run([MradServer().binary, *args], capture_output=True, text=True)
        assert r.returncode == 2 and "go together" in r.stderr
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    r = subprocess.run([MradServer().binary, "--port", "0", "--backend", "cpu",
                        "--tls-cert", crt, "--tls-key", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "TLS" in r.stderr
    # The key's contents never reach the log.
    assert "not a key" not in r.stderr


def test_isa_flag_reaches_the_backend_and_info():
    with MradServer(["--isa", "portable"], threads=1) as srv:
        info = json.loads(srv.get("/v1/info")[2])
        assert "portable" in info["device"]
        q = np.ones((1, 1, 32, 8), np.float32)
        out, _ = srv.attention(q, q, q)
        assert np.allclose(out, 1.0)
    with MradServer(threads=1, env={"MRAD_ISA": "portable"}) as srv:
        assert "portable" in json.loads(srv.get("/v1/info")[2])["device"]
    # the flag wins over the variable, "auto" too: the best this CPU runs
    with MradServer(["--isa", "auto"], threads=1) as srv:
        best = json.loads(srv.get("/v1/info")[2])["device"]
    with MradServer(["--isa", "auto"], threads=1,
                    env={"MRAD_ISA": "portable"}) as srv:
        assert json.loads(srv.get("/v1/info")[2])["device"] == best
    r = subprocess.run([MradServer().binary, "--isa", "sse9"], capture_output=True, text=True)
    assert r.returncode == 2 and "--isa" in r.stderr
    out = subprocess.run([MradServer().binary, "--help"], capture_output=True, text=True).stdout
    assert "--isa" in out and "MRAD_ISA" in out


def test_queue_capacity_gauge():
    with MradServer(["--max-queue", "77"], threads=1) as srv:
        assert metric_value(srv.metrics(), "mrad_queue_capacity") == 77
