"""Tiny framework models made offline, for the serving tests (run as a script: it imports torch and
transformers, which the test process itself should not carry).

    python tiny_models.py torch DEST   EasyMaker's PyTorch layout: model.py, handler.py (the seed's
                                       example handler), model.pt; expected.json holds the answers
    python tiny_models.py hf DEST      five Hugging Face directories, one per task, random weights
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODEL_PY = '''import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 3)

    def forward(self, x):
        return self.linear(x)
'''

HANDLER_PY = '''import os

import torch
from ts.torch_handler.base_handler import BaseHandler


class TestHandler(BaseHandler):
    def initialize(self, context):
        super().initialize(context)
        self.scale = float(context.model_yaml_config.get("scale", "1"))
        self.scale_env = os.environ.get("SCALE_FACTOR", "unset")

    def preprocess(self, data):  # data = [[1.0, 2.0], [3.0, 4.0]], as the seed's example
        features = []
        for row in data:
            content = row
            features.append(content)
        return torch.tensor(features, dtype=torch.float32).to(self.device)

    def postprocess(self, data):
        return [{"label": int(r.argmax()), "logits": [round(float(v) * self.scale, 5) for v in r],
                 "env": self.scale_env} for r in data]
'''

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "model", "is", "good", "bad", "paris", "capital",
         "of", "france", "hello", "world", "test", "text", "one", "two", "three"]


def torch_dir(dest: Path) -> None:
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model.py").write_text(MODEL_PY)
    (dest / "handler.py").write_text(HANDLER_PY)
    sys.path.insert(0, str(dest))
    from model import Net  # type: ignore[import-not-found]

    torch.manual_seed(0)
    net = Net()
    torch.save(net.state_dict(), dest / "model.pt")
    rows = [[1.0, 2.0], [3.0, 4.0], [-1.0, 0.5]]
    with torch.no_grad():
        logits = net(torch.tensor(rows))
    (dest / "expected.json").write_text(json.dumps({"rows": rows, "labels": logits.argmax(1).tolist(),
                                                    "logits": logits.tolist()}))


def _bert_tokenizer(dest: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                               ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(dest)
    return tok


def hf_dirs(dest: Path) -> None:
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertForTokenClassification,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    small = dict(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=64)
    labels = dict(id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    for task, cls, extra in (("sequence_classification", BertForSequenceClassification, labels),
                             ("token_classification", BertForTokenClassification, labels),
                             ("fill_mask", BertForMaskedLM, {})):
        _bert_tokenizer(dest / task)
        cls(BertConfig(**small, **extra)).save_pretrained(dest / task)
    gen = dict(vocab_size=len(WORDS), pad_token_id=0, eos_token_id=3, bos_token_id=2)
    _bert_tokenizer(dest / "text_generation")
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64, **gen)).save_pretrained(
        dest / "text_generation")
    _bert_tokenizer(dest / "text2text_generation")
    T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                        decoder_start_token_id=0, vocab_size=len(WORDS), pad_token_id=0,
                                        eos_token_id=3)).save_pretrained(dest / "text2text_generation")


if __name__ == "__main__":
    {"torch": torch_dir, "hf": hf_dirs}[sys.argv[1]](Path(sys.argv[2]))
