"""Bad inputs: each gives ONE clear error, naming the input and the fix, before any heavy work.

Every case runs twice: through the Python API (an :class:`~hf_soups.errors.HfSoupsError` subclass) and through
the command line (``hf-soups build RECIPE``: exit code 2, one ``error:`` message, no traceback), in-process with
`hf_soups.cli.main`, and for a representative subset also as a real ``hf-soups`` subprocess pointed at the same
LocalHub. In both, the LocalHub request log must show that no weight file was
downloaded (safetensors headers are read with Range requests, which are not downloads).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from hf_soups.builder import SoupBuilder
from hf_soups.errors import (
    AuthenticationError,
    CandidateNotFoundError,
    EvaluationError,
    HfSoupsError,
    InvalidReferenceError,
    OutputExistsError,
    RecipeError,
)
from hf_soups.metrics import local_metric_path
from hf_soups.recipe import SoupConfig

SST2_DEV = Path("/work/shared/data/sst2/dev.tsv")
ACC = str(local_metric_path("accuracy"))
REPOS = {"org/ft0": "ft0", "org/ft1": "ft1", "org/ft2": "ft2"}


def _files(folder: Path) -> Dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hub(local_hub, tiny_models):
    """A LocalHub holding three compatible tiny fine-tunes, a private one, a gated one and a weightless one."""
    for repo, key in REPOS.items():
        local_hub.create_repo(repo)
        local_hub.commit_files(repo, _files(tiny_models[key]))
    local_hub.create_repo("org/secret", private=True)
    local_hub.commit_files("org/secret", _files(tiny_models["ft2"]))
    local_hub.create_repo("org/gated", gated="auto")
    local_hub.commit_files("org/gated", _files(tiny_models["ft2"]))
    local_hub.create_repo("org/noweights")
    local_hub.commit_files("org/noweights", {"config.json": (tiny_models["ft0"] / "config.json")})
    # a sharded checkpoint whose index names a shard that is not in the repo
    local_hub.create_repo("org/missing-shard")
    files = {k: v for k, v in _files(tiny_models["ft1"]).items() if k != "model.safetensors"}
    files["model-00001-of-00002.safetensors"] = tiny_models["ft1"] / "model.safetensors"
    import json

    from safetensors import safe_open

    with safe_open(str(tiny_models["ft1"] / "model.safetensors"), framework="pt") as fh:
        names = list(fh.keys())
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00002.safetensors" for n in names}}
    index["weight_map"][names[-1]] = "model-00002-of-00002.safetensors"
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    local_hub.commit_files("org/missing-shard", files)
    local_hub.clear_requests()
    return local_hub


@pytest.fixture
def data(tmp_path) -> Dict[str, Path]:
    """Held-out files: a good SST-2 sample, one with a label the 2-class models do not have."""
    lines = [ln for ln in SST2_DEV.read_text().splitlines() if '"' not in ln][:16]
    good = tmp_path / "dev.tsv"
    good.write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    bad = tmp_path / "three_labels.tsv"
    bad.write_text("sentence\tlabel\n" + "\n".join(f"{ln.split(chr(9))[0]}\t{i % 3}" for i, ln in enumerate(lines)) + "\n")
    named = tmp_path / "named_labels.tsv"
    named.write_text("sentence\tlabel\n" + "\n".join(f"{ln.split(chr(9))[0]}\t{'pos' if i % 2 else 'neg'}"
                                                   for i, ln in enumerate(lines)) + "\n")
    return {"good": good, "three_labels": bad, "named_labels": named}


def _weight_downloads(hub) -> List[str]:
    return [f"{r.repo_id}/{r.filename}" for r in hub.requests
            if r.method == "GET" and r.status == 200 and (r.filename or "").endswith((".safetensors", ".bin"))]


# -- the cases ----------------------------------------------------------------------------------------------
# Each case: a recipe (what the user wrote), the error class, and fragments the message must contain: the bad
# input itself and a word of the fix. `setup` may prepare the output folder.

EVAL = {"metric": [ACC], "max_samples": 8, "batch_size": 8}


def _recipe(**changes: Any) -> Dict[str, Any]:
    recipe: Dict[str, Any] = {"candidates": ["org/ft0", "org/ft1"], "method": "uniform"}
    recipe.update(changes)
    return recipe


CASES = {
    "malformed repo id": (_recipe(candidates=["org/mo del", "org/ft1"]), InvalidReferenceError,
                          ["'org/mo del' is not a valid Hub repo id", "Use owner/name"]),
    "malformed revision": (_recipe(candidates=["org/ft0@bad rev", "org/ft1"]), InvalidReferenceError,
                           ["'bad rev' is not a valid revision", "commit sha"]),
    "empty revision": (_recipe(candidates=["org/ft0@", "org/ft1"]), InvalidReferenceError,
                       ["org/ft0@", "empty revision", "org/model@<branch|sha>"]),
    "repo not found": (_recipe(candidates=["org/ft0", "org/nope"]), CandidateNotFoundError,
                       ["org/nope", "does not exist", "Check the name"]),
    "revision not found": (_recipe(candidates=["org/ft0@no-such-branch", "org/ft1"]), CandidateNotFoundError,
                           ["revision 'no-such-branch' does not exist in org/ft0", "list_repo_refs"]),
    "folder not found": (_recipe(candidates=["./no-such-folder", "org/ft1"]), CandidateNotFoundError,
                         ["no-such-folder", "does not exist", "Check the path"]),
    "repo without weights": (_recipe(candidates=["org/ft0", "org/noweights"]), CandidateNotFoundError,
                             ["org/noweights", "no model weights", "save_pretrained"]),
    "shard file not found": (_recipe(candidates=["org/ft0", "org/missing-shard"]), CandidateNotFoundError,
                             ["org/missing-shard", "model-00002-of-00002.safetensors"]),
    "private repo without token": (_recipe(candidates=["org/ft0", "org/secret"]), CandidateNotFoundError,
                                   ["org/secret", "private", "HF_TOKEN"]),
    "gated repo without token": (_recipe(candidates=["org/ft0", "org/gated"]), AuthenticationError,
                                 ["org/gated", "gated", "HF_TOKEN"]),
    "one candidate only": (_recipe(candidates=["org/ft0"]), RecipeError,
                           ["needs at least 2 candidates, got 1", "Name more candidates"]),
    "one distinct commit only": (_recipe(candidates=["org/ft0", "org/ft0@main"]), RecipeError,
                                 ["org/ft0@main", "same commit", "distinct"]),
    "weights not summing to one": (_recipe(method="weighted", weights=[0.3, 0.3]), RecipeError,
                                   ["the weights sum to 0.6, not 1", "normalize: true"]),
    "negative weight": (_recipe(method="weighted", weights=[-0.5, 1.5]), RecipeError,
                        ["weight #1 is negative (-0.5)", ">= 0"]),
    "NaN weight": (_recipe(method="weighted", weights=[float("nan"), 1.0]), RecipeError,
                   ["weight #1 is nan, not a finite number", "finite numbers"]),
    "wrong number of weights": (_recipe(method="weighted", weights=[1.0]), RecipeError,
                                ["1 weights for 2 candidates", "one weight per candidate"]),
    "dataset split not found": (_recipe(evaluation={"dataset": "org/sst2-tiny", "split": "tset", **EVAL}),
                                EvaluationError, ["tset", "validation"]),
    "dataset file not found": (_recipe(evaluation={"dataset": "./missing.tsv", **EVAL}), EvaluationError,
                               ["missing.tsv", "not found"]),
    "dataset column not found": (_recipe(evaluation={"dataset": "{good}", "columns": {"text": "sentense"}, **EVAL}),
                                 EvaluationError, ["'sentense'", "available columns", "columns="]),
    "labels not matching the model": (_recipe(evaluation={"dataset": "{three_labels}", **EVAL}), EvaluationError,
                                      ["label ids [2] outside 0..1", "label"]),
    "metric cannot be loaded": (_recipe(evaluation={"dataset": "{good}", **{**EVAL, "metric": ["no-such-metric"]}}),
                                EvaluationError, ["no-such-metric", "could not be loaded", "local path"]),
    "label names not matching the model": (_recipe(evaluation={"dataset": "{named_labels}", **EVAL}), EvaluationError,
                                           ["label names ['neg', 'pos']", "map the labels"]),
    "greedy without evaluation": (_recipe(method="greedy"), RecipeError,
                                  ["method 'greedy' needs a held-out evaluation dataset", "evaluation:"]),
    "interpolate without base": (_recipe(method="interpolate"), RecipeError,
                                 ["method 'interpolate' needs `base`", "base: org/base-model@<sha>"]),
    "alpha out of range": (_recipe(method="interpolate", base="org/ft2", alphas=[1.5]), RecipeError,
                           ["alphas must be in [0, 1], got [1.5]", "alphas: [0.25"]),
    "push target with a path trick": (_recipe(push_to="org/../x"), InvalidReferenceError,
                                      ["'org/../x' is not a valid repo id for push_to", "owner/name"]),
    "wrong type in recipe": (_recipe(compare="yes"), RecipeError, ["`compare` must be true or false", "got 'yes'"]),
    "unknown method": (_recipe(method="gredy"), RecipeError, ["unknown method 'gredy'", "did you mean 'greedy'"]),
    "recipe with unknown key": ({"candidtes": ["org/ft0", "org/ft1"]}, RecipeError,
                                ["unknown key `candidtes`", "did you mean `candidates`"]),
    "recipe with unknown nested key": (_recipe(evaluation={"dataset": "{good}", "splt": "validation"}), RecipeError,
                                       ["unknown key `evaluation.splt`", "did you mean `split`"]),
    "output folder exists and is not empty": (_recipe(), OutputExistsError,
                                              ["exists and is not empty", "--overwrite"]),
}

#: Cases that must be fixed outside this test module's owner; see .notes/requests.md.
PENDING: Dict[str, str] = {}


def _materialise(recipe: Dict[str, Any], data: Dict[str, Path], hub, tmp_path: Path) -> Dict[str, Any]:
    """Fill in file paths, seed the Hub dataset, and point the output at a folder under tmp_path."""
    recipe = yaml.safe_load(yaml.safe_dump(recipe))  # deep copy
    ev = recipe.get("evaluation")
    if isinstance(ev, dict) and isinstance(ev.get("dataset"), str):
        ev["dataset"] = ev["dataset"].format(**{k: str(v) for k, v in data.items()})
        if ev["dataset"] == "org/sst2-tiny":
            hub.seed_dataset("org/sst2-tiny", {"validation.tsv": data["good"].read_text()})
            hub.clear_requests()
    if "candidtes" not in recipe:
        recipe.setdefault("output", {})["dir"] = str(tmp_path / "out")
    return recipe


def _prepare_output(name: str, tmp_path: Path) -> None:
    if name == "output folder exists and is not empty":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "precious.txt").write_text("do not lose me")


def _check_message(text: str, fragments: List[str]) -> None:
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in the message:\n{text}"


def _marks(name: str) -> list:
    reason = PENDING.get(name)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


def _mark(name: str):
    return pytest.param(name, marks=_marks(name))


@pytest.mark.parametrize("name", [_mark(n) for n in CASES])
def test_bad_input_python(name, hub, data, tmp_path, monkeypatch):
    recipe, error, fragments = CASES[name]
    monkeypatch.chdir(tmp_path)
    _prepare_output(name, tmp_path)
    with pytest.raises(HfSoupsError) as info:
        config = SoupConfig.from_dict(_materialise(recipe, data, hub, tmp_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            SoupBuilder(config=config, cache_dir=tmp_path / "scores").build()
    err = info.value
    assert isinstance(err, error), f"{type(err).__name__}: {err}"
    assert err.hint, "the error must say what to do"
    _check_message(str(err), fragments)
    assert _weight_downloads(hub) == [], "weights were downloaded before the input was rejected"
    if name == "output folder exists and is not empty":
        assert (tmp_path / "out" / "precious.txt").read_text() == "do not lose me"


def _cli(args: List[str], hub, tmp_path: Path, *, token: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, **hub.env(include_token=token), "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if not token:
        env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "hf_soups.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)


def _main(args: List[str], tmp_path: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """`hf-soups ARGS` in this process (the fixture's LocalHub is patched in): exit code, stdout, stderr."""
    from hf_soups import builder, cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(builder, "default_cache_dir", lambda: tmp_path / "scores")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(args)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


#: Cases also run as a real `hf-soups` process (the rest run `cli.main` in-process: same code, no start-up cost).
SUBPROCESS_CASES = ["malformed repo id", "private repo without token", "weights not summing to one",
                    "metric cannot be loaded", "output folder exists and is not empty", "recipe with unknown key"]


@pytest.mark.parametrize(
    "name, process",
    [pytest.param(n, False, id=f"{n}-main", marks=_marks(n)) for n in CASES]
    + [pytest.param(n, True, id=f"{n}-process", marks=_marks(n)) for n in SUBPROCESS_CASES],
)
def test_bad_input_cli(name, process, hub, data, tmp_path, capsys, monkeypatch):
    recipe, _error, fragments = CASES[name]
    _prepare_output(name, tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_materialise(recipe, data, hub, tmp_path)))
    proc = _cli(["build", str(path)], hub, tmp_path) if process else _main(["build", str(path)], tmp_path,
                                                                            capsys, monkeypatch)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "  -> " in proc.stderr, "the message must say what to do"
    _check_message(proc.stderr, [f.replace("--overwrite", "overwrite") for f in fragments])
    assert _weight_downloads(hub) == [], "weights were downloaded before the input was rejected"


# -- the same inputs through command-line flags --------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--candidates", "org/ft0", "org/ft1", "--method", "weighted", "--weights", "nan", "1"],
         ["weight #1 is nan"]),
        (["--candidates", "org/ft0", "org/ft1", "--method", "weighted", "--weights", "-1", "2"],
         ["weight #1 is negative"]),
        (["--candidates", "org/ft0", "org/ft1", "--method", "weighted", "--weights", "0.2", "0.2"],
         ["the weights sum to 0.4, not 1"]),
        (["--candidates", "org/ft0"], ["needs at least 2 candidates"]),
        (["--candidates", "../etc/passwd", "org/ft1"], ["does not exist"]),
    ],
)
def test_bad_flags_cli(args, fragments, hub, tmp_path, capsys, monkeypatch):
    argv = ["build", *args, "--output", str(tmp_path / "out")]
    proc = _cli(argv, hub, tmp_path) if "nan" in args else _main(argv, tmp_path, capsys, monkeypatch)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    _check_message(proc.stderr, fragments)
    assert _weight_downloads(hub) == []


@pytest.mark.parametrize(
    "text, fragments",
    [
        (None, ["recipe", "does not exist", "Check the path"]),
        ("candidates: [org/ft0, org/ft1\nmethod: uniform\n", ["the recipe is not valid YAML"]),
        ("- org/ft0\n- org/ft1\n", ["a recipe must be a mapping", "recipes/"]),
    ],
    ids=["recipe file not found", "recipe not YAML", "recipe not a mapping"],
)
def test_unreadable_recipe_cli(text, fragments, hub, tmp_path, capsys, monkeypatch):
    path = tmp_path / "recipe.yaml"
    if text is not None:
        path.write_text(text)
    proc = _main(["build", str(path)], tmp_path, capsys, monkeypatch)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr or text is not None
    _check_message(proc.stderr, fragments)
    assert hub.requests == [], "nothing may be asked of the Hub for a recipe that cannot be read"


@pytest.mark.parametrize(
    "refs, fragments",
    [
        (["org/ft0", "org/mo del"], ["'org/mo del' is not a valid Hub repo id"]),
        (["org/ft0", "org/secret"], ["org/secret", "private"]),
        (["org/ft0@nope", "org/ft1"], ["revision 'nope' does not exist in org/ft0"]),
    ],
    ids=["malformed", "private", "revision"],
)
def test_verify_cli_bad_inputs_exit_2(refs, fragments, hub, tmp_path, capsys, monkeypatch):
    proc = _main(["verify", *refs], tmp_path, capsys, monkeypatch)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    _check_message(proc.stderr, fragments)
    assert _weight_downloads(hub) == []


def test_verify_cli_bad_reference_exits_2(hub, tmp_path):
    proc = _cli(["verify", "org/ft0", "org/nope"], hub, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "org/nope" in proc.stderr and "Traceback" not in proc.stderr
    assert _weight_downloads(hub) == []


# -- what must still work --------------------------------------------------------------------------------------


def test_duplicate_commit_is_dropped_with_a_warning(hub, tmp_path):
    sha = hub.head("org/ft0")
    builder = SoupBuilder(candidates=["org/ft0", f"org/ft0@{sha[:7]}", "org/ft1"], method="uniform",
                          output_dir=tmp_path / "out", cache_dir=tmp_path / "scores", check_weights=False)
    with pytest.warns(UserWarning, match=rf"org/ft0@{sha[:7]} is the same commit as org/ft0; it is used once"):
        soup = builder.build()
    assert [i.ref for i in soup.ingredients] == ["org/ft0", "org/ft1"]


def test_identical_references_are_dropped_with_a_warning():
    config = SoupConfig(candidates=["org/ft0", "org/ft1", "org/ft0"])
    with pytest.warns(UserWarning, match="org/ft0 is named twice; it is used once"):
        config.validate()
    assert config.candidates == ["org/ft0", "org/ft1"]


def test_identical_references_with_weights_are_an_error():
    with pytest.raises(RecipeError, match="org/ft0 is named twice"):
        SoupConfig(candidates=["org/ft0", "org/ft1", "org/ft0"], method="weighted", weights=[0.2, 0.3, 0.5]).validate()


def test_overwrite_replaces_a_non_empty_output(hub, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "soup.json").write_text("{}")  # an earlier soup's folder
    soup = SoupBuilder(candidates=["org/ft0", "org/ft1"], method="uniform", output={"dir": str(out), "overwrite": True},
                       cache_dir=tmp_path / "scores", check_weights=False).build()
    assert soup.folder == out and (out / "config.json").exists() and not (out / "old.txt").exists()


def test_normalize_is_an_explicit_choice():
    config = SoupConfig(candidates=["org/a", "org/b"], method="weighted", weights=[1, 3], normalize=True).validate()
    assert config.weights == [0.25, 0.75]


def test_same_local_folder_twice_is_used_once(tiny_models, tmp_path):
    a = str(tiny_models["ft0"])
    with pytest.warns(UserWarning, match="has the same content as"):
        soup = SoupBuilder(candidates=[a, a + "/", str(tiny_models["ft1"])], method="uniform",
                           output_dir=tmp_path / "out", check_weights=False).build()
    assert len(soup.ingredients) == 2


def _dataset_downloads(hub) -> List[str]:
    return [f"{r.repo_id}/{r.filename}" for r in hub.requests if r.repo_type == "dataset" and r.method == "GET"
            and r.filename and r.status == 200]


@pytest.mark.parametrize("bad", [
    pytest.param("org/mo del", id="malformed"),
    pytest.param("org/nope", id="not found"),
])
def test_a_bad_candidate_fails_before_the_dataset_is_downloaded(bad, hub, data, tmp_path):
    # a held-out set can be large: a candidate that cannot be resolved must fail before it is fetched
    hub.seed_dataset("org/sst2-tiny", {"validation.tsv": data["good"].read_text()})
    hub.clear_requests()
    with pytest.raises(HfSoupsError, match=bad):
        SoupBuilder(candidates=["org/ft0", bad], method="greedy", eval_dataset="org/sst2-tiny", metric=ACC,
                    output_dir=tmp_path / "out", cache_dir=tmp_path / "scores").build()
    assert _dataset_downloads(hub) == []
