"""Tests of hf_soups.callback (SoupCallback) and hf_soups.provenance: short Trainer runs of a tiny random BERT on
CPU, candidates published to and pulled from a LocalHub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard, hf_hub_download

from hf_soups.callback import SoupCallback
from hf_soups.candidates import INGREDIENT_FILE, SOUP_FILE
from hf_soups.errors import IncompatibleCandidatesError
from hf_soups.provenance import eval_metrics, last_eval_metrics, training_hyperparameters
from hf_soups.testing.factories import make_base, make_finetune

SST2_DEV = Path("/work/shared/data/sst2/dev.tsv")
LABELS = {0: "negative", 1: "positive"}


def sst2(n: int, offset: int = 0) -> Dataset:
    rows = [line.split("\t") for line in SST2_DEV.read_text().splitlines()[offset: offset + n]]
    return Dataset.from_dict({"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]})


def compute_metrics(pred):
    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


@pytest.fixture
def hub_base(local_hub, tmp_path):
    """A tiny base model published as org/base on the LocalHub; returns its commit sha."""
    folder = make_base(tmp_path / "base-src")
    api = local_hub.api()
    api.create_repo("org/base")
    api.upload_folder(repo_id="org/base", folder_path=str(folder))
    return local_hub.head("org/base")


def run(tmp_path: Path, name: str, callback: SoupCallback, *, seed: int = 1, max_steps: int = 3,
        resume=None, **args):
    """A short Trainer run of org/base (head initialised from seed 0 in every run) with `callback`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained("org/base")
    torch.manual_seed(0)  # same head initialisation in every run of the sweep
    model = AutoModelForSequenceClassification.from_pretrained(
        "org/base", num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})

    def encode(batch):
        return tok(batch["sentence"], truncation=True, max_length=32)

    train = sst2(48, offset=200).map(encode, batched=True)
    dev = sst2(32).map(encode, batched=True)  # keeps the raw `sentence` column for the soup's evaluator
    defaults = dict(output_dir=str(tmp_path / name), max_steps=max_steps, per_device_train_batch_size=8,
                    per_device_eval_batch_size=16, learning_rate=5e-4, seed=seed, use_cpu=True, report_to=[],
                    save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    defaults.update(args)
    trainer = Trainer(model=model, args=TrainingArguments(**defaults), train_dataset=train, eval_dataset=dev,
                      processing_class=tok, compute_metrics=compute_metrics, callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_two_published_candidates_and_the_run_make_a_pushed_soup(local_hub, hub_base, tmp_path):
    scores = tmp_path / "scores"
    for name, seed in (("run-a", 1), ("run-b", 2)):
        run(tmp_path, name, SoupCallback(publish_ingredient_to=f"org/{name}", token=local_hub.token), seed=seed)

    # each ingredient carries its provenance, in the json and in the card
    prov = json.loads(Path(hf_hub_download("org/run-a", INGREDIENT_FILE)).read_text())
    assert prov["base_model"] == "org/base" and prov["base_model_revision"] == hub_base
    assert prov["hyperparameters"]["learning_rate"] == 5e-4 and prov["hyperparameters"]["seed"] == 1
    assert prov["hyperparameters"]["max_steps"] == 3 and "accuracy" in prov["metrics"]
    card_a = ModelCard.load("org/run-a")
    assert card_a.data.base_model == "org/base" and card_a.data.base_model_revision == hub_base
    assert card_a.data.hyperparameters["learning_rate"] == 5e-4
    assert card_a.data.eval_results[0].metric_type == "accuracy"
    assert len(local_hub.api().list_repo_commits("org/run-a")) == 2  # initial commit + one upload

    cb = SoupCallback(["org/run-a", "org/run-b"], method="uniform", publish_ingredient_to="org/run-c",
                      push_to="org/soup", token=local_hub.token, cache_dir=str(scores))
    trainer = run(tmp_path, "run-c", cb, seed=3)

    card = ModelCard.load("org/soup")
    assert sorted(card.data.base_model) == ["org/run-a", "org/run-b", "org/run-c"]
    assert "model-soup" in card.data.tags and card.data.eval_results
    soup_json = json.loads(Path(hf_hub_download("org/soup", SOUP_FILE)).read_text())
    ingredients = soup_json["provenance"]["ingredients"]
    assert len(ingredients) == 3 and all(i["hyperparameters"].get("learning_rate") == 5e-4 for i in ingredients)
    logged = [h for h in trainer.state.log_history if "soup_accuracy" in h]
    assert len(logged) == 1 and logged[0]["soup_accuracy"] == pytest.approx(cb.soup.metrics["accuracy"])
    assert logged[0]["soup_ingredients"] == 3.0 and logged[0]["step"] == 3
    assert (tmp_path / "run-c" / "hf-soups" / "soup" / SOUP_FILE).exists()
    assert not [r for r in local_hub.requests if "evaluate-metric" in r.path]  # the Trainer's compute_metrics only


def test_candidate_of_another_base_revision_is_rejected_before_download_and_training_is_kept(
        local_hub, hub_base, tmp_path):
    bad = make_finetune(tmp_path / "base-src", tmp_path / "bad", base_model="org/base", base_revision="b" * 40)
    api = local_hub.api()
    api.create_repo("org/bad")
    api.upload_folder(repo_id="org/bad", folder_path=str(bad))
    local_hub.clear_requests()

    # checked at train begin: nothing trained, nothing lost
    with pytest.raises(IncompatibleCandidatesError, match="base revision"):
        run(tmp_path, "early", SoupCallback(["org/bad"], token=local_hub.token))
    assert not (tmp_path / "early" / "hf-soups" / "trained").exists()

    # checked at train end: the trained model is saved and the error says where
    with pytest.raises(IncompatibleCandidatesError, match="another revision of the base") as info:
        run(tmp_path, "late", SoupCallback(["org/bad"], token=local_hub.token, check_candidates_at_start=False))
    trained = tmp_path / "late" / "hf-soups" / "trained"
    assert str(trained) in str(info.value)
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(str(trained)).config.id2label[1] == "positive"
    assert json.loads((trained / INGREDIENT_FILE).read_text())["base_model_revision"] == hub_base
    assert local_hub.downloads(".safetensors", repo_id="org/bad") == []
    assert any(r.repo_id == "org/bad" for r in local_hub.requests)  # it was looked at (headers), not downloaded


def test_checkpoints_survive_save_total_limit(local_hub, hub_base, tmp_path):
    cb = SoupCallback(include_checkpoints=True, method="uniform", cache_dir=str(tmp_path / "scores"),
                      load_soup_into_model=True)
    trainer = run(tmp_path, "ckpt", cb, save_strategy="steps", save_steps=1, save_total_limit=1)
    out = tmp_path / "ckpt"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    snaps = out / "hf-soups" / "checkpoints"
    assert sorted(p.name for p in snaps.iterdir()) == ["step-1", "step-2", "step-3"]
    assert not (snaps / "step-1" / "optimizer.pt").exists() and (snaps / "step-1" / "model.safetensors").exists()
    assert json.loads((snaps / "step-2" / INGREDIENT_FILE).read_text())["step"] == 2
    # trained (= step 3) + steps 1 and 2
    assert len(cb.soup.ingredients) == 3
    assert [h for h in trainer.state.log_history if "soup_accuracy" in h]
    # load_soup_into_model: trainer.model now holds the soup's weights
    from safetensors.torch import load_file

    soup_weights = load_file(str(cb.soup.folder / "model.safetensors"))
    live = trainer.model.state_dict()
    assert all(torch.equal(live[k].cpu(), v) for k, v in soup_weights.items() if k in live)
    trained = load_file(str(tmp_path / "ckpt" / "hf-soups" / "trained" / "model.safetensors"))
    assert not torch.equal(trained["classifier.weight"], soup_weights["classifier.weight"])


@pytest.mark.parametrize("trainer_restores", [False, True], ids=["self-restored", "restore_callback_states"])
def test_resume_keeps_collected_checkpoints(local_hub, hub_base, tmp_path, trainer_restores):
    common = dict(save_strategy="steps", save_steps=2, restore_callback_states_from_checkpoint=trainer_restores)
    run(tmp_path, "res", SoupCallback(include_checkpoints=True, cache_dir=str(tmp_path / "scores")), max_steps=2,
        **common)
    state = json.loads((tmp_path / "res" / "checkpoint-2" / "trainer_state.json").read_text())
    assert [s["step"] for s in state["stateful_callbacks"]["SoupCallback"]["attributes"]["snapshots"]] == [2]
    assert "token" not in state["stateful_callbacks"]["SoupCallback"]["args"]

    cb = SoupCallback(include_checkpoints=True, cache_dir=str(tmp_path / "scores"))  # a fresh process's callback
    trainer = run(tmp_path, "res", cb, max_steps=4, resume=str(tmp_path / "res" / "checkpoint-2"), **common)
    if trainer_restores:  # the Trainer replaced our instance by one built from the checkpoint's state
        (cb,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, SoupCallback)]
    assert [s["step"] for s in cb.snapshots] == [2, 4]
    assert len(cb.soup.ingredients) == 2  # trained (step 4) + the step-2 snapshot of the first session


def test_trial_placeholder_publishes_each_run(local_hub, hub_base, tmp_path):
    cb = SoupCallback(publish_ingredient_to="org/sweep-{trial}", token=local_hub.token)
    trainer = run(tmp_path, "sweep", cb, max_steps=1)
    trainer.train()
    assert [p.split("@")[0] for p in cb.published] == ["org/sweep-0", "org/sweep-1"]
    for ref in cb.published:
        repo, sha = ref.split("@")
        assert local_hub.api().model_info(repo).sha == sha


def test_hyperparameters_and_metrics_helpers(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(str(tmp_path), learning_rate=3e-5, num_train_epochs=2, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, weight_decay=0.01, warmup_steps=5, use_cpu=True)
    hp = training_hyperparameters(args, world_size=2)
    assert hp["total_train_batch_size"] == 16 and hp["num_train_epochs"] == 2 and hp["lr_scheduler_type"] == "linear"
    json.dumps(hp)
    logs = [{"loss": 0.5, "step": 1}, {"eval_accuracy": 0.75, "eval_runtime": 1.0, "eval_loss": 0.6, "step": 2}]
    assert list(eval_metrics(logs[1]).items()) == [("accuracy", 0.75), ("loss", 0.6)]
    assert last_eval_metrics(logs) == {"accuracy": 0.75, "loss": 0.6} and last_eval_metrics(logs, step=1) == {}


DDP_SCRIPT = textwrap.dedent('''
    import json, sys, numpy as np, torch
    from pathlib import Path
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
    from hf_soups.callback import SoupCallback

    out, scores = sys.argv[1], sys.argv[2]
    rows = [l.split("\\t") for l in Path("/work/shared/data/sst2/dev.tsv").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained("org/base")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        "org/base", num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    enc = lambda b: tok(b["sentence"], truncation=True, max_length=32)
    ds = lambda a, b: Dataset.from_dict({"sentence": [r[0] for r in rows[a:b]], "label": [int(r[1]) for r in rows[a:b]]})
    cb = SoupCallback(["org/run-a"], method="greedy", push_to="org/soup-ddp", cache_dir=scores)
    args = TrainingArguments(out, max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=8, use_cpu=True,
                             ddp_backend="gloo", report_to=[], save_strategy="no", disable_tqdm=True, seed=5)
    trainer = Trainer(model=model, args=args, train_dataset=ds(200, 248).map(enc, batched=True),
                      eval_dataset=ds(0, 30).map(enc, batched=True), processing_class=tok, callbacks=[cb],
                      compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())})
    trainer.train()
    acc = [h["soup_accuracy"] for h in trainer.state.log_history if "soup_accuracy" in h]
    Path(out, f"rank-{trainer.args.process_index}.json").write_text(
        json.dumps({"soup_accuracy": acc, "ingredients": len(cb.soup.ingredients), "folder": str(cb.soup.folder)}))
''')


@pytest.mark.slow
def test_two_process_run_pushes_once(local_hub, hub_base, tmp_path):
    run(tmp_path, "run-a", SoupCallback(publish_ingredient_to="org/run-a", token=local_hub.token), seed=1)
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    local_hub.clear_requests()
    env = {**os.environ, **local_hub.env(include_token=True), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(script), str(tmp_path / "ddp"), str(tmp_path / "scores")],
        env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank-{i}.json").read_text()) for i in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["ingredients"] == 2 and len(ranks[0]["soup_accuracy"]) == 1
    commits = [r for r in local_hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert len(commits) == 1 and commits[0].repo_id == "org/soup-ddp"
    assert len(local_hub.api().list_repo_commits("org/soup-ddp")) == 2  # initial + the soup
    assert len(local_hub.downloads(".safetensors", repo_id="org/run-a")) == 1  # by the main process only


def test_each_hyperparameter_search_trial_publishes_its_own_repo(local_hub, hub_base, tmp_path):
    pytest.importorskip("optuna")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained("org/base")

    def model_init(trial=None):
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(
            "org/base", num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})

    def encode(batch):
        return tok(batch["sentence"], truncation=True, max_length=32)

    cb = SoupCallback(publish_ingredient_to="org/hp-{trial}", token=local_hub.token)
    args = TrainingArguments(str(tmp_path / "hp"), max_steps=1, per_device_train_batch_size=8, use_cpu=True,
                             report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model_init=model_init, args=args, train_dataset=sst2(16, offset=200).map(encode, batched=True),
                      eval_dataset=sst2(16).map(encode, batched=True), processing_class=tok,
                      compute_metrics=compute_metrics, callbacks=[cb])
    trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-3, log=True)},
        backend="optuna", n_trials=2, direction="maximize")
    assert [p.split("@")[0] for p in cb.published] == ["org/hp-0", "org/hp-1"]
    lrs = []
    for ref in cb.published:
        repo, sha = ref.split("@")
        prov = json.loads(Path(hf_hub_download(repo, INGREDIENT_FILE, revision=sha)).read_text())
        assert prov["trial"] == repo[-1] and prov["base_model_revision"] == hub_base
        assert prov["hyperparameters"]["trial_params"]["learning_rate"] == prov["hyperparameters"]["learning_rate"]
        lrs.append(prov["hyperparameters"]["learning_rate"])
    assert lrs[0] != lrs[1]
    assert (tmp_path / "hp" / "hf-soups" / "run-0" / "trained").is_dir()
