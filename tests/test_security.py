"""Security: unsafe weights, remote code, tokens, path tricks, corrupt safetensors headers.

All offline, against a LocalHub (the real `huggingface_hub` client over HTTP).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict

import pytest
import torch

import hf_soups
from hf_soups.builder import SoupBuilder
from hf_soups.candidates import Candidate, check_safetensors_header, parse_reference, validate_repo_id
from hf_soups.errors import HfSoupsError, InvalidReferenceError, InvalidWeightsError, UnsafeWeightsError
from hf_soups.metrics import local_metric_path
from hf_soups.recipe import SoupConfig

SST2_DEV = Path("/work/shared/data/sst2/dev.tsv")
ACC = str(local_metric_path("accuracy"))


def _files(folder: Path) -> Dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _seed(hub, repo: str, folder: Path, *, private: bool = False) -> str:
    hub.create_repo(repo, private=private)
    return hub.commit_files(repo, _files(folder))


def _dev_tsv(path: Path, n: int = 16) -> Path:
    lines = [ln for ln in SST2_DEV.read_text().splitlines() if '"' not in ln][:n]
    path.write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    return path


# -- pickle ---------------------------------------------------------------------------------------------------


@pytest.fixture
def pickle_only(tmp_path, tiny_models) -> Path:
    """A fine-tune saved as pytorch_model.bin only (pickle)."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_models["ft0"] / name).read_bytes())
    from safetensors.torch import load_file

    torch.save(load_file(str(tiny_models["ft0"] / "model.safetensors")), folder / "pytorch_model.bin")
    return folder


def test_pickle_weights_are_refused_by_default_on_the_hub(local_hub, pickle_only):
    _seed(local_hub, "org/pickled", pickle_only)
    local_hub.clear_requests()
    with pytest.raises(UnsafeWeightsError) as info:
        Candidate("org/pickled").resolve()
    text = str(info.value)
    assert "org/pickled" in text and "pytorch_model.bin" in text and "arbitrary code" in text
    assert "safetensors" in info.value.hint and "allow_pickle=True" in info.value.hint
    assert local_hub.downloads(".bin") == [], "the pickle file was downloaded before being refused"


def test_pickle_weights_are_allowed_with_allow_pickle(local_hub, pickle_only):
    _seed(local_hub, "org/pickled", pickle_only)
    with pytest.warns(UserWarning, match="pickle can run arbitrary code"):
        cand = Candidate("org/pickled", allow_pickle=True).resolve()
    folder = cand.fetch()
    assert (folder / "pytorch_model.bin").exists()


def test_pickle_is_not_fetched_when_safetensors_exist(local_hub, tiny_models, pickle_only, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for name, path in _files(tiny_models["ft0"]).items():
        (both / name).write_bytes(path.read_bytes())
    (both / "pytorch_model.bin").write_bytes((pickle_only / "pytorch_model.bin").read_bytes())
    _seed(local_hub, "org/both", both)
    folder = Candidate("org/both").resolve().fetch()
    assert (folder / "model.safetensors").exists() and not (folder / "pytorch_model.bin").exists()
    assert local_hub.downloads(".bin") == []


def test_pickle_only_build_is_refused_before_any_download(local_hub, pickle_only, tiny_models, tmp_path):
    _seed(local_hub, "org/pickled", pickle_only)
    _seed(local_hub, "org/ft1", tiny_models["ft1"])
    local_hub.clear_requests()
    proc = subprocess.run(
        [sys.executable, "-m", "hf_soups.cli", "build", "--candidates", "org/ft1", "org/pickled",
         "--output", str(tmp_path / "out")],
        env={**os.environ, **local_hub.env(), "HF_HOME": str(tmp_path / "home")},
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "only pickle weights (pytorch_model.bin)" in proc.stderr and "--allow-pickle" in proc.stderr
    assert [r for r in local_hub.downloads() if (r.filename or "").endswith((".bin", ".safetensors"))] == []
    assert not (tmp_path / "out").exists()


# -- trust_remote_code ----------------------------------------------------------------------------------------


def _package_files():
    root = Path(hf_soups.__file__).parent
    return [p for p in root.rglob("*.py") if "testing/metrics" not in p.as_posix()]


def test_no_code_in_the_package_sets_trust_remote_code():
    offenders = []
    for path in _package_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                offenders.append(f"{path}:{node.value.lineno}")
            if isinstance(node, ast.Constant) and node.value == "trust_remote_code":
                offenders.append(f"{path}:{node.lineno} (string key)")
    assert offenders == [], f"trust_remote_code is passed at: {offenders}"
    assert len(_package_files()) > 10  # the walk saw the package


@pytest.fixture
def remote_code_models(local_hub, tiny_models, tmp_path):
    """Two fine-tunes whose config points AutoConfig/AutoModel at a module that leaves a marker on import."""
    marker = tmp_path / "REMOTE_CODE_RAN"
    evil = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    for key in ("ft0", "ft1"):
        folder = tmp_path / f"evil-{key}"
        folder.mkdir()
        for name, path in _files(tiny_models[key]).items():
            (folder / name).write_bytes(path.read_bytes())
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoConfig": "evil.EvilConfig",
                              "AutoModelForSequenceClassification": "evil.EvilModel"}
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "evil.py").write_text(evil)
        _seed(local_hub, f"org/evil-{key}", folder)
    return marker


def test_a_build_never_runs_code_shipped_with_a_candidate(remote_code_models, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soup = SoupBuilder(candidates=["org/evil-ft0", "org/evil-ft1"], method="greedy",
                           eval_dataset=str(_dev_tsv(tmp_path / "dev.tsv")), metric=ACC, max_samples=8,
                           output_dir=tmp_path / "out", cache_dir=tmp_path / "scores").build()
    assert soup.score is not None
    assert not remote_code_models.exists(), "code shipped with a candidate was imported"


# -- tokens ---------------------------------------------------------------------------------------------------


def _grep_tree(root: Path, secret: str) -> list:
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and secret.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


def test_token_is_never_printed_logged_or_written(local_hub, tiny_models, tmp_path, caplog, capfd):
    token = local_hub.token
    # private ingredients: the token is needed to read them, so it travels with every request
    for key in ("ft0", "ft1", "ft2"):
        _seed(local_hub, f"org/{key}", tiny_models[key], private=True)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "work" / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        soup = SoupBuilder(candidates=["org/ft0", "org/ft1", "org/ft2"], method="greedy",
                           eval_dataset=str(_dev_tsv(tmp_path / "dev.tsv")), metric=ACC, max_samples=8,
                           output_dir=out, token=token, push_to="org/soup", private=True,
                           cache_dir=tmp_path / "work" / "scores").build()
        print(soup.summary_table())
        print(soup.provenance())
        print(repr(soup), repr(soup.config))
    # a failed push: the error message carries no token either
    local_hub.faults.fail_commit("org/soup-fail")
    with pytest.raises(HfSoupsError) as failed:
        soup.push_to_hub("org/soup-fail", token=token)
    # a bad token: its error names no token
    with pytest.raises(HfSoupsError) as refused:
        Candidate("org/ft0").resolve(hf_soups.hub.Hub(token=token + "x"))

    from huggingface_hub import snapshot_download

    pushed = Path(snapshot_download("org/soup", token=token, local_dir=str(tmp_path / "work" / "pushed")))
    assert (pushed / "soup.json").exists() and (pushed / "README.md").exists()
    captured = capfd.readouterr()
    outputs = {
        "stdout": captured.out, "stderr": captured.err, "logs": caplog.text,
        "warnings": "\n".join(str(w.message) for w in caught),
        "push error": str(failed.value), "bad-token error": str(refused.value),
    }
    assert "org/soup-fail" in outputs["push error"]
    for name, text in outputs.items():
        assert token not in text, f"the token appears in {name}"
    assert _grep_tree(tmp_path / "work", token) == []
    assert len(list(out.iterdir())) >= 5 and len(list(pushed.iterdir())) >= 5


def test_cli_never_prints_the_token(local_hub, tiny_models, tmp_path):
    token = local_hub.token
    for key in ("ft0", "ft1"):
        _seed(local_hub, f"org/{key}", tiny_models[key], private=True)
    env = {**os.environ, **local_hub.env(), "HF_HOME": str(tmp_path / "home")}
    run = [sys.executable, "-m", "hf_soups.cli"]
    ok = subprocess.run(run + ["build", "--candidates", "org/ft0", "org/ft1", "--output", str(tmp_path / "out"),
                               "--push-to", "org/cli-soup", "--token", token],
                        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(run + ["verify", "org/ft0", "org/ft1", "--token", token + "x"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    for proc in (ok, bad):
        assert token not in proc.stdout and token not in proc.stderr
    assert _grep_tree(tmp_path / "out", token) == [] and _grep_tree(tmp_path / "home", token) == []


# -- path tricks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["org/../x", "org/..", "org/x/../../etc", "org\\..\\x", "org/x@../main", "org/x@main/../../y", "org//x",
     "~org/x", "org/x\x00", "org/%2e%2e"],
)
def test_repo_ids_with_path_tricks_are_rejected(ref):
    with pytest.raises(InvalidReferenceError, match="is not a valid"):
        parse_reference(ref)


@pytest.mark.parametrize("repo_id", ["org/../x", "/abs/path", "../x", "org/x/y", "~/x", "C:\\x"])
def test_push_targets_with_path_tricks_are_rejected(repo_id):
    with pytest.raises(InvalidReferenceError, match="push_to"):
        SoupConfig(candidates=["org/a", "org/b"], push_to=repo_id).validate()
    with pytest.raises(InvalidReferenceError):
        validate_repo_id(repo_id)


def test_path_like_references_are_folders_not_repos(tmp_path):
    # "../x" and absolute paths are local folders, never Hub repo ids: no request, a clear not-found
    for ref in ("../no-such-folder", "..\\x/y", str(tmp_path / "no-such-folder")):
        repo, rev, path = parse_reference(ref)
        assert repo is None and rev is None and path is not None
        with pytest.raises(HfSoupsError, match="does not exist"):
            Candidate(ref).resolve()


def test_cli_push_rejects_a_path_trick(local_hub, tiny_models, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hf_soups.cli", "push", str(tiny_models["ft0"]), "org/../x"],
        env={**os.environ, **local_hub.env(include_token=True), "HF_HOME": str(tmp_path / "home")},
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "org/../x" in proc.stderr
    assert not [r for r in local_hub.requests if r.method in ("POST", "PUT")]


def test_push_to_hub_rejects_a_path_trick(local_hub, tiny_models, tmp_path):
    soup = SoupBuilder(candidates=[str(tiny_models["ft0"]), str(tiny_models["ft1"])], method="uniform",
                       output_dir=tmp_path / "out", check_weights=False).build()
    local_hub.clear_requests()
    with pytest.raises(InvalidReferenceError, match="org/../x"):
        soup.push_to_hub("org/../x", token=local_hub.token)
    assert not [r for r in local_hub.requests if r.method in ("POST", "PUT")]
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_shard_index_naming_a_file_outside_the_folder_is_refused(tiny_models, tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    for name, path in _files(tiny_models["ft0"]).items():
        (folder / name).write_bytes(path.read_bytes())
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        names = list(fh.keys())
    index = {"metadata": {}, "weight_map": {n: "model.safetensors" for n in names}}
    index["weight_map"][names[0]] = "../../secret.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HfSoupsError, match=r"names \.\./\.\./secret\.safetensors, which is not in"):
        Candidate(str(folder)).resolve()


# -- safetensors headers --------------------------------------------------------------------------------------


def _write(path: Path, header: dict, data: bytes, *, declared_len: int = None) -> Path:
    raw = json.dumps(header).encode()
    n = len(raw) if declared_len is None else declared_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}


@pytest.mark.parametrize(
    "header, data, declared_len, message",
    [
        (GOOD, b"\0" * 16, 10**9, "the header length (1000000000 bytes) is larger than the rest of the file"),
        ({"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 8, None,
         "tensor 'a' ends at byte 4000 of the data, beyond its end (8 bytes)"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 16, None,
         "tensors 'a' (bytes 0-8) and 'b' (bytes 4-12) overlap"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
         "tensor 'a' declares 8 bytes but a F32 tensor of shape [3] needs 12"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None,
         "data_offsets [8, 0] that do not make a range"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "invalid shape [-2]"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8, None, "do not make a range"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "invalid data_offsets None"),
        ([1, 2], b"", None, "the header is not a JSON object"),
    ],
    ids=["header-longer-than-file", "offset-beyond-end", "overlap", "size-mismatch", "reversed-offsets",
         "negative-shape", "negative-offset", "no-offsets", "not-an-object"],
)
def test_corrupt_headers_are_refused_before_reading(tmp_path, header, data, declared_len, message):
    path = _write(tmp_path / "model.safetensors", header, data, declared_len=declared_len)
    with pytest.raises(InvalidWeightsError) as info:
        check_safetensors_header(path, ref="org/run-a")
    text = str(info.value)
    assert message in text and "org/run-a" in text and "model.safetensors" in text
    assert "Re-save" in info.value.hint


def test_header_that_is_not_json_and_tiny_files(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
    with pytest.raises(InvalidWeightsError, match="not valid JSON"):
        check_safetensors_header(path, ref="r")
    path.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidWeightsError, match="too few for the 8-byte header length"):
        check_safetensors_header(path, ref="r")


def test_a_valid_file_passes_with_its_specs(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16), "i": torch.zeros(4, dtype=torch.int64)},
              str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    specs = check_safetensors_header(tmp_path / "model.safetensors", ref="r")
    assert specs == {"w": ("F32", (3, 2)), "b": ("BF16", (2,)), "i": ("I64", (4,))}


def _corrupt_copy(src: Path, dst: Path) -> Path:
    """A copy of a model folder whose safetensors header points a tensor past the end of the file."""
    dst.mkdir()
    for name, path in _files(src).items():
        (dst / name).write_bytes(path.read_bytes())
    raw = (dst / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    key = sorted(k for k in header if k != "__metadata__")[-1]
    begin, end = header[key]["data_offsets"]
    header[key]["data_offsets"] = [begin, end + 10**6]
    new = json.dumps(header).encode()
    (dst / "model.safetensors").write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    return dst


def test_corrupt_local_candidate_names_candidate_and_file(tiny_models, tmp_path):
    bad = _corrupt_copy(tiny_models["ft1"], tmp_path / "corrupt")
    with pytest.raises(InvalidWeightsError) as info:
        SoupBuilder(candidates=[str(tiny_models["ft0"]), str(bad)], method="uniform",
                    output_dir=tmp_path / "out").build()
    text = str(info.value)
    assert str(bad) in text and "model.safetensors is not a valid safetensors file" in text
    assert "beyond its end" in text
    assert not (tmp_path / "out").exists()


def test_corrupt_hub_candidate_is_refused_before_any_tensor_is_read(local_hub, tiny_models, tmp_path):
    _seed(local_hub, "org/ft0", tiny_models["ft0"])
    _seed(local_hub, "org/corrupt", _corrupt_copy(tiny_models["ft1"], tmp_path / "corrupt"))
    with pytest.raises(InvalidWeightsError) as info:
        SoupBuilder(candidates=["org/ft0", "org/corrupt"], method="uniform", output_dir=tmp_path / "out").build()
    text = str(info.value)
    assert "org/corrupt" in text and "model.safetensors is not a valid safetensors file" in text
    assert not (tmp_path / "out").exists()


def test_callback_state_saved_in_checkpoints_never_holds_the_token():
    from hf_soups.callback import SoupCallback

    token = "hf_" + "s3cretToken" * 3
    cb = SoupCallback(["org/a", "org/b"], push_to="org/soup", token=token, metric="accuracy")
    state = json.dumps(cb.state())  # what the Trainer writes into trainer_state.json of every checkpoint
    assert token not in state and "org/soup" in state
    assert token not in repr(cb)


class _LayoutHub(hf_soups.hub.Hub):
    """A Hub connection that offers `safetensors_layout` (what .notes/requests.md asks hub.py for), built on
    `HfApi.get_safetensors_metadata` (header-only Range reads)."""

    def safetensors_layout(self, repo_id, sha, *, ref):
        meta = self.api.get_safetensors_metadata(repo_id, revision=sha)
        return {fname: {name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.data_offsets)}
                        for name, t in fmeta.tensors.items()}
                for fname, fmeta in meta.files_metadata.items()}


def _weight_gets(hub) -> list:
    return [r for r in hub.requests if r.method == "GET" and r.status == 200 and (r.filename or "").endswith(".safetensors")]


def test_hub_headers_are_checked_against_file_sizes_before_download(local_hub, tiny_models, tmp_path):
    _seed(local_hub, "org/ft0", tiny_models["ft0"])
    _seed(local_hub, "org/corrupt", _corrupt_copy(tiny_models["ft1"], tmp_path / "corrupt"))
    local_hub.clear_requests()
    assert Candidate("org/ft0").resolve(_LayoutHub()).tensor_specs  # a valid file passes (no false alarm)
    with pytest.raises(InvalidWeightsError, match="beyond the end of the file") as info:
        Candidate("org/corrupt").resolve(_LayoutHub())
    assert "org/corrupt" in str(info.value) and "model.safetensors" in str(info.value)
    assert _weight_gets(local_hub) == [], "the corrupt file was downloaded before being refused"


def test_default_hub_refuses_a_corrupt_header_before_download(local_hub, tiny_models, tmp_path):
    _seed(local_hub, "org/corrupt", _corrupt_copy(tiny_models["ft1"], tmp_path / "corrupt"))
    local_hub.clear_requests()
    with pytest.raises(InvalidWeightsError):
        Candidate("org/corrupt").resolve()
    assert _weight_gets(local_hub) == []


def test_overwrite_never_replaces_a_folder_that_is_not_a_soup(tiny_models, tmp_path):
    # a recipe is data (it may come from the Hub, as a soup.json): `output: {dir: ~/.config, overwrite: true}`
    # must not be able to wipe a user's folder
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml_dump({"candidates": [str(tiny_models["ft0"]), str(tiny_models["ft1"])],
                                 "check_weights": False, "output": {"dir": str(victim), "overwrite": True}}))
    with pytest.raises(HfSoupsError, match="not an hf-soups output"):
        SoupBuilder.from_recipe(recipe).build()
    assert (victim / "notes.txt").read_text() == "precious"


def test_overwrite_replaces_a_previous_soup(tiny_models, tmp_path):
    out = tmp_path / "out"
    args = dict(candidates=[str(tiny_models["ft0"]), str(tiny_models["ft1"])], check_weights=False)
    first = SoupBuilder(**args, output_dir=out).build()
    second = SoupBuilder(**args, output={"dir": str(out), "overwrite": True}).build()
    assert second.folder == out and (out / "soup.json").exists() and first.tensor_hash == second.tensor_hash


def yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(data)
