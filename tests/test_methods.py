"""Tests of hf_soups.methods: greedy decisions against a naive reference, early rejection, learned soups, the
logit ensemble. Tiny random BERT fine-tunes, SST-2 dev rows and the character tokenizer; offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from hf_soups.candidates import Candidate
from hf_soups.evaluation import EvalSettings, Evaluator
from hf_soups.methods import Greedy, Learned, MixContext, logit_ensemble
from hf_soups.metrics import local_metric_path
from hf_soups.recipe import EvaluationConfig, GreedyConfig, LearnedConfig, SoupConfig

from _soup_models import make_probe_finetunes, sst2_rows

ACC = str(local_metric_path("accuracy"))
N_ROWS = 90  # not a multiple of the batch size (8)


# Tiny models run fastest on one thread (see the `one_thread` fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Five fine-tunes of one base with input-dependent predictions, plus a byte copy of ft1 (a sure tie)."""
    root = tmp_path_factory.mktemp("soup-models")
    out = make_probe_finetunes(root, 5)
    shutil.copytree(out[1], root / "ft1-copy")
    return out + [root / "ft1-copy"]


@pytest.fixture(scope="module")
def candidates(folders):
    return [Candidate(str(f)).resolve() for f in folders]


@pytest.fixture(scope="module")
def data() -> Dataset:
    return sst2_rows("dev", N_ROWS)


def make_ctx(tmp_path, folders, candidates, data, *, method="greedy", cache_dir=None, **options) -> MixContext:
    config = SoupConfig(candidates=[c.ref for c in candidates], method=method,
                        evaluation=EvaluationConfig(dataset="sst2-rows"), **options)
    ev = Evaluator(data, task="sequence-classification", metric=ACC, settings=EvalSettings(batch_size=8),
                   cache_dir=cache_dir)
    ev.prepare(folders[0])
    return MixContext(candidates=list(candidates), folders=list(folders), config=config,
                      output_dir=tmp_path / f"out-{method}", evaluator=ev)


# ------------------------------------------------------------------------------------------------ reference


def reference_model(folder):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()


def reference_accuracy(model, data) -> float:
    """A plain padded batch through `transformers` and argmax: what the evaluator must reproduce."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.name_or_path)
    enc = tok(data["sentence"][:], truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = model(**enc).logits.argmax(-1).numpy()
    return float(np.mean(preds == np.asarray(data["label"][:])))


def naive_greedy(folders, data, *, strict=False, min_delta=0.0):
    """The paper's loop, the slow way: a new model per trial built from an averaged state dict."""
    states = [load_file(str(Path(f) / "model.safetensors")) for f in folders]
    scores = [reference_accuracy(reference_model(f), data) for f in folders]
    order = sorted(range(len(folders)), key=lambda i: (-scores[i], i))
    accepted, current = [order[0]], scores[order[0]]
    decisions = [(order[0], current, True)]
    for i in order[1:]:
        members = accepted + [i]
        avg = {k: sum(states[j][k] for j in members) / len(members) if v.is_floating_point() else v
               for k, v in states[0].items()}
        model = reference_model(folders[0])
        model.load_state_dict(avg, strict=False)
        score = reference_accuracy(model, data)
        bar = current + min_delta
        ok = score > bar if strict else score >= bar
        decisions.append((i, score, ok))
        if ok:
            accepted, current = members, score
    return scores, order, decisions


# ------------------------------------------------------------------------------------------------ greedy


def test_greedy_makes_the_naive_loops_decisions_on_one_live_model(tmp_path, folders, candidates, data):
    ctx = make_ctx(tmp_path, folders, candidates, data, greedy=GreedyConfig(early_rejection=False))
    forwards = []
    ctx.model().register_forward_hook(lambda *a: forwards.append(1))
    result = Greedy().run(ctx)

    scores, order, decisions = naive_greedy(folders, data)
    assert [ctx.scores[i].score for i in range(len(folders))] == scores
    assert [h["index"] for h in result.history] == order
    assert [(h["index"], h["score"], h["accepted"]) for h in result.history] == decisions
    accepted_flags = [h["accepted"] for h in result.history[1:]]
    assert True in accepted_flags and False in accepted_flags, "the data should exercise both decisions"
    # Every evaluation ran on the one live model: ingredients and trials, ceil(90 / 8) = 12 batches each.
    assert len(forwards) == 12 * (len(folders) + len(folders) - 1)
    # History, weights and the tie between ft1 and its copy (same score; candidate order decides).
    for h in result.history:
        assert set(h) >= {"step", "ingredient", "candidate", "score", "bar", "accepted", "n_evaluated", "stopped_early"}
    ft1, copy = candidates[1].name, candidates[5].name
    assert [ft1, copy] in result.extra["ties"]
    assert result.extra["order"].index(ft1) < result.extra["order"].index(copy)
    kept = [h["index"] for h in result.history if h["accepted"]]
    assert result.weights == [1 / len(kept) if i in kept else 0.0 for i in range(len(folders))]
    assert result.score == decisions[max(j for j, d in enumerate(decisions) if d[2])][1]
    # The written soup is the mean of the accepted ingredients and loads with from_pretrained.
    written = load_file(str(ctx.output_dir / "model.safetensors"))
    states = [load_file(str(Path(folders[i]) / "model.safetensors")) for i in kept]
    for name, value in written.items():
        torch.testing.assert_close(value, sum(s[name] for s in states) / len(states), rtol=1e-5, atol=1e-6)
    assert reference_model(ctx.output_dir).config.id2label == {0: "negative", 1: "positive"}


@pytest.mark.parametrize("strict,min_delta", [(False, 0.0), (True, 0.0), (False, 0.02)])
def test_early_rejection_makes_the_same_decisions(tmp_path, folders, candidates, data, strict, min_delta):
    runs = {}
    for early in (False, True):
        ctx = make_ctx(tmp_path / str(early), folders, candidates, data,
                       greedy=GreedyConfig(strict=strict, min_delta=min_delta, early_rejection=early))
        runs[early] = Greedy().run(ctx)
    full, fast = runs[False], runs[True]
    assert [(h["index"], h["accepted"]) for h in fast.history] == [(h["index"], h["accepted"]) for h in full.history]
    assert fast.weights == full.weights and fast.score == full.score and fast.metrics == full.metrics
    for f, e in zip(full.history, fast.history):
        if e["stopped_early"]:
            assert e["score"] is None and not e["accepted"] and e["n_evaluated"] < N_ROWS
        else:
            assert e["score"] == f["score"] and e["n_evaluated"] == N_ROWS
    saved = sum(N_ROWS - h["n_evaluated"] for h in fast.history)
    assert fast.extra["examples_saved_by_early_rejection"] == saved
    assert full.extra["examples_saved_by_early_rejection"] == 0
    if strict:  # the strict rule rejects the tie's copy before it ends
        assert saved > 0
    _, _, decisions = naive_greedy(folders, data, strict=strict, min_delta=min_delta)
    assert [(h["index"], h["accepted"]) for h in full.history] == [(i, ok) for i, _, ok in decisions]


def test_second_greedy_run_evaluates_nothing(tmp_path, folders, candidates, data):
    first = Greedy().run(make_ctx(tmp_path / "a", folders, candidates, data, cache_dir=tmp_path / "cache"))
    ctx = make_ctx(tmp_path / "b", folders, candidates, data, cache_dir=tmp_path / "cache")
    forwards = []
    ctx.model().register_forward_hook(lambda *a: forwards.append(1))
    second = Greedy().run(ctx)
    assert forwards == [], "every ingredient and trial score comes from the cache"
    assert all(h["cached"] for h in second.history)
    strip = lambda hs: [{k: v for k, v in h.items() if k != "cached"} for h in hs]  # noqa: E731
    assert strip(second.history) == strip(first.history) and second.weights == first.weights
    assert second.extra["examples_evaluated_in_trials"] == 0


def test_cached_ingredient_scores_still_order_the_trials(tmp_path, folders, candidates, data):
    """Ingredient scores from the cache (a uniform soup built first, say) bring their per-example quality: the
    trials evaluate the same examples as in a run that scored the ingredients itself."""
    from hf_soups.methods import score_ingredients

    rule = GreedyConfig(strict=True)  # the strict rule stops some trials early (see above)
    cold = Greedy().run(make_ctx(tmp_path / "cold", folders, candidates, data, greedy=rule))
    assert any(h["stopped_early"] for h in cold.history)
    score_ingredients(make_ctx(tmp_path / "first", folders, candidates, data, cache_dir=tmp_path / "cache"))
    warm = Greedy().run(make_ctx(tmp_path / "warm", folders, candidates, data, greedy=rule,
                                 cache_dir=tmp_path / "cache"))
    assert warm.history[0]["cached"]
    assert [(h["index"], h["accepted"]) for h in warm.history] == [(h["index"], h["accepted"]) for h in cold.history]
    # trials not answered by the cache (averaging ft1 with its byte copy is ft1 itself, whose score is cached)
    keep = ("score", "n_evaluated", "stopped_early")
    fresh = [(w, c) for w, c in zip(warm.history[1:], cold.history[1:]) if not w["cached"]]
    assert any(c["stopped_early"] for _, c in fresh)
    assert [{k: w[k] for k in keep} for w, _ in fresh] == [{k: c[k] for k in keep} for _, c in fresh]


# ------------------------------------------------------------------------------------------------ learned


def mean_loss(folder_or_state, folders, data) -> float:
    from transformers import AutoTokenizer

    model = reference_model(folders[0])
    model.load_state_dict(folder_or_state, strict=False)
    tok = AutoTokenizer.from_pretrained(str(folders[0]))
    enc = tok(data["sentence"][:], truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        return float(model(**enc, labels=torch.tensor(data["label"][:])).loss)


@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_learned_coefficients_sum_to_one_and_lower_the_loss(tmp_path, folders, candidates, data, granularity):
    ctx = make_ctx(tmp_path, folders[:4], candidates[:4], data, method="learned",
                   learned=LearnedConfig(granularity=granularity, steps=25, lr=0.1, batch_size=16))
    with pytest.warns(UserWarning, match="holds all 4 ingredients in memory"):
        result = Learned().run(ctx)
    coef = result.coefficients
    rows = [coef["per_ingredient"]] if granularity == "model" else list(coef["per_tensor"].values())
    for row in rows:
        assert len(row) == 4 and min(row) > 0 and sum(row) == pytest.approx(1.0, abs=1e-5)
    assert coef["ingredients"] == [c.name for c in candidates[:4]]
    assert sum(result.weights) == pytest.approx(1.0, abs=1e-5)
    extra = result.extra
    assert extra["held_out_loss_learned"] < extra["held_out_loss_uniform"]
    # The written soup is the coefficient-weighted mean, and its loss is the learned (lower) one.
    states = [load_file(str(Path(f) / "model.safetensors")) for f in folders[:4]]
    written = load_file(str(ctx.output_dir / "model.safetensors"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    w = coef["per_ingredient"] if granularity == "model" else coef["per_tensor"][name]
    torch.testing.assert_close(written[name], sum(wi * s[name] for wi, s in zip(w, states)), rtol=1e-4, atol=1e-5)
    uniform = {k: sum(s[k] for s in states) / 4 for k in states[0]}
    assert mean_loss(written, folders, data) < mean_loss(uniform, folders, data)
    assert result.score == ctx.evaluator.evaluate(reference_model(ctx.output_dir)).score


def test_learned_soup_coefficients_are_saved_in_soup_json(tmp_path, folders, data):
    from hf_soups import SoupBuilder

    soup = SoupBuilder(candidates=[str(f) for f in folders[:3]], method="learned", eval_dataset=data,
                       metric=ACC, output_dir=tmp_path / "soup", cache_dir=tmp_path / "cache", batch_size=8,
                       learned={"steps": 5, "batch_size": 16}, check_weights=False).build()
    saved = json.loads((Path(soup.folder) / "soup.json").read_text())
    coefficients = saved["provenance"]["coefficients"]["per_ingredient"]
    assert len(coefficients) == 3 and sum(coefficients) == pytest.approx(1.0, abs=1e-5)
    assert coefficients == [round(x, 6) for x in soup.coefficients["per_ingredient"]]


# ------------------------------------------------------------------------------------------------ ensemble


def test_logit_ensemble_scores_the_mean_logits(tmp_path, folders, candidates, data):
    ctx = make_ctx(tmp_path, folders[:3], candidates[:3], data)
    metrics = logit_ensemble(ctx)
    assert ctx.scores == {}  # the ensemble does not need the ingredients' scores
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folders[0]))
    enc = tok(data["sentence"][:], truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        total = sum(reference_model(f)(**enc).logits.double() for f in folders[:3])
    preds = (total / 3).argmax(-1).numpy()
    assert metrics == {"accuracy": float(np.mean(preds == np.asarray(data["label"][:])))}
