import math

import pytest

from hf_soups.errors import RecipeError
from hf_soups.recipe import EvaluationConfig, SoupConfig, validate_weights


def test_yaml_round_trip_keeps_every_field():
    cfg = SoupConfig(candidates=["org/a@main", "org/b", "./c"], method="greedy",
                     evaluation=EvaluationConfig(dataset="stanfordnlp/sst2", metric=["accuracy", "f1"],
                                                 columns={"text": "sentence"}, max_samples=100),
                     push_to="org/soup")
    cfg.greedy.strict = True
    cfg.output.max_shard_size = "1GB"
    again = SoupConfig.from_yaml(cfg.to_yaml())
    assert again == cfg
    assert SoupConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(RecipeError, match=r"unknown key `candidtes` \(did you mean `candidates`\?\)"):
        SoupConfig.from_yaml("candidtes: [a/b, c/d]\n")
    with pytest.raises(RecipeError, match=r"evaluation.splt.*did you mean `split`"):
        SoupConfig.from_yaml("candidates: [a/b, c/d]\nevaluation: {splt: dev}\n")


def test_wrong_types_are_named():
    with pytest.raises(RecipeError, match="`compare` must be true or false"):
        SoupConfig.from_dict({"candidates": ["a/b", "c/d"], "compare": "yes"})
    with pytest.raises(RecipeError, match="must be a mapping"):
        SoupConfig.from_yaml("- just\n- a list\n")


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0.5], "1 weights for 2 candidates"),
        ([float("nan"), 1.0], "not a finite number"),
        ([-0.5, 1.5], "negative"),
        ([0.0, 0.0], "sum to zero"),
    ],
)
def test_bad_weights(weights, message):
    with pytest.raises(RecipeError, match=message):
        validate_weights(weights, 2)


def test_weights_normalised_or_checked():
    assert validate_weights([1, 3], 2, normalize=True) == [0.25, 0.75]
    with pytest.raises(RecipeError, match="sum to 4"):
        validate_weights([1, 3], 2)
    assert math.isclose(sum(validate_weights([0.2, 0.8], 2, normalize=False)), 1.0)


def test_validate_method_rules():
    with pytest.raises(RecipeError, match="did you mean 'greedy'"):
        SoupConfig(candidates=["a/b", "c/d"], method="gredy").validate()
    with pytest.raises(RecipeError, match="at least 2 candidates"):
        SoupConfig(candidates=["a/b"]).validate()
    with pytest.raises(RecipeError, match="needs a held-out evaluation"):
        SoupConfig(candidates=["a/b", "c/d"], method="greedy").validate()
    with pytest.raises(RecipeError, match="needs `base`"):
        SoupConfig(candidates=["a/b"], method="interpolate").validate()
    with pytest.warns(UserWarning, match="a/b is named twice; it is used once"):
        with pytest.raises(RecipeError, match="at least 2 candidates, got 1"):
            SoupConfig(candidates=["a/b", "a/b"]).validate()
