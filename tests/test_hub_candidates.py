"""Candidates and lineage through a real Hub protocol: `LocalHub` + the real `huggingface_hub` client.

What only the Hub path can show: revisions pinned to commit shas, header-only reads (Range requests) before
any weight download, and the client's errors turned into hf-soups errors that name the candidate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

from hf_soups.candidates import Candidate
from hf_soups.errors import (
    AuthenticationError,
    CandidateNotFoundError,
    HfSoupsError,
    UnsafeWeightsError,
)
from hf_soups.hub import Hub
from hf_soups.lineage import verify_lineage
from hf_soups.testing import LocalHub


def _publish(hub: LocalHub, repo_id: str, folder: Path, *, private: bool = False) -> str:
    """Create `repo_id` and upload `folder` through the real client (one commit); return its sha."""
    api = hub.api()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=f"upload {folder.name}").oid


def _safetensors_requests(hub: LocalHub):
    return [r for r in hub.requests if (r.filename or "").endswith(".safetensors")]


def _assert_header_reads_only(hub: LocalHub, sizes: Dict[str, int]) -> None:
    """Weight files were only probed (HEAD, no body) or read through the client's header Range requests.

    `get_safetensors_metadata` asks for ``bytes=0-100000`` (then ``bytes=8-{n+7}`` for a longer header), so a
    file over 100,001 bytes must have sent less than its size.
    """
    weights = _safetensors_requests(hub)
    gets = [r for r in weights if r.method == "GET"]
    assert gets and all(r.status == 206 and (r.range == "bytes=0-100000" or r.range.startswith("bytes=8-"))
                        for r in gets)
    assert all(r.bytes_sent < sizes[r.repo_id] for r in gets if sizes[r.repo_id] > 100_001)
    assert all(r.bytes_sent == 0 for r in weights if r.method == "HEAD")
    assert {r.method for r in weights} <= {"GET", "HEAD"} and hub.downloads(".safetensors") == []


def test_resolve_pins_the_sha_and_reads_headers_only(local_hub: LocalHub, tiny_models: Dict[str, Path]) -> None:
    sha = _publish(local_hub, "org/ft0", tiny_models["ft0"])
    local_hub.clear_requests()
    for ref in ("org/ft0", "org/ft0@main", f"org/ft0@{sha}", f"org/ft0@{sha[:7]}"):
        cand = Candidate(ref).resolve(Hub())
        assert cand.sha == sha and cand.pinned_ref == f"org/ft0@{sha}"
    assert cand.config["model_type"] == "bert" and cand.card_data["base_model"] == "org/base"
    assert cand.tensor_specs["classifier.weight"] == ("F32", (2, 32)) and cand.tokenizer_hash
    _assert_header_reads_only(local_hub, {"org/ft0": (tiny_models["ft0"] / "model.safetensors").stat().st_size})
    # every file read during resolve was read at the pinned sha, never at a moving branch
    assert {r.revision for r in local_hub.requests if r.filename} == {sha}


def test_a_new_commit_after_resolve_does_not_change_what_is_fetched(
    local_hub: LocalHub, tiny_models: Dict[str, Path], tmp_path: Path
) -> None:
    old_sha = _publish(local_hub, "org/run", tiny_models["ft0"])
    cand = Candidate("org/run").resolve(Hub())
    new_sha = _publish(local_hub, "org/run", tiny_models["ft1"])  # the run pushes again meanwhile
    assert new_sha != old_sha and local_hub.head("org/run") == new_sha
    folder = cand.fetch(Hub())
    assert (folder / "model.safetensors").read_bytes() == (tiny_models["ft0"] / "model.safetensors").read_bytes()
    assert {r.revision for r in local_hub.downloads(".safetensors")} == {old_sha}
    assert Candidate("org/run").resolve(Hub()).sha == new_sha  # a fresh resolve sees the new commit


def test_verify_lineage_rejects_shapes_before_any_weight_download(local_hub: LocalHub, tmp_path: Path) -> None:
    from hf_soups.testing.factories import make_base, make_finetune

    # Weight files well over the client's 100,000-byte header read, so a full download would show.
    sizes = {}
    for name, intermediate in (("org/run-a", 256), ("org/run-b", 128)):
        base = make_base(tmp_path / f"base-{intermediate}", hidden_size=64, intermediate_size=intermediate)
        folder = make_finetune(base, tmp_path / name, base_model="org/base", base_revision="a" * 40)
        sizes[name] = (folder / "model.safetensors").stat().st_size
        _publish(local_hub, name, folder)
    assert min(sizes.values()) > 200_000
    local_hub.clear_requests()
    report = verify_lineage(["org/run-a", "org/run-b"], hub=Hub())
    assert not report.ok
    assert {p.check for p in report.errors} >= {"tensors", "config"}
    tensors = next(p for p in report.errors if p.check == "tensors")
    assert "intermediate.dense.weight shape [128, 64] vs [256, 64]" in tensors.message
    assert "weight distance" not in report.checks
    assert {r.repo_id for r in _safetensors_requests(local_hub)} == set(sizes)
    _assert_header_reads_only(local_hub, sizes)


def test_compatible_hub_candidates_pass_with_weight_checks(
    local_hub: LocalHub, tiny_models: Dict[str, Path], tmp_path: Path
) -> None:
    from hf_soups.testing.factories import make_finetune

    base_sha = _publish(local_hub, "org/base", tiny_models["base"])
    for i in range(2):  # fine-tunes that declare the published base commit
        folder = make_finetune(tiny_models["base"], tmp_path / f"ft{i}", seed=i + 1, base_model="org/base",
                               base_revision=base_sha)
        _publish(local_hub, f"org/ft{i}", folder)
    report = verify_lineage(["org/ft0", "org/ft1"], base="org/base", hub=Hub())
    assert report.ok, report.summary()
    assert "weight distance" in report.checks and len(report.distances) == 2
    assert all(0 < d < 0.1 for d in report.distances.values())
    assert report.base == "org/base" and report.base_revision == base_sha
    assert {r.repo_id for r in local_hub.downloads(".safetensors")} == {"org/ft0", "org/ft1", "org/base"}


def test_each_incompatibility_is_reported_through_the_hub(local_hub: LocalHub, tiny_models: Dict[str, Path]) -> None:
    for name in ("ft0", "ft1", "badrev", "labels", "badhead", "base"):
        _publish(local_hub, f"org/{name}", tiny_models[name])
    hub = Hub()
    cases = {
        ("org/ft0", "org/badrev"): {"base revision"},
        ("org/ft0", "org/labels"): {"labels"},
        ("org/ft0", "org/base"): {"architecture"},
        ("org/ft0", "org/ft1", "org/badhead"): {"head initialisation"},
    }
    for refs, expected in cases.items():
        report = verify_lineage(list(refs), hub=hub)
        found = {p.check for p in report.errors}
        assert expected <= found, (refs, report.summary())
        for problem in report.errors:  # each problem names pinned candidates and a fix
            assert problem.fix and all("@" in c and len(c.split("@")[1]) == 40 for c in problem.candidates)
    head = next(p for p in report.errors if p.check == "head initialisation")
    assert head.candidates == [f"org/badhead@{local_hub.head('org/badhead')}"]  # the odd one out


def test_missing_repo_revision_and_file_name_the_candidate(
    local_hub: LocalHub, tiny_models: Dict[str, Path]
) -> None:
    sha = _publish(local_hub, "org/ft0", tiny_models["ft0"])
    with pytest.raises(CandidateNotFoundError, match="org/nope") as err:
        Candidate("org/nope").resolve(Hub())
    assert "org/nope" in str(err.value) and err.value.candidate == "org/nope" and err.value.hint
    with pytest.raises(CandidateNotFoundError, match="revision 'v9'") as err:
        Candidate("org/ft0@v9").resolve(Hub())
    assert err.value.candidate == "org/ft0@v9" and "list_repo_refs" in err.value.hint
    with pytest.raises(CandidateNotFoundError, match="'missing.json'") as err:
        Hub().download("org/ft0", "missing.json", sha, ref="org/ft0")
    assert err.value.candidate == "org/ft0"
    # a repo without weights at that revision: the first commit only holds .gitattributes
    first = local_hub.api().list_repo_commits("org/ft0")[-1].commit_id
    with pytest.raises(CandidateNotFoundError, match="no model weights") as err:
        Candidate(f"org/ft0@{first}").resolve(Hub())
    assert err.value.candidate == f"org/ft0@{first}"


def test_pickle_only_repo_is_refused_unless_allowed(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    _publish(local_hub, "org/pickled", folder)
    local_hub.clear_requests()
    with pytest.raises(UnsafeWeightsError, match="allow_pickle=True") as err:
        Candidate("org/pickled").resolve(Hub())
    assert err.value.candidate == "org/pickled" and "safetensors" in err.value.hint
    assert not [r for r in local_hub.requests if (r.filename or "").endswith(".bin")]  # nothing unpickled
    with pytest.warns(UserWarning, match="pickle"):
        cand = Candidate("org/pickled", allow_pickle=True).resolve(Hub())
    assert cand.pickle_files() == ["pytorch_model.bin"]


def test_private_repo_needs_a_token(local_hub: LocalHub, tiny_models: Dict[str, Path]) -> None:
    sha = _publish(local_hub, "org/secret", tiny_models["ft0"], private=True)
    with pytest.raises(AuthenticationError) as err:
        Candidate("org/secret").resolve(Hub(token=None))
    assert err.value.candidate == "org/secret" and "token" in err.value.hint
    assert isinstance(err.value, CandidateNotFoundError)  # anonymous: the Hub will not say missing or private
    assert Candidate("org/secret").resolve(Hub(token=local_hub.token)).sha == sha
    assert local_hub.token not in str(err.value)


def test_a_wrong_token_is_not_echoed(local_hub: LocalHub, tiny_models: Dict[str, Path]) -> None:
    _publish(local_hub, "org/secret", tiny_models["ft0"], private=True)
    wrong = "hf_ThisIsNotTheRightTokenAtAll0123"
    with pytest.raises(HfSoupsError) as err:
        Candidate("org/secret").resolve(Hub(token=wrong))
    assert wrong not in str(err.value) and "org/secret" in str(err.value)


def _cli() -> list:
    exe = shutil.which("hf-soups") or str(Path(sys.executable).with_name("hf-soups"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "hf_soups.cli"]


def _verify(hub: LocalHub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **hub.env(), "HF_HUB_CACHE": str(tmp_path / "cli-cache"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_TOKEN", None)
    return subprocess.run([*_cli(), "verify", *args], env=env, capture_output=True, text=True, timeout=240)


def test_verify_cli_exit_codes_and_report(local_hub: LocalHub, tiny_models: Dict[str, Path], tmp_path: Path) -> None:
    for name in ("ft0", "ft1", "wide"):
        _publish(local_hub, f"org/{name}", tiny_models[name])
    good = _verify(local_hub, tmp_path, "org/ft0", "org/ft1@main")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "2 candidates are compatible" in good.stdout and "FAIL" not in good.stdout
    assert f"org/ft1@{local_hub.head('org/ft1')}" in good.stdout  # the report names the pinned commits
    bad = _verify(local_hub, tmp_path, "org/ft0", "org/wide")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "incompatible" in bad.stdout and "tensors" in bad.stdout
    missing = _verify(local_hub, tmp_path, "org/ft0", "org/nope")
    assert missing.returncode == 2 and "org/nope" in missing.stderr
    _save_transcript(local_hub, good, bad, missing)


def _save_transcript(hub: LocalHub, *runs: subprocess.CompletedProcess) -> None:
    """Keep the real output for the closing note (only in the main checkout, where .notes/ exists)."""
    notes = Path(__file__).resolve().parents[1] / ".notes"
    if not notes.is_dir():
        return
    parts = ["# `hf-soups verify` against LocalHub (written by tests/test_hub_candidates.py)\n"]
    for run in runs:
        command = "hf-soups " + " ".join(run.args[-3:] if run.args[-3] == "verify" else run.args[1:])
        text = (run.stdout + run.stderr).replace(hub.endpoint, "$HF_ENDPOINT")
        parts.append(f"## `{command}` (exit {run.returncode})\n\n```\n{text.rstrip()}\n```\n")
    (notes / "verify_output.md").write_text("\n".join(parts))
