"""End to end through LocalHub: soup Hub repos by name, save, push in one commit, parse the card back, rebuild.

The real `huggingface_hub` client runs over HTTP against `hf_soups.testing.LocalHub`; the CLI runs as a
subprocess pointed at it with `LocalHub.env()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from safetensors.torch import load_file

from hf_soups.builder import SoupBuilder
from hf_soups.mixing import tensor_hash
from hf_soups.testing.factories import make_base, make_finetune

N = 3


@pytest.fixture
def published(local_hub, tmp_path) -> Dict[str, object]:
    """A base and three fine-tunes of it, each in its own repo; the fine-tunes declare the base's commit."""
    api = local_hub.api()
    base = make_base(tmp_path / "base")
    api.create_repo("org/base")
    api.upload_folder(repo_id="org/base", folder_path=str(base))
    base_sha = api.model_info("org/base").sha
    folders: List[Path] = []
    for i in range(N):
        folder = make_finetune(base, tmp_path / f"ft{i}", seed=i + 1, noise=0.05, base_model="org/base",
                               base_revision=base_sha, hyperparameters={"learning_rate": 2e-5 * (i + 1)})
        api.create_repo(f"org/ft{i}")
        api.upload_folder(repo_id=f"org/ft{i}", folder_path=str(folder))
        folders.append(folder)
    return {"base": base, "base_sha": base_sha, "folders": folders, "refs": [f"org/ft{i}" for i in range(N)]}


def naive_average(folders, weights=None) -> Dict[str, torch.Tensor]:
    """The reference: load every state dict fully and average in float64."""
    weights = weights or [1.0 / len(folders)] * len(folders)
    states = [load_file(str(Path(f) / "model.safetensors")) for f in folders]
    return {k: sum(w * s[k].double() for w, s in zip(weights, states)).to(states[0][k].dtype) for k in states[0]}


def test_uniform_soup_by_repo_name_saved_pushed_and_card_parsed(local_hub, published, tmp_path):
    from huggingface_hub import HfApi, ModelCard
    from transformers import AutoModelForSequenceClassification

    soup = SoupBuilder(candidates=published["refs"], method="uniform", token=local_hub.token,
                       output_dir=tmp_path / "soup").build()
    # the weights: the plain average, loadable by transformers
    out = load_file(str(tmp_path / "soup" / "model.safetensors"))
    ref = naive_average(published["folders"])
    assert set(out) == set(ref)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-6)
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "soup"))
    assert model.config.num_labels == 2

    # provenance: every ingredient pinned to its commit, base id and revision, tensor hash of the output
    prov = json.loads((tmp_path / "soup" / "soup.json").read_text())
    api = HfApi(endpoint=local_hub.endpoint)
    shas = [api.model_info(r).sha for r in published["refs"]]
    assert prov["candidates"] == [f"{r}@{s}" for r, s in zip(published["refs"], shas)]
    assert prov["provenance"]["base"] == {"id": "org/base", "revision": published["base_sha"]}
    assert prov["provenance"]["tensor_hash"] == tensor_hash(tmp_path / "soup") == soup.tensor_hash
    assert [i["weight"] for i in prov["provenance"]["ingredients"]] == pytest.approx([1 / N] * N)
    assert prov["output"]["dir"] is None  # no local path in what gets published

    # push: one commit, everything in it
    assert not api.repo_exists("org/soup")
    url = soup.push_to_hub("org/soup", token=local_hub.token)
    assert "org/soup" in url
    commits = api.list_repo_commits("org/soup")
    files = set(api.list_repo_files("org/soup"))
    assert {"model.safetensors", "config.json", "README.md", "soup.json", "tokenizer.json"} <= files
    # one commit holds the soup (create_repo makes at most the initial empty commit)
    soup_commits = [c for c in commits if "soup of 3 ingredients" in c.title]
    assert len(soup_commits) == 1 and len(commits) <= 2, [c.title for c in commits]

    card = ModelCard.load("org/soup")
    data = card.data.to_dict()
    assert data["base_model"] == published["refs"]
    assert data["base_model_relation"] == "merge"
    assert {"model-soup", "merge"} <= set(data["tags"])
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-classification"
    assert data["license"] == "apache-2.0"
    text = card.text
    assert published["base_sha"] in text  # the base revision
    for ref, sha in zip(published["refs"], shas):
        assert ref in text and sha[:12] in text  # ingredients table: repo and commit
    assert "4e-05" in text  # a hyper-parameter the candidate recorded
    assert "hf-soups build soup.json" in text or "soup.json" in text  # how to rebuild
    assert "Wortsman" in text  # citation
    assert local_hub.token not in (tmp_path / "soup" / "README.md").read_text()


def test_published_soup_json_rebuilds_the_same_tensors(local_hub, published, tmp_path):
    from huggingface_hub import hf_hub_download

    first = SoupBuilder(candidates=published["refs"], method="weighted", weights=[0.5, 0.3, 0.2],
                        token=local_hub.token, output_dir=tmp_path / "a", push_to="org/weighted").build()
    # a new commit on one ingredient must not change the rebuild: the recipe is pinned to shas
    api = local_hub.api()
    make_finetune(published["base"], tmp_path / "other", seed=42, noise=0.2, base_model="org/base",
                  base_revision=published["base_sha"])
    api.upload_folder(repo_id="org/ft1", folder_path=str(tmp_path / "other"))
    recipe = hf_hub_download("org/weighted", "soup.json")
    again = SoupBuilder.from_recipe(recipe, token=local_hub.token, output_dir=tmp_path / "b").build()
    assert again.tensor_hash == first.tensor_hash
    assert tensor_hash(tmp_path / "b") == tensor_hash(tmp_path / "a")
    ref = naive_average(published["folders"], [0.5, 0.3, 0.2])
    out = load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-6)


def test_interpolate_wise_ft_is_base_plus_alpha_delta(local_hub, published, tmp_path):
    soup = SoupBuilder(candidates=published["refs"][:1], method="interpolate", base=f"org/base@{published['base_sha']}",
                       alphas=[0.5], token=local_hub.token, output_dir=tmp_path / "wise").build()
    base = load_file(str(published["base"] / "model.safetensors"))
    ft = load_file(str(published["folders"][0] / "model.safetensors"))
    out = load_file(str(Path(soup.folder) / "model.safetensors"))
    checked = 0
    for name, value in out.items():
        short = name.split(".", 1)[1] if name.startswith("bert.") else name
        if short in base and value.is_floating_point():
            torch.testing.assert_close(value, base[short] + 0.5 * (ft[name] - base[short]), rtol=0, atol=1e-6)
            checked += 1
        elif value.is_floating_point():  # the head has no base counterpart: it is the fine-tune's
            torch.testing.assert_close(value, ft[name])
    assert checked > 10


def _cli(args: List[str], hub, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **hub.env(), "HF_TOKEN": hub.token}
    return subprocess.run([sys.executable, "-m", "hf_soups.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def test_cli_build_and_push_then_rebuild_from_recipe(local_hub, published, tmp_path):
    from huggingface_hub import HfApi, ModelCard

    r = _cli(["build", "--candidates", *published["refs"], "--method", "uniform", "--output", str(tmp_path / "o"),
              "--push-to", "org/cli-soup"], local_hub)
    assert r.returncode == 0, r.stderr
    assert "pushed to org/cli-soup" in r.stdout
    assert local_hub.token not in r.stdout + r.stderr
    card = ModelCard.load("org/cli-soup")
    assert card.data.base_model_relation == "merge"
    # the output folder exists: a second build into it needs --overwrite
    r2 = _cli(["build", "--candidates", *published["refs"], "--output", str(tmp_path / "o")], local_hub)
    assert r2.returncode == 2 and "--overwrite" in r2.stderr
    # a YAML recipe, the same schema as soup.json
    recipe = tmp_path / "recipe.yaml"
    from hf_soups.recipe import SoupConfig

    cfg = SoupConfig.load(tmp_path / "o" / "soup.json")
    cfg.output.dir = str(tmp_path / "from-yaml")
    cfg.push_to = None
    cfg.save(recipe)
    r3 = _cli(["build", str(recipe)], local_hub)
    assert r3.returncode == 0, r3.stderr
    prov = json.loads((tmp_path / "o" / "soup.json").read_text())["provenance"]
    assert tensor_hash(tmp_path / "from-yaml") == prov["tensor_hash"]
    assert HfApi(endpoint=local_hub.endpoint).repo_exists("org/cli-soup")
