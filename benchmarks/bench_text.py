"""Text classifiers side by side (issue 21): native PyTorch vs ONNX fp32 vs ONNX int8-dynamic, batch 1
and batch 16, tokenization included on both sides, plus served req/s from stock ``bentoml serve``.

    python benchmarks/bench_text.py [--hidden 256] [--layers 4] [--words 40] [--seconds 3] [--no-serve]

The model is a BERT built from a config (no hub download) with a WordPiece tokenizer trained on a
synthetic corpus; weights are random-ish (a few fine-tuning steps), which does not change speed.
Native = transformers tokenizer + ``model(**enc)`` under ``torch.no_grad``; ONNX = the bundle's
own path (``tokenizers`` + onnxruntime via ``OnnxModel.run``).  Numbers on a shared 2-core
machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def build(hidden: int, layers: int):
    import torch
    from test_transformers import train_tiny  # the tests' builder: tokenizer + fine-tuning
    from transformers import BertConfig, BertForSequenceClassification

    _, tok, texts, labels = train_tiny("bert", steps=1)
    tok.model_max_length = 128
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 64), intermediate_size=4 * hidden,
        max_position_embeddings=256, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})).eval()
    return model, tok, texts, labels


def timeit(fn, arg, seconds: float) -> float:
    fn(arg)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def served_rps(tag: str, texts: list[str], seconds: float) -> float:
    import concurrent.futures as cf
    import json
    import urllib.request

    from nbdeploy import serve

    h = serve.start(tag)
    try:
        body = json.dumps({"inputs": texts[:1]}).encode()

        def one(_):
            req = urllib.request.Request(h.url + "/predict", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
        one(0)
        n, end = 0, time.perf_counter() + seconds
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as pool:
            while time.perf_counter() < end:
                list(pool.map(one, range(32)))
                n += 32
        return n / (time.perf_counter() - t0)
    finally:
        h.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--words", type=int, default=40, help="words per text")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per cell")
    ap.add_argument("--no-serve", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    import nbdeploy
    from nbdeploy.quantize import build_variant
    from nbdeploy.runtime.model import OnnxModel

    model, tok, texts, labels = build(args.hidden, args.layers)
    rng = np.random.default_rng(1)
    words = " ".join(texts).split()
    long = [" ".join(rng.choice(words, args.words)) for _ in range(64)]
    t0 = time.perf_counter()
    d = nbdeploy.deploy(model, long, labels=None, tokenizer=tok, name="bench-text", explain="none",
                        benchmark_budget_s=30)
    print(f"deploy: {time.perf_counter() - t0:.1f} s; chosen {d.chosen_variant}: {d.optimized.reason}")
    c = d.converted
    fp32 = OnnxModel(c.onnx_bytes, c.spec)
    int8 = OnnxModel(build_variant(c.onnx_model, "int8-dynamic", spec=c.spec).SerializeToString(), c.spec)
    native, _ = c.adapter.native_call()
    X = np.asarray(long, dtype=object).reshape(-1, 1)
    rows = []
    for b in (1, 16):
        Xb = X[:b]
        n = timeit(native, Xb, args.seconds)
        f = timeit(fp32.run, Xb, args.seconds)
        q = timeit(int8.run, Xb, args.seconds)
        rows.append((b, n, f, q))
    agree = float((int8.run(X)["label"] == fp32.run(X)["label"]).mean())
    print(f"\nBERT hidden {args.hidden}, {args.layers} layers, ~{args.words} words/text; "
          f"int8 labels agree with fp32 on {agree:.0%} of 64 texts")
    print("| batch | native torch ms | ONNX fp32 ms | ONNX int8 ms | fp32 vs native | int8 vs fp32 |")
    print("|---|---|---|---|---|---|")
    for b, n, f, q in rows:
        print(f"| {b} | {n:.2f} | {f:.2f} | {q:.2f} | {n / f:.2f}x | {f / q:.2f}x |")
    if not args.no_serve:
        print(f"\nserved ({d.chosen_variant}), 1 text per request, 8 client threads: "
              f"{served_rps(d.tag, long, args.seconds * 2):.0f} req/s")


if __name__ == "__main__":
    main()
