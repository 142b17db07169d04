"""Tests of hf_soups.evaluation and hf_soups.metrics: offline, tiny random BERT models, SST-2 rows."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from sklearn.metrics import f1_score

from hf_soups.errors import EvaluationError
from hf_soups.evaluation import EvalResult, EvalSettings, Evaluator, summary_table
from hf_soups.metrics import (
    MetricSuite,
    best_reachable,
    cannot_meet,
    get_bounded_mean,
    load_metric,
    local_metric_path,
    meets,
)
from hf_soups.testing.factories import make_base, make_finetune

from _soup_models import sst2_rows

ACC = str(local_metric_path("accuracy"))
F1 = str(local_metric_path("f1"))


# Tiny models run fastest on one thread (see the `one_thread` fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = make_base(root / "base")
    return [make_finetune(base, root / f"ft{i}", seed=i, noise=0.3, head_seed=100 + i) for i in range(4)]


@pytest.fixture(scope="module")
def models(folders):
    from transformers import AutoModelForSequenceClassification

    return [AutoModelForSequenceClassification.from_pretrained(str(f)).eval() for f in folders]


@pytest.fixture(scope="module")
def tokenizer(folders):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folders[0]))


@pytest.fixture(scope="module")
def data() -> Dataset:
    return sst2_rows("dev", 90)


def manual_logits(model, tokenizer, texts, pairs=None) -> torch.Tensor:
    """One example at a time, no padding: the reference the evaluator must match."""
    out = []
    with torch.no_grad():
        for i, text in enumerate(texts):
            enc = tokenizer(text, pairs[i] if pairs else None, truncation=True, max_length=64, return_tensors="pt")
            out.append(model(**enc).logits[0])
    return torch.stack(out)


def make_evaluator(ds, **kwargs) -> Evaluator:
    kwargs.setdefault("task", "sequence-classification")
    kwargs.setdefault("metric", ACC)
    kwargs.setdefault("settings", EvalSettings(batch_size=8))
    return Evaluator(ds, **kwargs)


def test_accuracy_equals_manual_computation(models, folders, tokenizer, data):
    model = models[0]
    ev = make_evaluator(data)
    ev.prepare(folders[0])
    result = ev.evaluate(model)
    preds = manual_logits(model, tokenizer, data["sentence"][:]).argmax(-1).numpy()
    expected = float(np.mean(preds == np.asarray(data["label"][:])))
    assert result.score == expected == result.metrics["accuracy"]
    assert (result.n_examples, result.n_evaluated, result.stopped_early, result.cached) == (90, 90, False, False)
    assert result.selection_metric == "accuracy" and result.greater_is_better


def test_logits_order_restored_and_score_logits(models, folders, tokenizer, data):
    model = models[1]
    ev = make_evaluator(data, settings=EvalSettings(batch_size=7))
    ev.prepare(folders[1])
    logits = ev.predict_logits(model)
    expected = manual_logits(model, tokenizer, data["sentence"][:])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    assert ev.score_logits(logits) == ev.evaluate(model).metrics
    with pytest.raises(EvaluationError, match="shape"):
        ev.score_logits(logits[:5])


def test_sentence_pairs(models, folders, tokenizer, data):
    texts = data["sentence"][:]
    pairs = list(reversed(texts))
    ds = Dataset.from_dict({"sentence1": texts, "sentence2": pairs, "label": data["label"][:]})
    ev = make_evaluator(ds)  # sentence1/sentence2 are found without a columns mapping
    ev.prepare(folders[0])
    preds = manual_logits(models[0], tokenizer, texts, pairs).argmax(-1).numpy()
    assert ev.evaluate(models[0]).score == float(np.mean(preds == np.asarray(data["label"][:])))
    explicit = make_evaluator(ds, columns={"text": "sentence1", "text_pair": None, "label": "label"})
    explicit.prepare(folders[0])
    single = make_evaluator(data)
    single.prepare(folders[0])
    assert explicit.evaluate(models[0]).score == single.evaluate(models[0]).score


def test_label_names_and_ids_give_the_same_result(models, folders, data):
    labels = data["label"][:]
    names = ["negative", "positive"]
    as_ids = data
    as_names = Dataset.from_dict({"sentence": data["sentence"][:], "label": [names[x] for x in labels]})
    as_classlabel = data.cast(Features({"sentence": Value("string"), "label": ClassLabel(names=names)}))
    # A ClassLabel in the other order is remapped by name.
    flipped = Dataset.from_dict(
        {"sentence": data["sentence"][:], "label": [1 - x for x in labels]},
        features=Features({"sentence": Value("string"), "label": ClassLabel(names=["positive", "negative"])}),
    )
    scores = []
    for ds in (as_ids, as_names, as_classlabel, flipped):
        ev = make_evaluator(ds)
        ev.prepare(folders[2])
        scores.append(ev.evaluate(models[2]).score)
    assert len(set(scores)) == 1


def test_label_mismatch_errors(folders, data):
    sentences = data["sentence"][:]
    bad_names = Dataset.from_dict({"sentence": sentences, "label": ["neg", "pos"] * 45})
    with pytest.raises(EvaluationError, match=r"\['neg', 'pos'\].*not in the model's labels"):
        make_evaluator(bad_names).prepare(folders[0])
    out_of_range = Dataset.from_dict({"sentence": sentences, "label": [0, 1, 2] * 30})
    with pytest.raises(EvaluationError, match=r"label ids \[2\] outside 0..1"):
        make_evaluator(out_of_range).prepare(folders[0])
    three = Dataset.from_dict(
        {"sentence": sentences, "label": [0, 1, 2] * 30},
        features=Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "neu", "pos"])}),
    )
    with pytest.raises(EvaluationError, match="3 classes"):
        make_evaluator(three).prepare(folders[0])


def test_model_with_other_labels_is_refused(tmp_path, folders, data):
    from transformers import AutoModelForSequenceClassification

    other = make_finetune(folders[0].parent / "base", tmp_path / "other", id2label={0: "bad", 1: "good"})
    ev = make_evaluator(Dataset.from_dict({"sentence": data["sentence"][:], "label": data["label"][:]}))
    ev.prepare(folders[0])
    with pytest.raises(EvaluationError, match="differ from the labels"):
        ev.evaluate(AutoModelForSequenceClassification.from_pretrained(str(other)))


def test_missing_split_names_it_and_lists_the_others(tmp_path, data):
    with pytest.raises(EvaluationError, match=r"split 'test'.*\['train', 'validation'\]"):
        Evaluator(DatasetDict(train=data, validation=data), split="test", metric=ACC)
    folder = tmp_path / "csvdata"
    folder.mkdir()
    for split in ("train", "validation"):
        data.to_csv(str(folder / f"{split}.csv"))
    with pytest.raises(EvaluationError, match=r"no split 'test'.*train.*validation"):
        Evaluator(str(folder), split="test", metric=ACC)
    loaded = Evaluator(str(folder), split="validation", task="sequence-classification", metric=ACC)
    assert len(loaded.dataset) == len(data)


def test_missing_column_names_it_and_lists_the_others(data):
    with pytest.raises(EvaluationError, match=r"'review'.*available columns: \['sentence', 'label'\]"):
        make_evaluator(data, columns={"text": "review"})
    with pytest.raises(EvaluationError, match=r"no 'text' column.*available columns: \['words', 'label'\]"):
        make_evaluator(data.rename_column("sentence", "words"))
    with pytest.raises(EvaluationError, match="unknown column roles"):
        make_evaluator(data, columns={"sentence": "sentence"})


def test_cache_second_call_runs_no_forward(tmp_path, models, folders, data):
    calls = []
    model = models[0]
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        ev = make_evaluator(data, cache_dir=tmp_path / "cache")
        ev.prepare(folders[0])
        first = ev.evaluate(model, key="sha-a")
        n_forward = len(calls)
        assert n_forward == 12 and not first.cached  # ceil(90 / 8) batches
        second = ev.evaluate(model, key="sha-a")
        assert len(calls) == n_forward, "a cached result must not run the model"
        assert second.cached and second.metrics == first.metrics and second.score == first.score
        # the per-example quality that orders greedy trials comes back too (float32 in the cache)
        assert first.example_quality is not None and first.example_quality.shape == (90,)
        np.testing.assert_allclose(second.example_quality, first.example_quality, rtol=1e-6)
        files = list((tmp_path / "cache").glob("*.json"))
        assert len(files) == 1 and ev.cache_writes == 1
        entry = json.loads(files[0].read_text())
        assert entry["key"] == "sha-a" and entry["fingerprint"] == ev.fingerprint
        assert not list((tmp_path / "cache").glob(".tmp-*")), "no temporary file left behind"
        ev.evaluate(model, key="sha-b")  # another key runs again
        assert len(calls) == 2 * n_forward
        # A new evaluator with the same data and settings shares the cache; other settings do not.
        same = make_evaluator(data, cache_dir=tmp_path / "cache")
        same.prepare(folders[0])
        assert same.fingerprint == ev.fingerprint and same.evaluate(model, key="sha-a").cached
        other = make_evaluator(data, cache_dir=tmp_path / "cache", settings=EvalSettings(batch_size=8, max_length=16))
        other.prepare(folders[0])
        assert other.fingerprint != ev.fingerprint and not other.evaluate(model, key="sha-a").cached
    finally:
        handle.remove()


def test_cached_early_stop_is_reused_only_for_bars_it_answers(tmp_path, models, folders, data):
    ev = make_evaluator(data, cache_dir=tmp_path)
    ev.prepare(folders[0])
    full = make_evaluator(data)
    full.prepare(folders[0])
    score = full.evaluate(models[0]).score
    stopped = ev.evaluate(models[0], key="k", bar=score + 0.2)
    assert stopped.stopped_early and stopped.score is None and not stopped.meets(score + 0.2)
    assert ev.evaluate(models[0], key="k", bar=score + 0.3).cached  # a higher bar: the same answer
    lower = ev.evaluate(models[0], key="k", bar=score - 0.1)  # a lower bar: must evaluate again
    assert not lower.cached and not lower.stopped_early and lower.score == score
    with pytest.raises(EvaluationError, match="another bar"):
        stopped.meets(score - 0.1)


def test_bound_arithmetic_is_exact_against_the_real_metric():
    """Property test of the stopping rule alone: thousands of random runs, bars on and off k/N edges."""
    accuracy = load_metric(ACC)
    rule = get_bounded_mean("accuracy")
    rng = random.Random(0)
    from fractions import Fraction

    for _ in range(300):
        n = rng.randint(1, 60)
        refs = [rng.randint(0, 1) for _ in range(n)]
        preds = [r if rng.random() < rng.random() else 1 - r for r in refs]
        final = accuracy.compute(predictions=preds, references=refs)["accuracy"]
        k = round(final * n)
        bars = [rng.random(), final, k / n, (k + 1) / n, (k - 1) / n, np.nextafter(final, 2), np.nextafter(final, -1)]
        for bar in bars:
            for strict in (False, True):
                correct, stopped = Fraction(0), False
                for i in range(n):
                    correct += int(preds[i] == refs[i])
                    bound = best_reachable(rule, correct, Fraction(i + 1), Fraction(n), greater_is_better=True)
                    if cannot_meet(bound, float(bar), strict=strict):
                        stopped = True
                        break
                assert not (stopped and meets(final, float(bar), strict=strict)), (preds, refs, bar, strict)
                if not stopped:  # the bound at the end is the score itself
                    assert bound == final


def test_early_rejection_makes_the_full_evaluations_decisions(models, folders):
    """Several models x many bars (random and on the k/N edges), both rules: same decisions, fewer examples."""
    ds = sst2_rows("dev", 120, offset=200)
    ev = make_evaluator(ds, settings=EvalSettings(batch_size=8))
    ev.prepare(folders[0])
    rng = random.Random(1)
    saved = 0
    for model in models:
        full = ev.evaluate(model)
        k = round(full.score * 120)
        bars = [rng.uniform(0.2, 0.8) for _ in range(4)] + [full.score, (k + 1) / 120, (k - 1) / 120, 0.0, 1.0]
        for bar in bars:
            for strict in (False, True):
                early = ev.evaluate(model, bar=bar, strict=strict)
                assert early.meets(bar, strict=strict) == full.meets(bar, strict=strict), (bar, strict, full.score)
                if early.stopped_early:
                    assert early.n_evaluated < early.n_examples and early.score is None
                    assert cannot_meet(early.bound, bar, strict=strict)
                    saved += early.n_examples - early.n_evaluated
                else:
                    assert early.metrics == full.metrics and early.n_evaluated == 120
    assert saved > 0


def test_combined_accuracy_and_f1(models, folders, tokenizer, data):
    ev = make_evaluator(data, metric=[ACC, F1])
    ev.prepare(folders[3])
    result = ev.evaluate(models[3])
    preds = manual_logits(models[3], tokenizer, data["sentence"][:]).argmax(-1).numpy()
    labels = np.asarray(data["label"][:])
    assert set(result.metrics) == {"accuracy", "f1"} and result.score == result.metrics["accuracy"]
    assert result.metrics["f1"] == pytest.approx(f1_score(labels, preds))
    assert ev.fingerprint != make_fingerprint(data, folders[3], metric=ACC)


def make_fingerprint(ds, folder, **kwargs) -> str:
    ev = make_evaluator(ds, **kwargs)
    ev.prepare(folder)
    return ev.fingerprint


def test_compute_metrics_callable(models, folders, data):
    def compute_metrics(pred):
        hits = (pred.predictions.argmax(-1) == pred.label_ids).mean()
        return {"hits": float(hits), "n": len(pred.label_ids)}

    ev = make_evaluator(data, metric=None, compute_metrics=compute_metrics, selection_metric="hits")
    ev.prepare(folders[0])
    result = ev.evaluate(models[0], bar=0.99)  # a callable's metric is not a known mean: runs to the end
    reference = make_evaluator(data)
    reference.prepare(folders[0])
    assert result.metrics == {"hits": reference.evaluate(models[0]).score, "n": 90}
    assert not result.stopped_early and result.n_evaluated == 90


def test_metric_that_cannot_be_loaded_says_what_to_do(tmp_path):
    with pytest.raises(EvaluationError, match=r"(?s)nowhere/accuracy.*could not be loaded.*local path.*HF_ENDPOINT"):
        load_metric(str(tmp_path / "nowhere" / "accuracy"))
    with pytest.raises(EvaluationError, match="cannot use 3"):
        load_metric(3)
    with pytest.raises(EvaluationError, match="no metric"):
        MetricSuite(None)
    with pytest.raises(EvaluationError, match="no bundled metric"):
        local_metric_path("bleu")


def test_metric_given_as_module_and_ids():
    import evaluate

    module = evaluate.load(ACC)
    suite = MetricSuite([module, F1])
    assert suite.ids == ["accuracy", "f1"] and suite.modules[0] is module
    assert suite.compute([1, 0, 1], [1, 1, 1]) == {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(0.8)}


def test_max_samples_subset_is_deterministic(models, folders):
    ds = sst2_rows("dev", 300)
    a = make_evaluator(ds, settings=EvalSettings(batch_size=16, max_samples=40, seed=3))
    b = make_evaluator(ds, settings=EvalSettings(batch_size=16, max_samples=40, seed=3))
    c = make_evaluator(ds, settings=EvalSettings(batch_size=16, max_samples=40, seed=4))
    assert len(a.dataset) == 40 and a.dataset["sentence"][:] == b.dataset["sentence"][:] != c.dataset["sentence"][:]
    for ev in (a, b):
        ev.prepare(folders[0])
    assert a.fingerprint == b.fingerprint
    assert a.evaluate(models[0]).n_examples == 40


def test_settings_validation_and_unprepared_errors(data):
    with pytest.raises(EvaluationError, match="mixed_precision"):
        EvalSettings(mixed_precision="fp8")
    with pytest.raises(EvaluationError, match="batch_size"):
        EvalSettings(batch_size=0)
    assert EvalSettings(mixed_precision="no").mixed_precision is None
    ev = make_evaluator(data)
    with pytest.raises(EvaluationError, match="prepare"):
        ev.fingerprint
    with pytest.raises(EvaluationError, match="prepare"):
        ev.score_logits(torch.zeros(90, 2))


def test_result_round_trip_and_summary_table():
    full = EvalResult(metrics={"accuracy": 0.8125, "f1": 0.8}, score=0.8125, n_examples=16, n_evaluated=16, seconds=1.25)
    early = EvalResult(metrics={}, score=None, n_examples=16, n_evaluated=5, stopped_early=True, bound=0.6875)
    assert EvalResult.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    table = summary_table({"run-a": full, "trial-2": early})
    lines = table.splitlines()
    assert lines[0].split() == ["name", "score", "evaluated", "early", "cached", "seconds", "accuracy", "f1"]
    assert lines[1].split() == ["run-a", "0.8125", "16/16", "no", "no", "1.2", "0.8125", "0.8000"]
    assert lines[2].split()[:4] == ["trial-2", "<0.6875", "5/16", "yes"]
    assert full.meets(0.8125) and not full.meets(0.8125, strict=True) and not early.meets(0.7)


# ------------------------------------------------------------------------------------------ other task adapters


def test_image_classification_with_a_tiny_vit(tmp_path):
    from datasets import Image as ImageFeature
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    names = {0: "cat", 1: "dog", 2: "owl"}
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=3, id2label=names, label2id={v: k for k, v in names.items()},
                       architectures=["ViTForImageClassification"])
    model = ViTForImageClassification(config).eval()
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    model.save_pretrained(str(tmp_path / "vit"))
    processor.save_pretrained(str(tmp_path / "vit"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(21)]
    images[3] = images[3].convert("L")  # a grey-scale image is converted to RGB
    labels = [names[int(x)] for x in rng.integers(0, 3, 21)]  # label names, mapped through id2label
    ds = Dataset.from_dict({"image": images, "label": labels}).cast_column("image", ImageFeature())
    ev = Evaluator(ds, metric=ACC, settings=EvalSettings(batch_size=4))  # the task is inferred from the config
    ev.prepare(tmp_path / "vit")
    assert ev.task.name == "image-classification"
    result = ev.evaluate(model)
    with torch.no_grad():
        pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        preds = model(pixel_values=pixels).logits.argmax(-1).numpy()
    ids = np.asarray([{v: k for k, v in names.items()}[x] for x in labels])
    assert result.score == float(np.mean(preds == ids)) and result.n_examples == 21


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_soups.testing.factories import save_tiny_tokenizer, tiny_vocab

    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_vocab()), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    model.save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    return folder, model.eval()


def test_causal_lm_loss_and_perplexity_are_token_weighted(tiny_gpt2):
    from transformers import AutoTokenizer

    folder, model = tiny_gpt2
    texts = sst2_rows("dev", 37)["sentence"][:] + ["a"]  # "a" has 3 tokens with [CLS]/[SEP]; all are kept
    ds = Dataset.from_dict({"text": texts})
    ev = Evaluator(ds, settings=EvalSettings(batch_size=5, max_length=48))
    ev.prepare(folder)
    assert ev.task.name == "causal-lm" and ev.selection_metric == "loss" and not ev.greater_is_better
    result = ev.evaluate(model)
    tok = AutoTokenizer.from_pretrained(str(folder))
    total, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, truncation=True, max_length=48, return_tensors="pt")["input_ids"]
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    assert result.metrics["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert result.metrics["perplexity"] == pytest.approx(np.exp(total / tokens), rel=1e-5)
    # Early rejection on the loss (lower is better): the same decision as the full evaluation.
    for bar in (result.score * 0.5, result.score * 0.99, result.score, result.score * 1.01, 0.0):
        for strict in (False, True):
            early = ev.evaluate(model, bar=bar, strict=strict)
            assert early.meets(bar, strict=strict) == result.meets(bar, strict=strict), (bar, strict)
    assert ev.evaluate(model, bar=result.score * 0.5).stopped_early
    with pytest.raises(EvaluationError, match="no per-example logits"):
        ev.predict_logits(model)


def test_example_quality_is_the_label_margin(models, folders, data):
    """Positive exactly where the prediction is right; the logit of the label minus the other one."""
    ev = make_evaluator(data)
    ev.prepare(folders[0])
    result = ev.evaluate(models[1])
    quality = result.example_quality
    assert quality is not None and quality.shape == (len(data),)
    logits = ev.predict_logits(models[1]).numpy().astype(np.float64)
    labels = np.asarray(data["label"][:])
    np.testing.assert_allclose(quality, logits[np.arange(len(labels)), labels] - logits[np.arange(len(labels)), 1 - labels])
    assert ((quality > 0) == (logits.argmax(-1) == labels)).all()
    assert "example_quality" not in result.to_dict()


def test_priority_changes_only_how_soon_a_failing_model_stops(models, folders):
    """Any priority gives the full evaluation's decisions and metrics; failures first stop sooner."""
    n = 120
    ds = sst2_rows("dev", n, offset=200)
    ev = make_evaluator(ds, settings=EvalSettings(batch_size=8))
    ev.prepare(folders[0])
    rng = np.random.default_rng(0)
    sooner = 0
    for model in models:
        full = ev.evaluate(model)
        k = round(full.score * n)
        oracle = -full.example_quality  # this model's own failures first
        for bar in [(k + 1) / n, (k + 3) / n, full.score, (k - 1) / n, 0.9]:
            plain = ev.evaluate(model, bar=bar)
            for priority in (oracle, rng.normal(size=n)):
                ordered = ev.evaluate(model, bar=bar, priority=priority)
                assert ordered.meets(bar) == full.meets(bar) == plain.meets(bar), (bar, full.score)
                assert not (ordered.stopped_early and full.meets(bar))  # only a failing model stops
                if not ordered.stopped_early:
                    assert ordered.metrics == full.metrics and ordered.n_evaluated == n
            ordered = ev.evaluate(model, bar=bar, priority=oracle)
            if plain.stopped_early:
                assert ordered.n_evaluated <= plain.n_evaluated
                sooner += ordered.n_evaluated < plain.n_evaluated
    assert sooner > 0
    with pytest.raises(EvaluationError, match="priority has 3 values"):
        ev.evaluate(models[0], bar=0.99, priority=[1.0, 2.0, 3.0])
