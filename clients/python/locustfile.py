"""Locust load test of mrad (https://locust.io):

    pip install locust
    MRA_SHAPE=1,8,1024,64 MRA_METHOD=mra2 MRA_DTYPE=f32 \\
        locust -f clients/python/locustfile.py --host http://127.0.0.1:8080

Each simulated user posts the same random msgpack body back to back (or
with MRA_WAIT seconds between requests).  503 answers are reported as
failures named "overloaded" so the saturation point is visible in the UI.
MRA_API_KEY sets a bearer token.  Needs mra_client installed
(pip install ./clients/python).  For open-loop measurements without
coordinated omission use bin/mra-load.
"""
import os

import numpy as np
from locust import HttpUser, constant, task

from mra_client import encode_request

_SHAPE = [int(x) for x in os.environ.get("MRA_SHAPE", "1,8,1024,64").split(",")]
_METHOD = os.environ.get("MRA_METHOD", "mra2")
_DTYPE = os.environ.get("MRA_DTYPE", "f32")


def _body():
    B, H, N, D = _SHAPE
    rng = np.random.default_rng(int(os.environ.get("MRA_SEED", "0")))
    q, k, v = (rng.uniform(-1, 1, (B, H, N, D)).astype(np.float32) for _ in range(3))
    return encode_request(q, k, v, method=_METHOD, dtype=_DTYPE)


_BODY = _body()
_HEADERS = {"Content-Type": "application/msgpack"}
if os.environ.get("MRA_API_KEY"):
    _HEADERS["Authorization"] = "Bearer " + os.environ["MRA_API_KEY"]


class AttentionUser(HttpUser):
    wait_time = constant(float(os.environ.get("MRA_WAIT", "0")))

    @task
    def attention(self):
        name = f"/v1/attention {_METHOD} {_DTYPE} {','.join(map(str, _SHAPE))}"
        with self.client.post("/v1/attention", data=_BODY, headers=_HEADERS,
                              name=name, catch_response=True) as r:
            if r.status_code == 200:
                r.success()
            elif r.status_code == 503:
                r.failure("overloaded")
            else:
                r.failure(f"{r.status_code}: {r.text[:200]}")
