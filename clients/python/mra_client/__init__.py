"""mra_client: the Python client of mrad, the MRA-2 attention service.

    from mra_client import Client
    c = Client("http://127.0.0.1:8080")
    r = c.attention(q, k, v, method="mra2")   # numpy in, r.out numpy out
    print(r.stats["density"])

    with c.kv(k, v) as s:                     # keys and values kept there
        r = s.attend(q1, k_append=k1, v_append=v1, causal=True)

See Client.attention for dtypes (bf16 included), Client.kv and Session for
sessions, and the errors module for the exceptions raised.
"""
from .client import Client, Result, Session
from .errors import (BadRequest, DeadlineExceeded, InternalError, KVCacheFull,
                     KVNotFound, MradError, NotFound, Overloaded,
                     PayloadTooLarge, TransportError, Unauthorized,
                     Unavailable, UnsupportedMediaType)
from .wire import bf16_to_f32, encode_request, f32_to_bf16

__all__ = ["Client", "Result", "Session", "MradError", "BadRequest",
           "Unauthorized", "NotFound", "KVNotFound", "PayloadTooLarge",
           "UnsupportedMediaType", "Overloaded", "Unavailable",
           "DeadlineExceeded", "KVCacheFull", "InternalError",
           "TransportError", "encode_request", "f32_to_bf16", "bf16_to_f32"]
__version__ = "1.0.0"
