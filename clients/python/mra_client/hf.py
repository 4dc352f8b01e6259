"""mra_client.hf: a transformers model's attention, computed by mrad.

    from transformers import AutoModel
    from mra_client import Client, hf

    attn = hf.register(Client("http://127.0.0.1:8080"), method="mra2",
                       block_per_row=8)
    model = AutoModel.from_pretrained(path, attn_implementation="mrad")
    attn.name_layers(model)           # optional: errors and stats by path
    with torch.no_grad():
        out = model(**inputs)
    attn.stats                        # per layer: the service's statistics
    attn.close()                      # ends the sessions it holds

register() adds an implementation to transformers' AttentionInterface (and
the matching mask builder to its AttentionMaskInterface), so every
attention layer of a model loaded or set with attn_implementation="mrad"
sends its queries, keys and values to the service, in the model's dtype
(f32, f16, bf16).  What a layer gets from transformers is translated into
a request of protocol/SPEC.md:

- grouped key/value heads go as they are (H a multiple of Hkv);
- the mask transformers builds (boolean, [B, 1, Nq, Nk]) becomes a key
  mask, a query mask and `causal`, and the keys that no query may see at
  the end (the unused slots of a static cache) are left out; a mask that
  is not of that form (a sliding window that is exceeded, an additive
  bias, a per-head mask, ...) raises UnsupportedAttention naming the
  layer, never a wrong answer.  A query that may see no key (left
  padding) answers 0; a padding query that the mask lets see keys (an
  encoder's) is computed as eager attention computes it, so it takes
  part in mra2's budget;
- the layer's scaling goes as `scale`.

Decoding with a key/value cache: a causal layer whose keys are its earlier
keys followed by its new tokens' keys keeps those earlier keys in a
resident session (protocol/SPEC.md "Sessions"), so each step sends only
its queries and its new tokens (not a layer whose is_causal is False, as
cross-attention's: its keys do not grow).  The handle checks on every
step that the cache still starts with what the session holds (a new
prompt, a cache that was cropped or reordered make a new session), and
keeps one session per layer, ended by close() (or when the service
expires it).  A cache updated in place (a static cache) cannot be
compared with what the session was given: from its second step on, such
a layer sends its whole cache each step, until the next prompt.

The service computes forward passes only: a call that needs gradients
raises UnsupportedAttention; run the model under torch.no_grad() (generate()
already does).  Attention weights are not returned (as with "sdpa").
"""
from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Optional

from ._core import Result
from .client import Client, Session
from .errors import KVNotFound, MradError
from .wire import ParamValue, check_call

if TYPE_CHECKING:
    import torch

__all__ = ["register", "MradAttention", "UnsupportedAttention"]

# Keyword arguments of attention layers that change what attention
# computes and that a request cannot carry.
_UNSUPPORTED_KWARGS = {
    "softcap": "logit soft-capping",
    "s_aux": "attention sinks",
    "sinks": "attention sinks",
    "position_bias": "an additive position bias",
}


class UnsupportedAttention(ValueError):
    """A layer asked for attention the service cannot compute exactly as
    asked (the message names the layer and what it asked)."""


class _Plan:
    """How a mask translates into a request: the first `n` keys are used,
    with key mask `km` ([B, n] bool, None = all real), query mask `qm`
    ([B, Nq] bool, None = all real) and `causal`; `empty`: no query may see
    any key."""

    __slots__ = ("n", "km", "qm", "causal", "empty")

    def __init__(self, n: int, km: Optional["torch.Tensor"], qm: Optional["torch.Tensor"],
                 causal: bool, empty: bool = False) -> None:
        self.n = n
        self.km = km
        self.qm = qm
        self.causal = causal
        self.empty = empty


class _Resident:
    """A layer's session and what it holds: views of the keys, values and
    key mask (None = all real) it was given, to compare the next step's
    cache with."""

    __slots__ = ("session", "k", "v", "km")

    def __init__(self, session: Session, k: "torch.Tensor", v: "torch.Tensor",
                 km: Optional["torch.Tensor"]) -> None:
        self.session = session
        self.k = k
        self.v = v
        self.km = km


def _all_true(m: Optional["torch.Tensor"]) -> bool:
    return m is None or bool(m.all())


def _same_mask(a: Optional["torch.Tensor"], b: Optional["torch.Tensor"]) -> bool:
    import torch

    if a is None or b is None:
        return _all_true(a) and _all_true(b)
    return a.shape == b.shape and torch.equal(a, b)


def _shares_storage(a: "torch.Tensor", b: "torch.Tensor") -> bool:
    return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


class MradAttention:
    """The attention implementation register() installs: a callable with
    transformers' attention signature, and what it keeps across calls.

    stats: layer name -> the service's statistics of that layer's last
    call (method, density, blocks_selected, blocks_total, compute_us, ...).
    Not for concurrent forward passes of one model; different models may
    share it.
    """

    def __init__(self, client: Client, method: str = "mra2", dtype: Optional[str] = None,
                 sessions: bool = True, name: str = "mrad",
                 **params: ParamValue) -> None:
        if not isinstance(client, Client):
            raise TypeError("mra_client.hf needs a (synchronous) mra_client.Client")
        if "scale" in params:
            raise TypeError("scale comes from each layer's scaling; do not pass it")
        check_call(method, params)
        self.client = client
        self.method = method
        self.dtype = dtype
        self.sessions = sessions
        self.name = name
        self.params = {k: v for k, v in params.items() if v is not None}
        self.stats: dict[str, dict[str, Any]] = {}
        self._names: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
        self._resident: "weakref.WeakKeyDictionary[Any, _Resident]" = weakref.WeakKeyDictionary()
        # layers whose cache is updated in place: no sessions until the
        # next prompt
        self._in_place: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._lock = threading.Lock()
        self._plan_of: Optional[tuple["weakref.ref[torch.Tensor]", tuple[int, ...], _Plan]] = None

    # -- naming and lifetime ------------------------------------------

    def name_layers(self, model: Any) -> None:
        """Names the layers of `model` by their paths in it
        ("encoder.layer.3.attention.self"), for stats and errors; without
        this a layer is named by its class and layer_idx (layer_name)."""
        for path, module in model.named_modules():
            self._names[module] = path or type(module).__name__

    def layer_name(self, module: Any) -> str:
        """The name of a layer in stats and errors: its path when
        name_layers() named it, else its class and layer_idx, with "#2",
        "#3", ... for the next layers of that name (an encoder-decoder has
        three attention layers of one index)."""
        name = self._names.get(module)
        if name is not None:
            return name
        idx = getattr(module, "layer_idx", None)
        base = type(module).__name__ + (f"[{idx}]" if idx is not None else "")
        taken = set(self._names.values())
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}#{n}"
        self._names[module] = name
        return name

    def close(self) -> None:
        """Ends the sessions the layers hold (DELETE); later calls make new
        ones."""
        with self._lock:
            residents = list(self._resident.values())
            self._resident.clear()
        for r in residents:
            try:
                r.session.close()
            except MradError:
                pass

    def __enter__(self) -> MradAttention:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the mask -----------------------------------------------------

    def _fail(self, module: Any, why: str) -> UnsupportedAttention:
        return UnsupportedAttention(
            f"mrad attention cannot compute layer {self.layer_name(module)}: {why}")

    def _plan(self, module: Any, mask: Optional["torch.Tensor"], B: int, Nq: int, Nk: int,
              kwargs: dict[str, Any]) -> _Plan:
        """The request a layer's mask translates into (cached for the mask
        object, which every layer of a forward pass shares)."""
        import torch

        if mask is None:
            # No mask: as transformers' sdpa, the layer's is_causal says
            # (top-left aligned: the keys beyond the queries are unused).
            causal = kwargs.get("is_causal")
            if causal is None:
                causal = getattr(module, "is_causal", False)
            causal = bool(causal) and Nq > 1
            return _Plan(min(Nk, Nq) if causal else Nk, None, None, causal)
        cached = self._plan_of
        if cached is not None and cached[0]() is mask and cached[1] == (B, Nq, Nk):
            return cached[2]
        if mask.dim() != 4:
            raise self._fail(module, f"a {mask.dim()}-d attention mask (want [B, 1, Nq, Nk])")
        if mask.shape[-1] != Nk or mask.shape[-2] not in (1, Nq) or mask.shape[0] not in (1, B):
            raise self._fail(module, f"a mask of shape {list(mask.shape)} for "
                                     f"{Nq} queries and {Nk} keys")
        m = mask
        if m.dtype != torch.bool:
            if not m.is_floating_point():
                m = m != 0
            else:
                low = torch.finfo(m.dtype).min / 2
                if not bool(((m == 0) | (m <= low)).all()):
                    raise self._fail(module, "an additive mask with values other than 0 and "
                                             "-inf (a bias, e.g. ALiBi): only a boolean "
                                             "pattern can be sent")
                m = m == 0
        m = m.expand(B, m.shape[1], Nq, Nk)
        if m.shape[1] > 1:
            if not bool((m == m[:, :1]).all()):
                raise self._fail(module, "a mask that differs between heads")
        m = m[:, 0]  # [B, Nq, Nk]
        qm = m.any(dim=2)  # [B, Nq]: queries that see some key
        km = m.any(dim=1)  # [B, Nk]: keys some query sees
        seen = km.any(dim=0).nonzero()
        if seen.numel() == 0:
            plan = _Plan(Nk, None, None, False, empty=True)
        else:
            # Keys no query may see at the end (the free slots of a static
            # cache) are left out, so that causal lines up with the last key.
            n = int(seen[-1]) + 1
            m, km = m[:, :, :n], km[:, :n]
            full = qm[:, :, None] & km[:, None, :]
            i = torch.arange(Nq, device=m.device)[:, None]
            j = torch.arange(n, device=m.device)[None, :]
            # Causal first: where both fit (one query), the step of a
            # decoder is causal, and its keys can stay in a session.
            if torch.equal(m, full & (j <= i + (n - Nq))):
                causal = True
            elif torch.equal(m, full):
                causal = False
            else:
                raise self._fail(module, "a mask that is neither full nor causal over "
                                         "key and query padding (a sliding window, "
                                         "chunks, packed sequences or a custom 4-d mask)")
            all_keys = bool(km.all())
            # Without q_mask the service takes the key mask for the
            # queries' when Nq == Nk, and would answer 0 for a padding
            # query that the mask lets see the real keys (an encoder's).
            plan = _Plan(n, None if all_keys else km,
                         None if bool(qm.all()) and (all_keys or n != Nq) else qm, causal)
        self._plan_of = (weakref.ref(mask), (B, Nq, Nk), plan)
        return plan

    # -- the call -----------------------------------------------------

    def __call__(self, module: Any, query: "torch.Tensor", key: "torch.Tensor",
                 value: "torch.Tensor", attention_mask: Optional["torch.Tensor"],
                 scaling: Optional[float] = None, dropout: float = 0.0,
                 **kwargs: Any) -> tuple["torch.Tensor", None]:
        """transformers' attention signature: query [B, H, Nq, D], key and
        value [B, Hkv, Nk, D]; returns the output [B, Nq, H, D] and no
        weights."""
        import torch

        for arg, what in _UNSUPPORTED_KWARGS.items():
            if kwargs.get(arg) is not None:
                raise self._fail(module, what)
        if dropout and getattr(module, "training", False):
            raise self._fail(module, f"attention dropout ({dropout}) in training mode")
        if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad
                                        or value.requires_grad):
            raise self._fail(module, "gradients (the service computes forward passes "
                                     "only): run the model under torch.no_grad()")
        if kwargs.get("output_attentions"):
            raise self._fail(module, "output_attentions=True (no weights come back)")
        B, H, Nq, D = query.shape
        Hkv, Nk = key.shape[1], key.shape[2]
        if H % Hkv:
            raise self._fail(module, f"{H} query heads over {Hkv} key heads")
        plan = self._plan(module, attention_mask, B, Nq, Nk, kwargs)
        name = self.layer_name(module)
        if plan.empty:
            return query.new_zeros(B, Nq, H, D), None
        scale = float(scaling) if scaling is not None else D ** -0.5
        params: dict[str, ParamValue] = dict(self.params, scale=scale)
        k, v = key[:, :, :plan.n], value[:, :, :plan.n]
        p = plan.n - Nq  # tokens before the queries' own
        # A layer that says it is not causal (cross-attention) has keys
        # that do not grow by the queries' tokens: one query's causal mask
        # is its full one, but a session would hold nothing worth keeping.
        stepping = (self.sessions and plan.causal and p > 0
                    and getattr(module, "is_causal", True) is not False)
        if not stepping:
            self._in_place.discard(module)  # a new prompt: perhaps another cache
        r = self._step(module, query, k, v, plan, p, params) if stepping else None
        if r is None:
            self._drop(module)
            r = self.client.attention(query, k, v, mask=plan.km, q_mask=plan.qm,
                                      causal=plan.causal, method=self.method,
                                      dtype=self.dtype, id=None, **params)
        self.stats[name] = r.stats
        out = r.out.to(query.dtype).transpose(1, 2).contiguous()
        return out, None

    # -- sessions -----------------------------------------------------

    def _drop(self, module: Any) -> None:
        with self._lock:
            old = self._resident.pop(module, None)
        if old is not None:
            try:
                old.session.close()
            except MradError:
                pass

    def _holds(self, st: _Resident, k: "torch.Tensor", v: "torch.Tensor",
               km: Optional["torch.Tensor"], p: int) -> bool:
        """Whether the session holds exactly the first p keys, values and
        key mask of this step."""
        import torch

        if st.k.shape[2] != p or st.k.shape[:2] != k.shape[:2] or st.k.dtype != k.dtype:
            return False
        return (torch.equal(st.k, k[:, :, :p]) and torch.equal(st.v, v[:, :, :p])
                and _same_mask(st.km, None if km is None else km[:, :p]))

    def _step(self, module: Any, q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor",
              plan: _Plan, p: int, params: dict[str, ParamValue]) -> Optional[Result[Any]]:
        """A causal step over a cache: the first p keys in the layer's
        session, the rest appended by the request.  None when the layer's
        cache is updated in place (the caller sends it whole)."""
        km = plan.km
        if module in self._in_place:
            return None
        with self._lock:
            st = self._resident.get(module)
        if st is not None and (_shares_storage(st.k, k) or _shares_storage(st.v, v)):
            # The cache was updated in place (a static cache): what the
            # session was given cannot be told from what the cache holds
            # now, and each step would need a new session.
            self._in_place.add(module)
            return None
        for attempt in (0, 1):
            if st is None or not self._holds(st, k, v, km, p):
                self._drop(module)
                s = self.client.kv(k[:, :, :p], v[:, :, :p],
                                   mask=None if km is None else km[:, :p], dtype=self.dtype)
                st = _Resident(s, k[:, :, :p], v[:, :, :p], None if km is None else km[:, :p])
            try:
                r = st.session.attend(
                    q, k_append=k[:, :, p:], v_append=v[:, :, p:],
                    mask_append=None if km is None else km[:, p:], q_mask=plan.qm,
                    causal=True, method=self.method, dtype=None, id=None, **params)
            except KVNotFound:
                # expired or evicted: send the context again, once
                st = None
                if attempt == 0:
                    continue
                raise
            st.k, st.v, st.km = k, v, km
            with self._lock:
                self._resident[module] = st
            return r
        raise AssertionError("unreachable")


def register(client: Client, method: str = "mra2", name: str = "mrad",
             dtype: Optional[str] = None, sessions: bool = True,
             **params: ParamValue) -> MradAttention:
    """Registers attention on the service under `name` with transformers'
    AttentionInterface and AttentionMaskInterface, and returns the
    implementation (its stats, name_layers(), close()).

    client: the Client to send with; method: "mra2", "mra2_sparse" or
    "exact"; params: block_per_row, num_blocks, prior_first,
    prior_diagonal, timeout_ms, min_blocks_per_row, error_samples,
    target_error, per_head_stats (the scale is each layer's own; with
    error_samples, stats[layer]["est_rel_err"] is the layer's estimated
    error); dtype: the
    wire dtype (None: the model's); sessions: keep a causal decoder's
    cache in resident sessions.  Then
    AutoModel.from_pretrained(..., attn_implementation=name), or
    model.set_attn_implementation(name) on a loaded model.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    impl = MradAttention(client, method=method, dtype=dtype, sessions=sessions,
                         name=name, **params)

    def mask(*args: Any, **kwargs: Any) -> Any:
        # sdpa's boolean [B, 1, Nq, Nk] mask, always built: never None for
        # "use is_causal", so that _plan reads causality from the mask.
        kwargs["allow_is_causal_skip"] = False
        kwargs["allow_is_bidirectional_skip"] = False
        return sdpa_mask(*args, **kwargs)

    AttentionInterface.register(name, impl)
    AttentionMaskInterface.register(name, mask)
    return impl
