"""LocalHub against the real `huggingface_hub` client (and transformers / evaluate / datasets), over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    ModelCardData,
    get_safetensors_metadata,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

from hf_soups.testing import LocalHub
from hf_soups.testing.factories import make_base
from hf_soups.testing.pytest_plugin import local_hub  # noqa: F401 - the fixture under test

REPO = "org/tiny"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT folder (config, safetensors weights, tokenizer), written once per module."""
    return make_base(tmp_path_factory.mktemp("tiny") / "base")


def _pushed(hub: LocalHub, files: dict, repo_id: str = REPO, message: str = "v1") -> str:
    """Create `repo_id` if needed and commit `files` through the real client; return the commit sha."""
    api = hub.api()
    api.create_repo(repo_id, exist_ok=True)
    ops = [CommitOperationAdd(path, data) for path, data in files.items()]
    return api.create_commit(repo_id, operations=ops, commit_message=message).oid


def test_create_repo_conflict_and_exist_ok(local_hub: LocalHub) -> None:
    api = local_hub.api()
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.startswith(local_hub.endpoint)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.repo_exists(REPO) and not api.repo_exists("org/nope")
    api.create_repo("org/data", repo_type="dataset")
    api.create_repo("org/space", repo_type="space", space_sdk="gradio")
    assert api.dataset_info("org/data").id == "org/data"
    assert api.space_info("org/space").sdk == "gradio"


def test_upload_folder_is_one_lfs_aware_commit(local_hub: LocalHub, tiny_model: Path) -> None:
    api = local_hub.api()
    api.create_repo(REPO)
    info = api.upload_folder(repo_id=REPO, folder_path=tiny_model)
    commits = api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits][0] == info.oid and len(commits) == 2  # initial commit + the upload
    assert [r.method for r in local_hub.requests if r.path.endswith("/commit/main")] == ["POST"]
    uploads = [r for r in local_hub.requests if r.method == "PUT"]
    assert len(uploads) == 1 and uploads[0].status == 200  # only the weights went through LFS
    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True).siblings}
    assert set(siblings) == {".gitattributes"} | {p.name for p in tiny_model.iterdir()}
    assert siblings["model.safetensors"].lfs is not None and siblings["config.json"].lfs is None
    assert siblings["model.safetensors"].size == (tiny_model / "model.safetensors").stat().st_size


def test_create_commit_with_many_files_is_one_commit(local_hub: LocalHub) -> None:
    api = local_hub.api()
    _pushed(local_hub, {"old.txt": b"x"})
    local_hub.clear_requests()
    ops = [CommitOperationAdd(f"shards/part-{i:02d}.bin", bytes([i]) * 100) for i in range(12)]
    ops += [CommitOperationAdd(f"notes/{i}.txt", f"note {i}".encode()) for i in range(12)]
    ops.append(CommitOperationDelete("old.txt"))
    api.create_commit(REPO, operations=ops, commit_message="many files")
    assert len([r for r in local_hub.requests if "/commit/" in r.path]) == 1
    files = api.list_repo_files(REPO)
    assert "old.txt" not in files and len([f for f in files if f.startswith(("shards/", "notes/"))]) == 24
    tree = {f.path for f in api.list_repo_tree(REPO)}
    assert {"shards", "notes", ".gitattributes"} == tree  # non-recursive listing shows folders


def test_model_info_at_branch_sha_and_short_sha(local_hub: LocalHub) -> None:
    card = ModelCard.from_template(ModelCardData(license="mit", library_name="transformers", tags=["soup"]))
    sha1 = _pushed(local_hub, {"README.md": str(card).encode(), "config.json": b'{"model_type": "bert"}'})
    sha2 = _pushed(local_hub, {"extra.txt": b"more"}, message="v2")
    api = HfApi()  # anonymous, default endpoint: the patched constants point at the hub
    head = api.model_info(REPO)
    assert head.sha == sha2 and "extra.txt" in {s.rfilename for s in head.siblings}
    old = api.model_info(REPO, revision=sha1)
    assert old.sha == sha1 and "extra.txt" not in {s.rfilename for s in old.siblings}
    assert old.card_data.license == "mit" and {"soup", "transformers", "license:mit"} <= set(old.tags)
    assert old.private is False and old.last_modified is not None and old.config == {"model_type": "bert"}
    assert api.model_info(REPO, revision=sha1[:8]).sha == sha1  # unique sha prefixes resolve to the full sha


def test_download_at_old_sha_after_new_commit(local_hub: LocalHub, tmp_path: Path) -> None:
    sha1 = _pushed(local_hub, {"weights.bin": b"old" * 10, "config.json": b'{"v": 1}'})
    _pushed(local_hub, {"weights.bin": b"new" * 10, "config.json": b'{"v": 2}'}, message="v2")
    assert Path(hf_hub_download(REPO, "weights.bin", revision=sha1)).read_bytes() == b"old" * 10
    assert Path(hf_hub_download(REPO, "weights.bin", revision=sha1[:7])).read_bytes() == b"old" * 10
    assert Path(snapshot_download(REPO, revision=sha1[:7])).name == sha1  # the cache keys snapshots by full sha
    assert Path(hf_hub_download(REPO, "weights.bin")).read_bytes() == b"new" * 10
    old = Path(snapshot_download(REPO, revision=sha1, local_dir=tmp_path / "old"))
    assert json.loads((old / "config.json").read_text()) == {"v": 1}
    assert json.loads((Path(snapshot_download(REPO)) / "config.json").read_text()) == {"v": 2}


def test_cache_serves_second_download_without_body_get(local_hub: LocalHub) -> None:
    sha = _pushed(local_hub, {"model.safetensors": b"\0weights" * 1000})
    local_hub.clear_requests()
    first = hf_hub_download(REPO, "model.safetensors")
    assert len(local_hub.downloads(".safetensors")) == 1
    assert hf_hub_download(REPO, "model.safetensors") == first
    assert len(local_hub.downloads(".safetensors")) == 1  # the second call only made a HEAD
    # (the client may also fetch /api/agent-harnesses once per process: only requests for the repo count)
    assert [r.method for r in local_hub.requests if r.repo_id == REPO] == ["HEAD", "GET", "HEAD"]
    local_hub.clear_requests()
    hf_hub_download(REPO, "model.safetensors", revision=sha)  # a pinned sha already cached: no request at all
    assert [r for r in local_hub.requests if r.repo_id == REPO] == []


def test_safetensors_metadata_reads_only_the_header(local_hub: LocalHub, tmp_path: Path) -> None:
    save_file({"w": torch.zeros(300, 300), "b": torch.ones(300)}, tmp_path / "model.safetensors")
    size = (tmp_path / "model.safetensors").stat().st_size
    local_hub.api().create_repo(REPO)
    local_hub.api().upload_file(path_or_fileobj=tmp_path / "model.safetensors", path_in_repo="model.safetensors",
                                repo_id=REPO)
    local_hub.clear_requests()
    meta = get_safetensors_metadata(REPO)
    assert meta.files_metadata["model.safetensors"].parameter_count == {"F32": 90300}
    assert local_hub.downloads(".safetensors") == []
    ranged = [r for r in local_hub.requests if r.method == "GET"]
    assert ranged and all(r.status == 206 and r.range and r.bytes_sent < size for r in ranged)


def test_safetensors_metadata_of_shards_with_a_long_header(local_hub: LocalHub, tmp_path: Path) -> None:
    # A header over 100,000 bytes makes the client read it in a second Range request (bytes=8-{n+7}).
    big = {f"encoder.layer.{i}.a_deliberately_long_tensor_name_to_grow_the_header": torch.zeros(2)
           for i in range(2500)}
    save_file(big, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"head.weight": torch.zeros(4, 4)}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in big},
                  "head.weight": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    header_len = int.from_bytes((tmp_path / "model-00001-of-00002.safetensors").read_bytes()[:8], "little")
    assert header_len > 100_000
    local_hub.api().create_repo(REPO)
    local_hub.api().upload_folder(repo_id=REPO, folder_path=tmp_path)
    local_hub.clear_requests()
    meta = get_safetensors_metadata(REPO)
    assert meta.sharded and len(meta.files_metadata) == 2 and meta.parameter_count == {"F32": 2500 * 2 + 16}
    assert local_hub.downloads(".safetensors") == []  # only the index is fetched whole
    first_shard = [r.range for r in local_hub.requests if r.filename == "model-00001-of-00002.safetensors"]
    assert first_shard == ["bytes=0-100000", f"bytes=8-{header_len + 7}"]


def test_model_card_push_and_load(local_hub: LocalHub) -> None:
    local_hub.api().create_repo(REPO)
    data = ModelCardData(base_model=["org/a", "org/b"], base_model_relation="merge", tags=["model-soup"])
    ModelCard.from_template(data, model_description="A soup.").push_to_hub(REPO, token=local_hub.token)
    card = ModelCard.load(REPO)
    assert card.data.base_model == ["org/a", "org/b"] and "model-soup" in card.data.tags
    assert HfApi().model_info(REPO).card_data.base_model_relation == "merge"
    # The client re-serialises the YAML itself, so what the server can reject is metadata the Hub refuses.
    bad = ModelCardData(base_model="org/a", base_model_relation="soup")
    with pytest.raises(ValueError, match="base_model_relation"):
        ModelCard.from_template(bad).push_to_hub(REPO, token=local_hub.token)
    assert HfApi().model_info(REPO).card_data.base_model_relation == "merge"  # nothing was committed


def test_refs_branches_tags_and_pull_requests(local_hub: LocalHub) -> None:
    api = local_hub.api()
    sha = _pushed(local_hub, {"a.txt": b"a"})
    api.create_branch(REPO, branch="dev")
    api.create_tag(REPO, tag="v1", revision=sha)
    pr = api.create_commit(REPO, operations=[CommitOperationAdd("a.txt", b"pr")], commit_message="pr",
                           create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": sha, "dev": sha}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", sha)]
    assert [p.ref for p in refs.pull_requests] == ["refs/pr/1"]
    assert Path(hf_hub_download(REPO, "a.txt", revision="refs/pr/1")).read_bytes() == b"pr"
    assert any("%2F" in r.path or r.revision == "refs/pr/1" for r in local_hub.requests)
    assert Path(hf_hub_download(REPO, "a.txt", revision="v1")).read_bytes() == b"a"


def test_missing_repo_revision_and_file_raise_client_errors(local_hub: LocalHub) -> None:
    _pushed(local_hub, {"a.txt": b"a"})
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "a.txt")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "a.txt", revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "b.txt")
    assert not api.file_exists(REPO, "b.txt") and api.file_exists(REPO, "a.txt")


def test_private_repo_is_invisible_without_token(local_hub: LocalHub) -> None:
    api = local_hub.api()
    api.create_repo("org/secret", private=True)
    api.upload_file(path_or_fileobj=b"s", path_in_repo="s.txt", repo_id="org/secret")
    anonymous = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("org/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/secret", "s.txt", token=False)
    assert not anonymous.repo_exists("org/secret")
    assert api.model_info("org/secret").private is True
    assert Path(hf_hub_download("org/secret", "s.txt", token=local_hub.token)).read_bytes() == b"s"


def test_gated_repo_needs_token_for_files(local_hub: LocalHub) -> None:
    local_hub.create_repo("org/gated", gated="auto")
    local_hub.commit_files("org/gated", {"a.txt": b"a"})
    assert HfApi(token=False).model_info("org/gated").gated == "auto"
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "a.txt", token=False)
    assert Path(hf_hub_download("org/gated", "a.txt", token=local_hub.token)).read_bytes() == b"a"


def test_writes_are_refused_without_the_token(local_hub: LocalHub) -> None:
    local_hub.create_repo(REPO)
    for token in (False, "hf_wrong"):
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(token=token).create_repo("org/other")
        assert err.value.response.status_code == 401
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(token=token).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
        assert err.value.response.status_code == 401
    assert local_hub.api().whoami()["name"] == local_hub.user
    with pytest.raises(HfHubHTTPError):
        HfApi(token="hf_wrong").whoami()


def test_stale_parent_commit_is_refused(local_hub: LocalHub) -> None:
    sha1 = _pushed(local_hub, {"a.txt": b"a"})
    _pushed(local_hub, {"a.txt": b"b"}, message="v2")
    with pytest.raises(HfHubHTTPError) as err:
        local_hub.api().create_commit(REPO, operations=[CommitOperationAdd("a.txt", b"c")],
                                      commit_message="stale", parent_commit=sha1)
    assert err.value.response.status_code == 412


def test_automodel_from_pretrained_at_sha(local_hub: LocalHub, tiny_model: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    api = local_hub.api()
    api.create_repo(REPO)
    sha = api.upload_folder(repo_id=REPO, folder_path=tiny_model).oid
    api.upload_file(path_or_fileobj=b"later", path_in_repo="later.txt", repo_id=REPO)
    model = AutoModel.from_pretrained(REPO, revision=sha)
    assert model.config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(REPO, revision=sha)("abc")["input_ids"][0] == 2  # [CLS]
    assert {r.revision for r in local_hub.requests if r.filename} <= {sha, "main"}


def test_evaluate_load_accuracy_through_the_hub(local_hub: LocalHub, tmp_path: Path) -> None:
    import evaluate

    metrics_dir = Path(__file__).resolve().parents[1] / "hf_soups" / "testing" / "metrics"
    if not (metrics_dir / "accuracy" / "accuracy.py").is_file():  # written by another module's author
        metrics_dir = tmp_path / "metrics"
        (metrics_dir / "accuracy").mkdir(parents=True)
        (metrics_dir / "accuracy" / "accuracy.py").write_text(_MINIMAL_ACCURACY)
    local_hub.seed_metrics(["accuracy"], source_dir=metrics_dir)
    accuracy = evaluate.load("accuracy", cache_dir=str(tmp_path / "evaluate"))
    assert accuracy.compute(references=[0, 1, 1, 0], predictions=[0, 1, 0, 0]) == {"accuracy": 0.75}
    fetched = [r for r in local_hub.requests if r.repo_id == "evaluate-metric/accuracy"]
    assert fetched and all(r.repo_type == "space" and r.status == 200 for r in fetched)
    assert {r.revision for r in fetched} == {f"v{evaluate.__version__}"}


def test_load_dataset_through_the_hub(local_hub: LocalHub, tmp_path: Path) -> None:
    import datasets

    local_hub.seed_dataset("org/sst", {"train.csv": "sentence,label\ngood,1\nbad,0\n",
                                       "validation.csv": "sentence,label\nfine,1\n"})
    loaded = datasets.load_dataset("org/sst", cache_dir=str(tmp_path / "datasets"))
    assert loaded["train"]["label"] == [1, 0] and loaded["validation"]["sentence"] == ["fine"]


def test_patch_client_is_restored_and_env_points_subprocesses(tmp_path: Path) -> None:
    before = (hf_constants.ENDPOINT, hf_constants.HF_HUB_DISABLE_XET, os.environ.get("HF_ENDPOINT"))
    with LocalHub(root=tmp_path / "hub") as hub:
        assert hf_constants.ENDPOINT == hub.endpoint and hf_constants.HF_HUB_DISABLE_XET is True
        assert "HF_TOKEN" not in hub.env() and hub.env(include_token=True)["HF_TOKEN"] == hub.token
        hub.create_repo(REPO)
        hub.commit_files(REPO, {"a.txt": "from subprocess"})
        script = "from huggingface_hub import hf_hub_download as d; print(open(d('org/tiny', 'a.txt')).read())"
        env = {**os.environ, **hub.env(), "HF_HUB_CACHE": str(tmp_path / "cache")}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "from subprocess", out.stderr
    assert (hf_constants.ENDPOINT, hf_constants.HF_HUB_DISABLE_XET, os.environ.get("HF_ENDPOINT")) == before
    assert not (tmp_path / "hub").exists() or (tmp_path / "hub").is_dir()  # a given root is kept


def test_command_line_serves_until_interrupted(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that is free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hf_soups.testing", "--root", str(tmp_path / "hub"),
                             "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        endpoint, token = lines[0].split()[3], lines[1].split()[-1]
        assert endpoint == f"http://127.0.0.1:{port}" and token.startswith("hf_local_")
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo("org/cli")
        assert api.model_info("org/cli").id == "org/cli"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    again = LocalHub(root=tmp_path / "hub", patch=False)
    assert again.head("org/cli")  # repos persist in --root


_MINIMAL_ACCURACY = '''
import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="accuracy", citation="", inputs_description="",
            features=datasets.Features({"predictions": datasets.Value("int32"),
                                        "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references)}
'''
