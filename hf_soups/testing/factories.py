"""Tiny random models for tests and examples.

`make_base` writes a tiny "pre-trained" backbone; `make_finetune` writes a "fine-tune" of it the way a real one
looks on disk: the backbone plus a small perturbation (what a short fine-tune does), a classification head
initialised from a chosen seed, a tokenizer, and a model card whose metadata names the base and its revision.
Everything is a real `transformers` model folder that `from_pretrained` loads.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Dict, Optional

import torch

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = list(string.ascii_lowercase + string.digits + ".,!?'-")


def tiny_vocab() -> list:
    """A character-level WordPiece vocabulary: every lower-case English sentence tokenizes without [UNK]."""
    return _SPECIAL + _CHARS + [f"##{c}" for c in _CHARS]


def save_tiny_tokenizer(folder: str | Path, model_max_length: int = 64) -> None:
    """Write a character-level BERT-style tokenizer (`tokenizer.json` and friends) into `folder`."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(tiny_vocab())}
    core = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )
    tok.save_pretrained(str(folder))


def tiny_bert_config(**overrides: Any):
    """A 2-layer BERT config with hidden size 32 (a few tens of thousands of parameters)."""
    from transformers import BertConfig

    kwargs: Dict[str, Any] = dict(
        vocab_size=len(tiny_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def make_base(folder: str | Path, *, seed: int = 0, **config_overrides: Any) -> Path:
    """Write a tiny random BERT backbone (`BertModel`, no task head) with its tokenizer.

    Args:
        folder: where to write it.
        seed: the random seed of its weights.
        **config_overrides: changes to :func:`tiny_bert_config`.

    Returns:
        The folder.
    """
    from transformers import BertModel

    folder = Path(folder)
    torch.manual_seed(seed)
    model = BertModel(tiny_bert_config(**config_overrides))
    model.save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    return folder


def make_finetune(
    base_folder: str | Path,
    folder: str | Path,
    *,
    seed: int = 1,
    noise: float = 0.01,
    head_seed: int = 1234,
    num_labels: int = 2,
    id2label: Optional[Dict[int, str]] = None,
    base_model: Optional[str] = None,
    base_revision: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    hyperparameters: Optional[Dict[str, Any]] = None,
    card: bool = True,
) -> Path:
    """Write a tiny "fine-tune" of `base_folder`: backbone + noise, a seeded head, tokenizer, card.

    Args:
        base_folder: a folder written by :func:`make_base`.
        folder: where to write the fine-tune.
        seed: seed of the perturbation (differs between runs of a sweep).
        noise: standard deviation of the perturbation, relative to 1 (a real fine-tune moves weights ~1e-3..1e-2).
        head_seed: seed of the classification head initialisation (the same in a well-run sweep).
        num_labels: number of classes.
        id2label: the label map (default ``{0: "negative", 1: "positive"}`` for 2 labels).
        base_model: the base repo id to declare in the card (`base_model:`); omitted when None.
        base_revision: the base revision to declare (written as `base_model_revision` in the card metadata).
        dtype: save the weights in this dtype (default float32).
        hyperparameters: training hyper-parameters to record in the card metadata.
        card: write a README.md model card.

    Returns:
        The folder.
    """
    from transformers import AutoModelForSequenceClassification

    folder = Path(folder)
    if id2label is None:
        id2label = {0: "negative", 1: "positive"} if num_labels == 2 else {i: f"LABEL_{i}" for i in range(num_labels)}
    label2id = {v: k for k, v in id2label.items()}
    torch.manual_seed(head_seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_folder), num_labels=num_labels, id2label=id2label, label2id=label2id
    )
    # Re-initialise the head from head_seed alone, so it does not depend on the loading order.
    gen = torch.Generator().manual_seed(head_seed)
    with torch.no_grad():
        head = model.classifier
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.02)
        head.bias.zero_()
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            if p.is_floating_point():
                scale = max(float(p.detach().std()), 0.02) if p.numel() > 1 else 0.02
                p.add_(torch.randn(p.shape, generator=gen) * noise * scale)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(folder))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(base_folder)).save_pretrained(str(folder))
    if card:
        from huggingface_hub import ModelCard, ModelCardData

        extra: Dict[str, Any] = {}
        if base_revision:
            extra["base_model_revision"] = base_revision
        if hyperparameters:
            extra["hyperparameters"] = hyperparameters
        data = ModelCardData(
            base_model=base_model,
            library_name="transformers",
            pipeline_tag="text-classification",
            license="apache-2.0",
            **extra,
        )
        content = f"---\n{data.to_yaml()}\n---\n\n# Tiny fine-tune (seed {seed})\n\nA test model.\n"
        ModelCard(content).save(str(folder / "README.md"))
    return folder
