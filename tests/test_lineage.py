"""Lineage checks on local folders (the Hub path is covered in test_hub_candidates.py)."""

import pytest

from hf_soups.errors import IncompatibleCandidatesError
from hf_soups.lineage import verify_lineage


def _checks(report, severity="error"):
    return {p.check for p in report.problems if p.severity == severity}


def test_compatible_candidates_pass(tiny_models):
    report = verify_lineage([str(tiny_models[k]) for k in ("ft0", "ft1", "ft2")])
    assert report.ok, report.summary()
    assert report.base == "org/base" and report.base_revision == "a" * 40
    assert {"base model", "base revision", "labels", "tensors", "head initialisation"} <= set(report.checks)


def test_every_problem_is_listed_at_once(tiny_models):
    report = verify_lineage([str(tiny_models[k]) for k in ("ft0", "badrev", "labels")])
    assert _checks(report) == {"base revision", "labels"}
    rev = next(p for p in report.problems if p.check == "base revision")
    assert "bbbbbbbbbbbb" in rev.message and rev.fix
    with pytest.raises(IncompatibleCandidatesError) as info:
        report.raise_for_problems()
    assert "base revision" in str(info.value) and "labels" in str(info.value)


def test_shape_mismatch_is_found_from_headers(tiny_models):
    report = verify_lineage([str(tiny_models["ft0"]), str(tiny_models["wide"])])
    assert "tensors" in _checks(report) and "config" in _checks(report)
    # weight-space checks never ran: the header check already failed
    assert "weight distance" not in report.checks


def test_differently_initialised_heads_are_reported(tiny_models):
    report = verify_lineage([str(tiny_models[k]) for k in ("ft0", "ft1", "badhead")])
    assert _checks(report) == {"head initialisation"}
    problem = report.errors[0]
    assert "heads were initialised differently" in problem.message and "classifier" in problem.message
    assert problem.candidates == [str(tiny_models["badhead"])]  # the odd one out is named
    assert "same seed" in problem.fix


def test_weight_distance_to_named_base(tiny_models):
    report = verify_lineage([str(tiny_models["ft0"]), str(tiny_models["ft1"])], base=str(tiny_models["base"]))
    assert report.ok, report.summary()
    assert set(report.head_tensors) == {"classifier.weight", "classifier.bias"}
    assert all(0 < d < 0.1 for d in report.distances.values())


def test_candidates_of_another_base_are_far(tiny_models, tmp_path):
    from hf_soups.testing.factories import make_base, make_finetune

    other = make_base(tmp_path / "other", seed=5)
    stranger = make_finetune(other, tmp_path / "stranger", seed=2, base_model="org/base", base_revision="a" * 40)
    report = verify_lineage([str(tiny_models["ft0"]), str(stranger)], base=str(tiny_models["base"]))
    assert "weight distance" in _checks(report)
    far = next(p for p in report.errors if p.check == "weight distance")
    assert str(stranger) in far.candidates and str(tiny_models["ft0"]) not in far.candidates


def test_report_renders_as_table_and_json(tiny_models):
    import json

    report = verify_lineage([str(tiny_models[k]) for k in ("ft0", "labels")], check_weights=False)
    table = report.to_table()
    assert "labels" in table and "FAIL" in table
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
