"""Tests of hf_soups.mixing and hf_soups.writer: exact averages, sharding, dtypes, checks, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hf_soups import mixing, writer
from hf_soups.errors import InvalidWeightsError, MixingError, NonFiniteError, OutputExistsError
from hf_soups.mixing import (
    RunningSum,
    TensorSpec,
    interpolate,
    match_names,
    mix,
    read_tensor_specs,
    tensor_hash,
    write_state_dict,
)
from hf_soups.testing.factories import make_base, make_finetune


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    base = make_base(root / "base")
    out = {"base": base}
    for i in range(3):
        out[f"ft{i}"] = make_finetune(base, root / f"ft{i}", seed=i + 1, noise=0.05)
    for dt, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        for i in range(2):
            out[f"{name}_{i}"] = make_finetune(base, root / f"{name}_{i}", seed=10 + i, noise=0.05, dtype=dt)
    return out


def _sd(folder: Path) -> Dict[str, torch.Tensor]:
    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return load_file(folder / "model.safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out: Dict[str, torch.Tensor] = {}
    for fname in sorted(set(index["weight_map"].values())):
        out.update(load_file(folder / fname))
    return out


def _write(folder: Path, sd: Dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _reference(folders: List[Path], weights: List[float], acc=torch.float32) -> Dict[str, torch.Tensor]:
    sds = [_sd(f) for f in folders]
    out = {}
    for k, t in sds[0].items():
        if not t.is_floating_point():
            out[k] = t
            continue
        total = sum(w * s[k].to(acc) for w, s in zip(weights, sds))
        out[k] = total.to(t.dtype)
    return out


def _leftovers(parent: Path) -> List[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ------------------------------------------------------------------------------------------ averages


@pytest.mark.parametrize("weights", [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.3, 0.2]])
def test_mix_matches_torch_fp32(models, tmp_path, weights):
    folders = [models[f"ft{i}"] for i in range(3)]
    res = mix(folders, weights, tmp_path / "soup", progress=False)
    out, ref = _sd(tmp_path / "soup"), _reference(folders, weights)
    assert set(out) == set(ref) and res.num_tensors == len(ref)
    for k in ref:
        assert out[k].dtype == ref[k].dtype
        torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-7)
    assert res.num_bytes == sum(t.numel() * t.element_size() for t in out.values())
    assert res.files == ["model.safetensors"] and res.warnings == []


def test_mix_fp64_accumulation(models, tmp_path):
    folders = [models[f"ft{i}"] for i in range(3)]
    weights = [0.1, 0.7, 0.2]
    mix(folders, weights, tmp_path / "a", accumulate_dtype=torch.float64, progress=False)
    out, ref = _sd(tmp_path / "a"), _reference(folders, weights, acc=torch.float64)
    for k in ref:  # one rounding to float32 of a float64 sum: at most one ulp from the reference's rounding
        torch.testing.assert_close(out[k], ref[k], rtol=2**-23, atol=0)
    mix(folders, weights, tmp_path / "b", accumulate_dtype=torch.float64, out_dtype=torch.float64, progress=False)
    out64 = _sd(tmp_path / "b")
    sds = [_sd(f) for f in folders]
    for k, t in out64.items():
        assert t.dtype == torch.float64
        torch.testing.assert_close(t, sum(w * s[k].double() for w, s in zip(weights, sds)), rtol=1e-15, atol=1e-17)


def test_single_ingredient_and_zero_weight_are_exact_copies(models, tmp_path):
    mix([models["ft0"], models["ft1"]], [1.0, 0.0], tmp_path / "s", progress=False)
    assert tensor_hash(tmp_path / "s") == tensor_hash(models["ft0"])


@pytest.mark.parametrize("kind,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_inputs_cast_back(models, tmp_path, kind, dtype):
    folders = [models[f"{kind}_0"], models[f"{kind}_1"]]
    mix(folders, [0.5, 0.5], tmp_path / "soup", progress=False)
    out, ref = _sd(tmp_path / "soup"), _reference(folders, [0.5, 0.5])
    assert read_tensor_specs(tmp_path / "soup")["classifier.weight"].dtype == {"bf16": "BF16", "fp16": "F16"}[kind]
    for k in ref:
        assert out[k].dtype == dtype
        assert torch.equal(out[k], ref[k]), k  # (a + b) / 2 in fp32 of half values is exact, then one rounding


def test_out_dtype_and_config_update(models, tmp_path):
    res = mix([models["ft0"], models["ft1"]], [0.5, 0.5], tmp_path / "soup", out_dtype=torch.bfloat16,
              copy_files_from=models["ft0"], progress=False)
    out, ref = _sd(tmp_path / "soup"), _reference([models["ft0"], models["ft1"]], [0.5, 0.5])
    for k in ref:
        assert out[k].dtype == torch.bfloat16 and torch.equal(out[k], ref[k].to(torch.bfloat16))
    config = json.loads((tmp_path / "soup" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "README.md" not in res.files and "tokenizer.json" in res.files and "config.json" in res.files


def test_chunked_and_budgeted_reading_is_bit_identical(models, tmp_path, monkeypatch):
    folders = [models[f"ft{i}"] for i in range(3)]
    plain = mix(folders, [0.2, 0.3, 0.5], tmp_path / "plain", progress=False)
    monkeypatch.setattr(mixing, "_CHUNK_ELEMENTS", 100)  # the embeddings are split in many row chunks
    monkeypatch.setattr(mixing, "_MAPPED_BUDGET", 1000)  # handles are closed and reopened all the time
    monkeypatch.setattr(mixing, "_MIN_SOURCE_BUDGET", 1000)
    chunked = mix(folders, [0.2, 0.3, 0.5], tmp_path / "chunked", progress=False)
    assert chunked.tensor_hash == plain.tensor_hash
    assert (tmp_path / "plain/model.safetensors").read_bytes() == (tmp_path / "chunked/model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------ shards, loading


def test_shards_in_and_out_load_with_transformers(models, tmp_path):
    from transformers import AutoModelForSequenceClassification

    sharded = tmp_path / "ft0-sharded"
    AutoModelForSequenceClassification.from_pretrained(models["ft0"]).save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert read_tensor_specs(sharded) == read_tensor_specs(models["ft0"])
    folders = [sharded, models["ft1"], models["ft2"]]
    res = mix(folders, [1 / 3] * 3, tmp_path / "soup", max_shard_size="30KB", copy_files_from=models["ft0"],
              progress=False)
    index = json.loads((tmp_path / "soup" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == res.num_bytes
    assert set(index["weight_map"]) == set(read_tensor_specs(models["ft0"]))
    for fname in shards:
        with safe_open(str(tmp_path / "soup" / fname), "pt") as f:
            assert f.metadata() == {"format": "pt"}
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "soup")
    ref = _reference([models["ft0"], models["ft1"], models["ft2"]], [1 / 3] * 3)
    state = model.state_dict()
    for k, v in ref.items():
        torch.testing.assert_close(state[k], v, rtol=1e-6, atol=1e-7)
    assert tensor_hash(tmp_path / "soup") == res.tensor_hash


def test_tensor_hash_independent_of_sharding(models, tmp_path):
    sd = _sd(models["ft0"])
    write_state_dict(sd, tmp_path / "one", max_shard_size="5GB")
    files = write_state_dict(sd, tmp_path / "many", max_shard_size=10_000, metadata={"note": "x"})
    assert len(files) > 2 and files[-1] == "model.safetensors.index.json"
    h = tensor_hash(models["ft0"])
    assert tensor_hash(tmp_path / "one") == tensor_hash(tmp_path / "many") == tensor_hash(sd) == h
    sd2 = dict(sd)
    k = sorted(sd2)[0]
    sd2[k] = sd2[k].clone()
    sd2[k].view(-1)[0] += 1
    assert tensor_hash(sd2) != h


def test_writer_mixed_dtypes_aligned_and_loadable(tmp_path):
    sd = {
        "mask": torch.tensor([True, False, True]),
        "b": torch.arange(5, dtype=torch.int8),
        "w": torch.randn(3, 4),
        "h": torch.randn(7).to(torch.bfloat16),
        "ids": torch.arange(6, dtype=torch.int64).view(2, 3),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    write_state_dict(sd, tmp_path / "o")
    back = load_file(tmp_path / "o" / "model.safetensors")
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    with open(tmp_path / "o" / "model.safetensors", "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    assert (8 + n) % 8 == 0
    for k, meta in header.items():
        if k != "__metadata__":
            assert meta["data_offsets"][0] % sd[k].element_size() == 0, k


def test_write_state_dict_drops_aliases(tmp_path):
    emb = torch.randn(4, 3)
    sd = {"bert.embeddings.word_embeddings.weight": emb, "cls.predictions.decoder.weight": emb, "x": torch.ones(2)}
    write_state_dict(sd, tmp_path / "o")
    assert set(read_tensor_specs(tmp_path / "o")) == {"bert.embeddings.word_embeddings.weight", "x"}
    write_state_dict(sd, tmp_path / "p", tied_weights_keys=[r"bert\.embeddings"])
    assert set(read_tensor_specs(tmp_path / "p")) == {"cls.predictions.decoder.weight", "x"}


# ------------------------------------------------------------------------------------------ checks


def test_integer_buffers_copied_or_refused(models, tmp_path):
    folders = []
    for i in range(3):
        sd = _sd(models[f"ft{i}"])
        sd["bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
        sd["bn.num_batches_tracked"] = torch.tensor(7)
        folders.append(_write(tmp_path / f"in{i}", sd))
    mix(folders, [1 / 3] * 3, tmp_path / "soup", progress=False)
    out = _sd(tmp_path / "soup")
    assert torch.equal(out["bert.embeddings.position_ids"], torch.arange(64).unsqueeze(0))
    assert out["bn.num_batches_tracked"].dtype == torch.int64 and int(out["bn.num_batches_tracked"]) == 7

    sd = _sd(folders[2])
    sd["bn.num_batches_tracked"] = torch.tensor(9)
    _write(tmp_path / "in2", sd)
    with pytest.raises(MixingError) as e:
        mix(folders, [1 / 3] * 3, tmp_path / "bad", names=["run-a", "run-b", "run-c"], progress=False)
    assert "bn.num_batches_tracked" in str(e.value) and "run-c" in str(e.value) and "run-b" not in str(e.value)
    assert not (tmp_path / "bad").exists() and _leftovers(tmp_path) == []


def test_nan_in_an_ingredient_is_named(models, tmp_path):
    sd = _sd(models["ft1"])
    sd["bert.encoder.layer.1.output.dense.weight"][3, 4] = float("nan")
    bad = _write(tmp_path / "bad", sd)
    with pytest.raises(NonFiniteError) as e:
        mix([models["ft0"], bad, models["ft2"]], [1 / 3] * 3, tmp_path / "soup", names=["a", "b", "c"],
            progress=False)
    msg = str(e.value)
    assert "bert.encoder.layer.1.output.dense.weight" in msg and "b (NaN)" in msg and "a (" not in msg
    assert not (tmp_path / "soup").exists() and _leftovers(tmp_path) == []


def test_overflow_to_fp16_is_refused(tmp_path):
    a = _write(tmp_path / "a", {"w": torch.tensor([1e5, 1.0])})
    b = _write(tmp_path / "b", {"w": torch.tensor([1e5, 1.0])})
    with pytest.raises(NonFiniteError, match="overflows"):
        mix([a, b], [0.5, 0.5], tmp_path / "o", out_dtype=torch.float16, progress=False)


@pytest.mark.parametrize("weights,match", [
    ([0.5, float("nan")], "weight nan of ft1"),
    ([0.5, -0.5], "weight -0.5 of ft1"),
    ([float("inf"), 0.5], "weight inf of ft0"),
    ([0.0, 0.0], "sum to 0"),
    ([1.0], "1 weights for 2"),
])
def test_bad_weights(models, tmp_path, weights, match):
    with pytest.raises(MixingError, match=match):
        mix([models["ft0"], models["ft1"]], weights, tmp_path / "o", names=["ft0", "ft1"], progress=False)


def test_weights_not_summing_to_one_warn(models, tmp_path):
    res = mix([models["ft0"], models["ft1"]], [1.0, 1.0], tmp_path / "o", progress=False)
    assert any("sum to 2" in w for w in res.warnings)


def test_header_mismatch_listed_before_reading(models, tmp_path, monkeypatch):
    three = make_finetune(models["base"], tmp_path / "three", num_labels=3)
    sd = _sd(models["ft1"])
    sd["extra.weight"] = torch.zeros(2)
    del sd["bert.pooler.dense.bias"]
    odd = _write(tmp_path / "odd", sd)
    monkeypatch.setattr(mixing._Source, "read", lambda *a, **k: pytest.fail("data read before headers checked"))
    with pytest.raises(MixingError) as e:
        mix([models["ft0"], three, odd], [1 / 3] * 3, tmp_path / "o", names=["A", "B", "C"], progress=False)
    msg = str(e.value)
    assert "classifier.weight: A F32[2, 32] vs B F32[3, 32]" in msg
    assert "C lacks 1 tensors of A: bert.pooler.dense.bias" in msg and "extra.weight" in msg


def test_missing_weights_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidWeightsError, match="no model.safetensors"):
        read_tensor_specs(tmp_path / "empty")


def test_batchnorm_stats_warn(tmp_path):
    folders = [
        _write(tmp_path / f"m{i}", {"bn.weight": torch.ones(3), "bn.running_mean": torch.full((3,), float(i)),
                                    "bn.running_var": torch.ones(3)})
        for i in range(2)
    ]
    res = mix(folders, [0.5, 0.5], tmp_path / "o", progress=False)
    assert len(res.warnings) == 1 and "reset_running_stats" in res.warnings[0] and "bn.running_mean" in res.warnings[0]
    assert torch.equal(_sd(tmp_path / "o")["bn.running_mean"], torch.full((3,), 0.5))


def test_tied_names_absent_stay_absent_and_identical_stay_identical(tmp_path):
    folders = []
    for i in range(3):
        emb = torch.randn(10, 4, generator=torch.Generator().manual_seed(i))
        folders.append(_write(tmp_path / f"m{i}", {"emb": emb, "emb_copy": emb.clone(), "b": torch.randn(4)}))
    mix(folders, [0.3, 0.3, 0.4], tmp_path / "o", progress=False)
    out = _sd(tmp_path / "o")
    assert set(out) == {"emb", "emb_copy", "b"} and torch.equal(out["emb"], out["emb_copy"])


# ------------------------------------------------------------------------------------------ output folder


def test_output_exists_and_overwrite(models, tmp_path):
    out = tmp_path / "soup"
    out.mkdir()
    mix([models["ft0"], models["ft1"]], [0.5, 0.5], out, progress=False)  # empty folder: fine
    with pytest.raises(OutputExistsError):
        mix([models["ft0"], models["ft1"]], [0.5, 0.5], out, progress=False)
    (out / "stale.txt").write_text("old")
    res = mix([models["ft0"], models["ft2"]], [0.5, 0.5], out, overwrite=True, progress=False)
    assert not (out / "stale.txt").exists() and tensor_hash(out) == res.tensor_hash
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_nothing(models, tmp_path, monkeypatch, exc):
    real = writer.ShardedSafetensorsWriter.write
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise exc("disk on fire")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(writer.ShardedSafetensorsWriter, "write", flaky)
    with pytest.raises(exc):
        mix([models["ft0"], models["ft1"]], [0.5, 0.5], tmp_path / "soup", max_shard_size="20KB", progress=False)
    assert not (tmp_path / "soup").exists() and _leftovers(tmp_path) == []

    # an existing soup survives an interrupted overwrite
    monkeypatch.setattr(writer.ShardedSafetensorsWriter, "write", real)
    first = mix([models["ft0"], models["ft1"]], [0.5, 0.5], tmp_path / "soup", progress=False)
    monkeypatch.setattr(writer.ShardedSafetensorsWriter, "write", flaky)
    calls["n"] = 0
    with pytest.raises(exc):
        mix([models["ft0"], models["ft2"]], [0.5, 0.5], tmp_path / "soup", overwrite=True, progress=False)
    assert tensor_hash(tmp_path / "soup") == first.tensor_hash and _leftovers(tmp_path) == []


def test_deterministic(models, tmp_path):
    folders = [models[f"ft{i}"] for i in range(3)]
    a = mix(folders, [0.2, 0.5, 0.3], tmp_path / "a", max_shard_size="30KB", progress=False)
    b = mix(folders, [0.2, 0.5, 0.3], tmp_path / "b", max_shard_size="30KB", progress=False)
    assert a.tensor_hash == b.tensor_hash and a.files == b.files
    for f in a.files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


# ------------------------------------------------------------------------------------------ running sum


def test_running_sum_trial_matches_mix(models, tmp_path):
    from transformers import AutoModelForSequenceClassification

    folders = [models[f"ft{i}"] for i in range(3)]
    mix(folders, [1 / 3] * 3, tmp_path / "soup", progress=False)
    expected = _sd(tmp_path / "soup")
    model = AutoModelForSequenceClassification.from_pretrained(models["ft0"])
    params_before = {id(p) for p in model.parameters()}
    rs = RunningSum(folders[0])
    rs.add(folders[0])
    rs.add(folders[1])
    rs.trial_into(model, folders[2])
    assert rs.count == 2 and {id(p) for p in model.parameters()} == params_before
    state = model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(state[k], v, rtol=1e-6, atol=1e-7)
    rs.load_into(model)  # back to the mean of the first two
    two = _reference(folders[:2], [0.5, 0.5])
    for k, v in two.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    avg = rs.average()
    for k, v in two.items():
        torch.testing.assert_close(avg[k], v, rtol=1e-6, atol=1e-7)


def test_running_sum_refuses_nan_without_changing(models, tmp_path):
    sd = _sd(models["ft1"])
    sd["classifier.weight"][0, 0] = float("inf")
    bad = _write(tmp_path / "bad", sd)
    rs = RunningSum(models["ft0"])
    rs.add(models["ft0"])
    before = rs.average()
    with pytest.raises(NonFiniteError, match="classifier.weight"):
        rs.add(bad, name="bad-run")
    assert rs.count == 1
    after = rs.average()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(MixingError, match="empty"):
        RunningSum(models["ft0"]).average()


def test_running_sum_fills_a_model_with_another_prefix(models):
    """A sum of BertModel weights (no `bert.` prefix) fills the backbone of a classification model."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(models["ft0"])
    head = model.classifier.weight.detach().clone()
    rs = RunningSum(models["base"])
    rs.add(models["base"])
    rs.load_into(model)
    base = _sd(models["base"])
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, base["embeddings.word_embeddings.weight"])
    assert torch.equal(model.classifier.weight, head)


# ------------------------------------------------------------------------------------------ interpolation


def test_match_names():
    base = ["embeddings.w", "pooler.b", "encoder.x"]
    target = ["bert.embeddings.w", "bert.pooler.b", "bert.encoder.x", "classifier.w"]
    expected = {"bert.embeddings.w": "embeddings.w", "bert.pooler.b": "pooler.b", "bert.encoder.x": "encoder.x"}
    assert match_names(base, target) == expected
    assert match_names(base, target, prefix="bert") == expected
    assert match_names(target, base) == {v: k for k, v in expected.items()}
    assert match_names(["a.b"], ["a.b", "c"]) == {"a.b": "a.b"}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_interpolate(models, tmp_path, alpha):
    res = interpolate(models["base"], models["ft0"], alpha, tmp_path / "wise", progress=False)
    out, base, ft = _sd(tmp_path / "wise"), _sd(models["base"]), _sd(models["ft0"])
    assert set(out) == set(ft)
    for k, v in out.items():
        if k.startswith("classifier."):
            assert torch.equal(v, ft[k])  # the new head comes from the fine-tune whatever alpha
            continue
        b = base[k[len("bert."):]]
        if alpha == 0.0:
            assert torch.equal(v, b), k
        elif alpha == 1.0:
            assert torch.equal(v, ft[k]), k
        else:
            torch.testing.assert_close(v, 0.5 * b + 0.5 * ft[k], rtol=1e-6, atol=1e-7)
    assert any("classifier.weight" in w for w in res.warnings)
    assert (tmp_path / "wise" / "config.json").exists()  # side files from the fine-tune by default
    with pytest.raises(MixingError, match="alpha"):
        interpolate(models["base"], models["ft0"], 1.5, tmp_path / "bad", progress=False)


def test_tensor_spec():
    spec = TensorSpec("BF16", (3, 4))
    assert spec.torch_dtype == torch.bfloat16 and spec.nbytes == 24 and spec.is_floating_point
    assert TensorSpec.of(torch.zeros(2, dtype=torch.int64)) == TensorSpec("I64", (2,))


# ------------------------------------------------------------------------------------------ side files, shard plan


def test_side_files_copied_and_weights_not(models, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        (src / name).write_text("{}" if name.endswith(".json") else "a\n")
    for name in ("README.md", "soup.json", "pytorch_model.bin", "model.safetensors.index.json", ".hidden"):
        (src / name).write_text("x")
    (src / "checkpoint-5").mkdir()
    (src / "checkpoint-5" / "trainer_state.json").write_text("{}")
    res = mix([models["ft0"], models["ft1"]], [0.5, 0.5], tmp_path / "soup", copy_files_from=src, progress=False)
    side = sorted(f for f in res.files if not f.endswith(".safetensors"))
    assert side == ["config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.json",
                    "tokenizer_config.json", "vocab.txt"]
    assert sorted(p.name for p in (tmp_path / "soup").iterdir()) == sorted(res.files)


@pytest.mark.parametrize("max_shard_size", [1_000, 30_000, "50KB", "5GB"])
def test_shard_plan_is_save_pretrained_s(models, max_shard_size):
    """plan_shards (specs only) splits exactly as huggingface_hub's split of the real state dict."""
    from huggingface_hub import split_torch_state_dict_into_shards

    sd = _sd(models["ft0"])
    specs = {n: TensorSpec.of(t) for n, t in sd.items()}
    expected = split_torch_state_dict_into_shards(sd, max_shard_size=max_shard_size).filename_to_tensors
    assert writer.plan_shards(specs, max_shard_size) == {f: list(ns) for f, ns in expected.items()}


def test_num_bytes_counts_integer_tensors(tmp_path):
    a = _write(tmp_path / "a", {"w": torch.ones(3), "ids": torch.arange(4)})
    b = _write(tmp_path / "b", {"w": torch.zeros(3), "ids": torch.arange(4)})
    res = mix([a, b], [0.5, 0.5], tmp_path / "o", progress=False)
    assert res.num_bytes == 3 * 4 + 4 * 8 and res.num_tensors == 2


@pytest.mark.parametrize("max_shard_size", ["5GB", "20KB"])
def test_output_files_byte_identical_to_save_pretrained(models, tmp_path, max_shard_size):
    """A soup of one ingredient with weight 1 is written exactly as `save_pretrained` writes that model."""
    import filecmp

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(models["ft0"])
    model.save_pretrained(tmp_path / "sp", max_shard_size=max_shard_size)
    res = mix([models["ft0"]], [1.0], tmp_path / "mx", max_shard_size=max_shard_size, progress=False)
    expected = sorted(p.name for p in (tmp_path / "sp").iterdir() if p.name != "config.json")
    assert res.files == expected
    for name in expected:
        assert filecmp.cmp(tmp_path / "sp" / name, tmp_path / "mx" / name, shallow=False), name
    assert writer.count_parameters(read_tensor_specs(models["ft0"])) == model.num_parameters()
