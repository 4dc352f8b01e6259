"""mra_client: the Python client of mrad, the MRA-2 attention service.

    from mra_client import Client
    c = Client("http://127.0.0.1:8080")
    r = c.attention(q, k, v, method="mra2")   # numpy or torch in, same out
    print(r.stats["density"])

    with c.kv(k, v) as s:                     # keys and values kept there
        r = s.attend(q1, k_append=k1, v_append=v1, causal=True)

AsyncClient (mra_client.aio) has the same methods as coroutines;
mra_client.hf runs a transformers model's attention on the service.  See
Client.attention for dtypes (bf16 included), Client.kv and Session for
sessions, and the errors module for the exceptions raised.
"""
from importlib import resources as _resources

from ._core import Result, RetryPolicy
from .aio import AsyncClient, AsyncSession
from .client import Client, Session
from .errors import (BadRequest, DeadlineExceeded, InternalError, KVCacheFull,
                     KVNotFound, MradError, NotFound, Overloaded,
                     PayloadTooLarge, TransportError, Unauthorized,
                     Unavailable, UnsupportedMediaType)
from .tensors import bf16_to_f32, f32_to_bf16
from .wire import encode_request

__all__ = ["Client", "AsyncClient", "Result", "Session", "AsyncSession",
           "RetryPolicy", "MradError", "BadRequest", "Unauthorized", "NotFound",
           "KVNotFound", "PayloadTooLarge", "UnsupportedMediaType", "Overloaded",
           "Unavailable", "DeadlineExceeded", "KVCacheFull", "InternalError",
           "TransportError", "encode_request", "f32_to_bf16", "bf16_to_f32",
           "__version__"]

# The project's one version string: the file VERSION at the repository's
# root, which the package carries (mra_client/VERSION links to it) and the
# Makefile compiles into mrad, mractl and mra-load.
__version__: str = _resources.files(__name__).joinpath("VERSION").read_text().strip()
