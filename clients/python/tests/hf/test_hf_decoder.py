"""mra_client.hf on a causal decoder with grouped key/value heads: a small
Llama built from a config with random weights (8 query heads over 2
key/value heads).  Greedy generation of 32 tokens through a live bin/mrad
with method=exact gives eager attention's tokens, for a batch with left
padding; the key/value cache lives in one resident session per layer for
the whole generation (each step sends only its query and its new token),
and gives the same tokens as sending the whole cache every step, and as
a static cache (updated in place, so sent whole).  A sliding window that
the mask exceeds is refused, naming the layer.  Runs in the environment
with PyTorch (tools/hf-venv.sh)."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mrad_server import metric_value  # noqa: E402
from mra_client import Client, hf  # noqa: E402

LAYERS, NEW = 2, 32


def tiny(config_class=transformers.LlamaConfig, model_class=transformers.LlamaForCausalLM,
         **extra):
    cfg = config_class(vocab_size=256, hidden_size=128, intermediate_size=256,
                       num_hidden_layers=LAYERS, num_attention_heads=8,
                       num_key_value_heads=2, max_position_embeddings=256,
                       initializer_range=0.2, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2, **extra)
    torch.manual_seed(0)
    model = model_class(cfg).eval()
    model.generation_config.pad_token_id = 0
    return model


def prompts():
    """Two prompts of 40 and 33 tokens, the second padded on the left."""
    ids = torch.randint(3, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, :7], mask[1, :7] = 0, 0
    return ids, mask


def generate(model, impl, **kw):
    ids, mask = prompts()
    model.set_attn_implementation(impl)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, **kw)
    return out.sequences[:, ids.shape[1]:], out.scores


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def eager_tokens(model):
    tokens, scores = generate(model, "eager")
    # the test means something only if no step is a near tie
    top2 = torch.stack([s.topk(2).values for s in scores])
    assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-3
    return tokens


def test_greedy_generation_equals_eager(server, model, eager_tokens, capsys):
    attn = hf.register(Client(server.url), method="exact")
    attn.name_layers(model)
    created = metric_value(server.metrics(), "mrad_kv_created_total") or 0
    appended = metric_value(server.metrics(), "mrad_kv_append_tokens_total") or 0
    try:
        tokens, _ = generate(model, "mrad")
    finally:
        model.set_attn_implementation("eager")
    assert tokens.shape == (2, NEW)
    assert torch.equal(tokens, eager_tokens)
    m = server.metrics()
    # one session per layer, made at the first decoding step with the
    # prompt's 40 positions, then fed one position at each later step
    assert metric_value(m, "mrad_kv_created_total") - created == LAYERS
    assert metric_value(m, "mrad_kv_sessions") == LAYERS
    assert metric_value(m, "mrad_kv_append_tokens_total") - appended == LAYERS * (40 + NEW - 1)
    assert sorted(attn.stats) == [f"model.layers.{i}.self_attn" for i in range(LAYERS)]
    attn.close()
    assert metric_value(server.metrics(), "mrad_kv_sessions") == 0
    with capsys.disabled():  # shown in make test's log
        print(f"\ntiny Llama (GQA 8/2, random weights), greedy {NEW} tokens through mrad "
              f"exact with sessions: same tokens as eager: {tokens.tolist()}")


def test_without_sessions_and_mra2(server, model, eager_tokens):
    """sessions=False sends the whole cache each step: the same tokens.
    mra2 with a budget over every block pair (the sequences are shorter
    than 3 blocks) is exact, sessions or not."""
    c = Client(server.url)
    created = metric_value(server.metrics(), "mrad_kv_created_total") or 0
    try:
        hf.register(c, method="exact", sessions=False)
        assert torch.equal(generate(model, "mrad")[0], eager_tokens)
        assert (metric_value(server.metrics(), "mrad_kv_created_total") or 0) == created
        with hf.register(c, method="mra2", block_per_row=3) as attn:
            assert torch.equal(generate(model, "mrad")[0], eager_tokens)
            assert all(s["method"] == "mra2" for s in attn.stats.values())
    finally:
        model.set_attn_implementation("eager")


def test_a_new_prompt_gets_a_new_session(server, model, eager_tokens):
    """A second generation on the same layers starts over: its sessions
    hold the new prompt, never the old one's cache."""
    attn = hf.register(Client(server.url), method="exact")
    try:
        first, _ = generate(model, "mrad")
        ids2 = prompts()[0].flip(1).contiguous()  # other tokens, same shapes
        with torch.no_grad():
            model.set_attn_implementation("eager")
            want = model.generate(ids2, attention_mask=torch.ones_like(ids2), max_new_tokens=8,
                                  do_sample=False)
            model.set_attn_implementation("mrad")
            got = model.generate(ids2, attention_mask=torch.ones_like(ids2), max_new_tokens=8,
                                 do_sample=False)
        assert torch.equal(first, eager_tokens) and torch.equal(got, want)
    finally:
        attn.close()
        model.set_attn_implementation("eager")


def test_a_static_cache(server, model, eager_tokens):
    """A static cache: keys of a fixed length whose free slots the mask
    hides (left out of the requests), updated in place, so that after the
    first decoding step the layers send the whole cache instead of keeping
    a session.  The same tokens as eager."""
    attn = hf.register(Client(server.url), method="exact")
    created = metric_value(server.metrics(), "mrad_kv_created_total") or 0
    try:
        tokens, _ = generate(model, "mrad", cache_implementation="static")
    finally:
        model.set_attn_implementation("eager")
    assert torch.equal(tokens, eager_tokens)
    m = server.metrics()
    assert metric_value(m, "mrad_kv_created_total") - created == LAYERS
    assert (metric_value(m, "mrad_kv_sessions") or 0) == 0
    attn.close()


def test_an_exceeded_sliding_window_is_refused_by_name(server):
    model = tiny(transformers.MistralConfig, transformers.MistralForCausalLM,
                 sliding_window=16)
    attn = hf.register(Client(server.url), method="exact")
    attn.name_layers(model)
    model.set_attn_implementation("mrad")
    ids, _ = prompts()
    with pytest.raises(hf.UnsupportedAttention) as e, torch.no_grad():
        model(ids)
    assert "model.layers.0.self_attn" in str(e.value)
    assert "sliding window" in str(e.value)
    # within the window the mask is plain causal, which mrad computes
    with torch.no_grad():
        got = model(ids[:, :16]).logits
        model.set_attn_implementation("eager")
        want = model(ids[:, :16]).logits
    assert torch.allclose(got, want, atol=1e-4)


def test_the_example_runs(server):
    """clients/python/examples/hf_demo.py: embeddings and generation
    through mrad, with the density of every layer."""
    import os
    import pathlib
    import subprocess
    import sys

    demo = pathlib.Path(__file__).resolve().parents[2] / "examples" / "hf_demo.py"
    p = subprocess.run([sys.executable, str(demo), "--url", server.url, "--method", "mra2",
                        "--block-per-row", "2", "--new-tokens", "6"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "cosine to eager" in out and "encoder.layer.5.attention.self:" in out
    assert "same tokens as eager attention: True" in out
    assert "model.layers.3.self_attn:" in out
