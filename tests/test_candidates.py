import pytest

from hf_soups.candidates import Candidate, parse_reference
from hf_soups.errors import CandidateNotFoundError, InvalidReferenceError, UnsafeWeightsError


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("org/model", ("org/model", None)),
        ("org/model@main", ("org/model", "main")),
        ("org/model@3f1c9e2", ("org/model", "3f1c9e2")),
        ("org/model@refs/pr/1", ("org/model", "refs/pr/1")),
        ("bert-base-uncased", ("bert-base-uncased", None)),
    ],
)
def test_parse_hub_references(ref, expected):
    repo, rev, path = parse_reference(ref)
    assert (repo, rev) == expected and path is None


@pytest.mark.parametrize("ref", ["org/../etc", "a/b/c", "org/model@", "org/mo del", "org/model@../main", ""])
def test_malformed_references_are_refused(ref):
    with pytest.raises(InvalidReferenceError):
        parse_reference(ref)


def test_local_folder_resolves_without_network(tiny_models):
    cand = Candidate(str(tiny_models["ft0"])).resolve()
    assert cand.is_local and len(cand.sha) == 40
    assert cand.config["model_type"] == "bert"
    assert cand.card_data["base_model"] == "org/base"
    assert "classifier.weight" in cand.tensor_specs
    assert cand.tokenizer_hash
    assert cand.fetch() == tiny_models["ft0"]


def test_missing_folder(tmp_path):
    with pytest.raises(CandidateNotFoundError, match="does not exist"):
        Candidate(str(tmp_path / "nope")).resolve()


def test_pickle_only_folder_is_refused(tmp_path):
    import torch

    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="allow_pickle=True"):
        Candidate(str(tmp_path)).resolve()
    with pytest.warns(UserWarning, match="pickle"):
        Candidate(str(tmp_path), allow_pickle=True).resolve()


def test_corrupt_safetensors_header_is_refused(tmp_path):
    from hf_soups.errors import InvalidWeightsError

    (tmp_path / "config.json").write_text("{}")
    # header claims a tensor that lies beyond the end of the file
    import json
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(InvalidWeightsError, match="not a valid safetensors file"):
        Candidate(str(tmp_path)).resolve()
