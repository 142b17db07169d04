"""Hub faults, injected by `LocalHub`, met by the real `huggingface_hub` client and `hf_soups.hub.Hub`.

Each test switches one fault on (`hub.faults`), runs the real client through `Hub`, and checks from the
server's request log what happened: who retried, what was resumed, what was (not) published.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from hf_soups.candidates import Candidate
from hf_soups.errors import HubError, PushError
from hf_soups.hub import Hub, redact
from hf_soups.testing import LocalHub

REPO = "org/model"
WEIGHTS = r"/resolve/[^/]+/model\.safetensors$"


@pytest.fixture
def published(local_hub: LocalHub, tiny_models: Dict[str, Path]) -> str:
    """`org/model` holding the tiny fine-tune ``ft0``; returns its commit sha."""
    local_hub.api().create_repo(REPO)
    sha = local_hub.api().upload_folder(repo_id=REPO, folder_path=tiny_models["ft0"]).oid
    local_hub.clear_requests()
    return sha


def _hub(**kwargs) -> Hub:
    return Hub(**{"retry_wait": 0.0, **kwargs})


def _calls(hub: LocalHub, method: str, pattern: str):
    import re

    return [r for r in hub.requests if r.method == method and re.search(pattern, r.path)]


def test_http_500_on_a_download_is_retried_by_hub(local_hub: LocalHub, published: str, tiny_models) -> None:
    # The client alone gives up at once on a 5xx answer to the body GET (it retries only 408/429 there)...
    local_hub.faults.fail(WEIGHTS, method="GET")
    with pytest.raises(HfHubHTTPError):
        hf_hub_download(REPO, "model.safetensors", revision=published)
    # ...so Hub repeats the read, and the second try completes the file.
    rule = local_hub.faults.fail(WEIGHTS, method="GET", count=2)
    local_hub.clear_requests()
    path = _hub().download(REPO, "model.safetensors", published, ref=REPO)
    assert path.read_bytes() == (tiny_models["ft0"] / "model.safetensors").read_bytes()
    assert rule.hits == 2 and [r.status for r in _calls(local_hub, "GET", WEIGHTS)] == [500, 500, 200]


def test_http_500_on_the_api_is_retried_and_bounded(local_hub: LocalHub, published: str) -> None:
    rule = local_hub.faults.fail(r"^/api/models/", method="GET", count=2)
    assert Candidate(REPO).resolve(_hub()).sha == published
    assert rule.hits == 2
    # a Hub that keeps failing: max_retries + 1 tries, then a HubError naming the candidate and the status
    local_hub.faults.fail(r"^/api/models/", method="GET", count=None, message="Hub is down for maintenance")
    local_hub.clear_requests()
    with pytest.raises(HubError) as err:
        Candidate(REPO).resolve(_hub(max_retries=2))
    assert len(_calls(local_hub, "GET", r"^/api/models/")) == 3
    text = str(err.value)
    assert err.value.candidate == REPO and "500" in text and "after 2 retries" in text
    assert "Hub is down for maintenance" in text and "Retry later" in text


def test_http_429_with_retry_after(local_hub: LocalHub, published: str, caplog) -> None:
    # API call: the client does not retry it; Hub waits what Retry-After says (not its own backoff) and retries.
    rule = local_hub.faults.rate_limit(r"^/api/models/", method="GET", retry_after=1)
    with caplog.at_level(logging.WARNING, logger="hf_soups"):
        info = _hub(retry_wait=30.0).repo_info(REPO, None, ref=REPO)
    assert info.sha == published and rule.hits == 1
    assert any("429" in r.getMessage() and "retrying in 1.0s" in r.getMessage() for r in caplog.records)
    # File body: the client retries 429 itself (waiting Retry-After + 1 s); Hub does not add a retry of its own.
    caplog.clear()
    rule = local_hub.faults.rate_limit(WEIGHTS, method="GET", retry_after=0)
    local_hub.clear_requests()
    with caplog.at_level(logging.WARNING):
        _hub().download(REPO, "model.safetensors", published, ref=REPO)
    assert rule.hits == 1 and [r.status for r in _calls(local_hub, "GET", WEIGHTS)] == [429, 200]
    assert not [r for r in caplog.records if r.name.startswith("hf_soups")]


def test_connection_dropped_mid_download_resumes(local_hub: LocalHub, tmp_path: Path) -> None:
    # The client writes the body in 10 MiB chunks, so a resume is visible on a file over 10 MiB.
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB
    local_hub.create_repo("org/big")
    sha = local_hub.commit_files("org/big", {"model.safetensors": data})
    rule = local_hub.faults.drop_connection(WEIGHTS, after_bytes=11 * 2**20)
    path = _hub().download("org/big", "model.safetensors", sha, ref="org/big")
    assert path.read_bytes() == data and rule.hits == 1
    gets = _calls(local_hub, "GET", WEIGHTS)
    assert [(g.status, g.range, g.fault) for g in gets] == [(200, None, "drop"), (206, "bytes=10485760-", None)]
    assert gets[0].bytes_sent == 11 * 2**20 and gets[1].bytes_sent == len(data) - 10 * 2**20


def test_slow_responses_time_out_and_are_retried(
    local_hub: LocalHub, published: str, tiny_models, monkeypatch, caplog
) -> None:
    # API: the client sets no timeout of its own on model_info; Hub passes one, and retries on expiry.
    rule = local_hub.faults.delay(r"^/api/models/", method="GET", seconds=1.5)
    with caplog.at_level(logging.WARNING, logger="hf_soups"):
        assert _hub(timeout=0.3).repo_info(REPO, None, ref=REPO).sha == published
    assert rule.hits == 1  # (the slow request is logged by the server only once it has slept)
    assert [r.getMessage() for r in caplog.records if r.name == "hf_soups.hub"] == [
        "reading org/model failed (timed out); retrying in 0.0s [retry 1/4]"]
    # Download: a body that stalls past HF_HUB_DOWNLOAD_TIMEOUT is retried by the client itself.
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.3)
    rule = local_hub.faults.delay(WEIGHTS, method="GET", seconds=1.5)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        path = _hub().download(REPO, "model.safetensors", published, ref=REPO)
    assert path.read_bytes() == (tiny_models["ft0"] / "model.safetensors").read_bytes()
    assert rule.hits == 1
    warnings = [(r.name, r.getMessage()) for r in caplog.records]
    assert any(n == "huggingface_hub.file_download" and "Trying to resume download" in m for n, m in warnings)
    assert not [n for n, _ in warnings if n.startswith("hf_soups")]


def test_a_push_failing_mid_commit_publishes_nothing(local_hub: LocalHub, tiny_models, tmp_path: Path) -> None:
    folder = tiny_models["ft0"]
    rule = local_hub.faults.fail_commit("org/soup")
    hub = _hub(token=local_hub.token)
    with pytest.raises(PushError) as err:
        hub.push_folder(folder, "org/soup")
    assert rule.hits == 1
    message = str(err.value)
    assert f"hf-soups push {folder} org/soup" in message and "500" in message
    # the weights went up through LFS before the commit, but the branch did not move: nothing is published
    assert [r.status for r in local_hub.requests if r.method == "PUT"] == [200]
    commits = local_hub.api().list_repo_commits("org/soup")
    assert [c.title for c in commits] == ["initial commit"]
    assert local_hub.api().list_repo_files("org/soup") == [".gitattributes"]
    # the suggested retry publishes the whole folder in one commit
    url = hub.push_folder(folder, "org/soup")
    assert local_hub.head("org/soup") in url and len(local_hub.api().list_repo_commits("org/soup")) == 2
    assert "model.safetensors" in local_hub.api().list_repo_files("org/soup")


def test_a_commit_whose_answer_is_lost_is_found_published(local_hub: LocalHub, tiny_models, caplog) -> None:
    # The server commits, then hangs up before its answer is complete: the client cannot know it worked.
    rule = local_hub.faults.drop_connection(r"/commit/main$", method="POST", after_bytes=10)
    with caplog.at_level(logging.WARNING, logger="hf_soups"):
        url = _hub(token=local_hub.token).push_folder(tiny_models["ft0"], "org/soup")
    assert rule.hits == 1
    commits = local_hub.api().list_repo_commits("org/soup")
    assert len(commits) == 2 and url.endswith(f"/org/soup/commit/{commits[0].commit_id}")  # published once
    assert any("answer to the commit on org/soup was lost" in r.getMessage() for r in caplog.records)


def test_tokens_never_appear_in_errors(local_hub: LocalHub, published: str, tiny_models) -> None:
    token = local_hub.token
    # a server (or proxy) that echoes the credentials back in its error message
    local_hub.faults.fail(r"^/api/models/", count=None, status=503, message=f"upstream refused Bearer {token}")
    with pytest.raises(HubError) as err:
        _hub(token=token, max_retries=1).repo_info(REPO, None, ref=REPO)
    assert "upstream refused" in str(err.value) and token not in str(err.value)
    local_hub.faults.clear()
    local_hub.faults.fail_commit(message=f"rejected commit by {token}")
    with pytest.raises(PushError) as err:
        _hub(token=token).push_folder(tiny_models["ft0"], "org/other")
    assert "rejected commit" in str(err.value) and token not in str(err.value)
    # a token of a form the pattern does not know is still removed (Hub.redact knows its own token)
    plain = "s3cr3t-plain-token"
    assert plain not in Hub(token=plain).redact(f"denied for {plain}")
    # identifiers that merely start with hf_ survive
    text = "hf_hub_download could not read hf_soups_ingredient.json"
    assert redact(text) == text and redact(f"bad {token}.") == "bad hf_local_***."
