"""Hugging Face text classifiers (issue 21): a tiny BERT fine-tuned here on a synthetic task with a
tokenizer trained here, deployed with defaults, served by stock ``bentoml serve`` in a process
that cannot import torch or transformers.  The oracle is the native model (tokenizer + forward)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

POS = "good great happy excellent lovely nice superb".split()
NEG = "bad awful sad terrible poor nasty horrid".split()
FILL = "the movie was a film and it plot actors story very really quite".split()


def make_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(2))
        words = list(rng.choice(FILL, 5)) + list(rng.choice(POS if y else NEG, 2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append("positive" if y else "negative")
    return texts, labels


def train_tiny(kind: str = "bert", steps: int = 30, seed: int = 0):
    """A tokenizer trained on the corpus and a 2-layer model fine-tuned for a few steps."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(seed)
    texts, labels = make_texts(240, seed)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                     model_max_length=24)
    id2label = {0: "negative", 1: "positive"}
    common = dict(vocab_size=tok.get_vocab_size(), num_labels=2, id2label=id2label,
                  label2id={v: k for k, v in id2label.items()})
    if kind == "distilbert":
        from transformers import DistilBertConfig, DistilBertForSequenceClassification

        hf_tok.model_input_names = ["input_ids", "attention_mask"]
        model = DistilBertForSequenceClassification(DistilBertConfig(
            dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, **common))
    elif kind == "roberta":
        from transformers import RobertaConfig, RobertaForSequenceClassification

        model = RobertaForSequenceClassification(RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=hf_tok.pad_token_id, type_vocab_size=1,
            **common))
        hf_tok.model_input_names = ["input_ids", "attention_mask"]
    else:
        from transformers import BertConfig, BertForSequenceClassification

        model = BertForSequenceClassification(BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, **common))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    y = torch.tensor([1 if lab == "positive" else 0 for lab in labels])
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(texts), 32)
        enc = hf_tok([texts[i] for i in idx], padding=True, truncation=True, return_tensors="pt")
        model(**enc, labels=y[idx]).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, hf_tok, texts, labels


def native_labels(model, tok, texts):
    import torch

    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits.numpy().astype(np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return [model.config.id2label[i] for i in logits.argmax(axis=1)], z / z.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiny_bert():
    return train_tiny("bert")


@pytest.fixture(scope="module")
def text_deployment(tiny_bert):
    import nbdeploy

    model, tok, texts, labels = tiny_bert
    return nbdeploy.deploy(model, texts[:120], labels=labels[:120], tokenizer=tok,
                           name="tiny-bert-text", benchmark_budget_s=6.0)


def test_detect_without_importing(tiny_bert):
    from nbdeploy.adapters import detect
    from nbdeploy.adapters.hf_text import HFTextAdapter

    assert isinstance(detect(tiny_bert[0]), HFTextAdapter)


@pytest.mark.parametrize("kind", ["distilbert", "roberta"])
def test_other_encoders_convert_and_verify(kind):
    """DistilBERT- and RoBERTa-style encoders: ONNX logits match the native model, including a
    text longer than the tokenizer's maximum length."""
    from nbdeploy.convert import convert
    from nbdeploy.runtime.model import OnnxModel
    from nbdeploy.verify import verify

    model, tok, texts, labels = train_tiny(kind, steps=5)
    held_out, _ = make_texts(20, seed=7)
    held_out.append(" ".join(["quite good"] * 30))
    c = convert(model, texts[:40], tokenizer=tok)
    assert c.spec["input_mode"] == "text" and c.spec["classes"] == ["negative", "positive"]
    rep = verify(c, labels=labels[:40])
    assert rep.passed, rep.summary()
    want, proba = native_labels(model, tok, held_out)
    out = OnnxModel(c.onnx_bytes, c.spec).run(np.asarray(held_out, dtype=object).reshape(-1, 1))
    assert list(out["label"]) == want
    np.testing.assert_allclose(out["probabilities"], proba, atol=1e-5)
    assert out["tokens_dropped"][-1] > 0 and not out["tokens_dropped"][:-1].any()


def test_bundle_carries_tokenizer_not_torch(text_deployment):
    from pathlib import Path

    d = text_deployment
    root = Path(d.path) / "src"
    assert (root / "model" / "tokenizer.json").is_file()
    spec = __import__("json").loads((root / "model" / "spec.json").read_text())
    assert spec["input_mode"] == "text" and "tokenizer_json" not in spec["text"]
    reqs = [r.split("==")[0].lower() for r in (root / "requirements.txt").read_text().split()]
    assert "tokenizers" in reqs
    assert not {"torch", "transformers"} & set(reqs), reqs
    # the report says why int8 was kept or not, with numbers per variant
    opt = d.optimized
    e = opt.benchmark.entry("int8-dynamic", "CPUExecutionProvider")
    assert e is not None and e.point(1) is not None and e.point(16) is not None, opt.reason
    assert "int8-dynamic" in opt.reason and "batch 1" in opt.reason, opt.reason
    q = {v.name: v for v in opt.quantization.variants}["int8-dynamic"]
    assert q.status == "ok" and q.verification and q.size_bytes
    if d.chosen_variant == "int8-dynamic":
        assert q.within_tolerance


def test_served_labels_equal_native(text_deployment, tiny_bert, tmp_path, post):
    from nbdeploy import serve

    model, tok, _, _ = tiny_bert
    held_out, _ = make_texts(40, seed=123)
    long_text = " ".join(["really good"] * 40)
    want, proba = native_labels(model, tok, held_out + [long_text])
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError('blocked in the bundle: ' + name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    h = serve.start(text_deployment.tag, env={"PYTHONPATH": str(block)})
    try:
        status, body = post(h.url + "/predict", {"inputs": held_out + [long_text]})
        assert status == 200, body
        assert body["predictions"] == want
        # fp32 matches the native model to float precision; int8 (if the gate kept it) within
        # the quantization error of this tiny model
        atol = 1e-4 if text_deployment.chosen_variant == "fp32" else 0.02
        np.testing.assert_allclose(body["probabilities"], proba, atol=atol)
        served = np.asarray(body["probabilities"])
        trunc = body["truncation"]
        assert not any(t["truncated"] for t in trunc[:-1])
        assert trunc[-1]["truncated"] and trunc[-1]["max_length"] == 24
        assert trunc[-1]["tokens_dropped"] == len(tok(long_text)["input_ids"]) - 24
        for bad in ({"inputs": [3]}, {"inputs": []}, {"inputs": ["ok", ""]}, {"inputs": [None]},
                    {"inputs": "a text"}):
            status, err = post(h.url + "/predict", bad)
            assert status == 400, (bad, err)
        # served explanation: per-token SHAP, additive on the served probability
        status, ex = post(h.url + "/explain", {"inputs": held_out[:2], "method": "shap",
                                                     "budget_s": 60})
        assert status == 200, ex
        for i, row in enumerate(ex["explanations"]):
            k = row["class_index"]
            total = row["base_value"] + sum(t["value"] for t in row["tokens"])
            assert abs(total - served[i][k]) < 1e-4, (total, served[i][k])
            assert [t["token"] for t in row["tokens"]]
            assert row["evaluations"] > 0 and row["seconds"] >= 0
        assert ex["cost"]["budget"]["budget_s"] == 60
        status, ex = post(h.url + "/explain", {"inputs": held_out[:1], "method": "lime",
                                               "num_samples": 50})
        assert status == 200, ex
        words = [t["token"] for t in ex["explanations"][0]["tokens"]]
        assert words == held_out[0].split()
        status, err = post(h.url + "/explain", {"inputs": held_out[:1], "max_evals": -3})
        assert status == 400, err
    finally:
        h.stop()


def test_widget_colours_tokens(text_deployment):
    """The widget shows the text with each token coloured by its SHAP value (and LIME on demand)."""
    import re

    from nbdeploy.widget import DeployWidget

    d = text_deployment
    w = DeployWidget(d)
    w.refresh()
    row = d.explanation.rows[0]
    page = w.explanation_html.value
    spans = re.findall(r'<span title="([+-][0-9.]+)"[^>]*>([^<]*)</span>', page)
    assert spans, page[:500]
    first = [t for t in row["tokens"]]
    assert [s[1] for s in spans[:len(first)]] == [t["token"] for t in first]
    assert [float(s[0]) for s in spans[:len(first)]] == pytest.approx([t["value"] for t in first], abs=1e-4)
    w.row_picker.value, w.method_picker.value = 1, "lime"
    w._on_explain()
    html_out = "".join(getattr(c, "value", "") for c in w.row_output.children)
    words = re.findall(r'<span title="[+-][0-9.]+"[^>]*>([^<]*)</span>', html_out)
    assert words == str(d.converted.X[1, 0]).split()
