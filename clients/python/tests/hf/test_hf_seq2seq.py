"""mra_client.hf on an encoder-decoder: a small BART built from a config
with random weights, whose decoder attends to the encoder's outputs
(cross-attention: the encoder's padding is a key mask, never a query
mask).  Greedy generation through a live bin/mrad with method=exact gives
eager attention's tokens for a batch with padding (sessions for the
decoder's self-attention only), and with as many decoder tokens as
encoder tokens (where the service would take a key mask without q_mask
for the queries' too) the logits equal eager's.  Runs in the environment
with PyTorch (tools/hf-venv.sh)."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mrad_server import metric_value  # noqa: E402
from mra_client import Client, hf  # noqa: E402

LAYERS, N, NEW = 2, 30, 24


@pytest.fixture(scope="module")
def bart():
    cfg = transformers.BartConfig(
        vocab_size=256, d_model=64, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_position_embeddings=128, init_std=0.2, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(0)
    return transformers.BartForConditionalGeneration(cfg).eval()


def inputs():
    """Two inputs of 30 and 20 tokens, the second padded on the right."""
    ids = torch.randint(3, 256, (2, N), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, 20:], mask[1, 20:] = 0, 0
    return ids, mask


def generate(model, impl):
    ids, mask = inputs()
    model.set_attn_implementation(impl)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, num_beams=1,
                             output_scores=True, return_dict_in_generate=True)
    return out.sequences, out.scores


def test_generation_equals_eager(server, bart):
    want, scores = generate(bart, "eager")
    top2 = torch.stack([s.topk(2).values for s in scores])
    assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-3  # no near tie
    attn = hf.register(Client(server.url), method="exact")
    attn.name_layers(bart)
    created = metric_value(server.metrics(), "mrad_kv_created_total") or 0
    try:
        got, _ = generate(bart, "mrad")
    finally:
        bart.set_attn_implementation("eager")
        attn.close()
    assert torch.equal(got, want)
    # sessions for the decoder's self-attention only: the cross-attention's
    # keys, the encoder's outputs, do not grow
    assert metric_value(server.metrics(), "mrad_kv_created_total") - created == LAYERS
    names = {f"model.{side}.layers.{i}.{kind}" for i in range(LAYERS)
             for side, kind in (("encoder", "self_attn"), ("decoder", "self_attn"),
                                ("decoder", "encoder_attn"))}
    assert set(attn.stats) == names


def test_as_many_decoder_tokens_as_encoder_tokens(server, bart):
    ids, mask = inputs()
    dec = torch.randint(3, 256, (2, N), generator=torch.Generator().manual_seed(2))
    attn = hf.register(Client(server.url), method="exact")
    try:
        with torch.no_grad():
            want = bart(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
            bart.set_attn_implementation("mrad")
            got = bart(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    finally:
        bart.set_attn_implementation("eager")
    assert len(attn.stats) == 3 * LAYERS
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
