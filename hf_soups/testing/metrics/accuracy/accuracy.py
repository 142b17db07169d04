# Copyright 2024 The hf-soups authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Accuracy, as an `evaluate` metric module.

A local stand-in for the canonical ``evaluate-metric/accuracy`` module of the Hugging Face `evaluate` library
(https://github.com/huggingface/evaluate, Apache-2.0): same name, inputs, keyword arguments and output
(``{"accuracy": float}``), computed with scikit-learn. It is loaded through `evaluate`'s ordinary loading path,
``evaluate.load("path/to/accuracy")``, or served by ``hf_soups.testing.LocalHub`` as ``evaluate-metric/accuracy``
so that ``evaluate.load("accuracy")`` works offline.
"""

import datasets
from sklearn.metrics import accuracy_score

import evaluate

_DESCRIPTION = """
Accuracy is the fraction of predictions that equal their reference:
Accuracy = (number of correct predictions) / (number of predictions).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    normalize (`bool`): return the fraction of correct predictions (True, default) or their number (False).
    sample_weight (`list` of `float`): per-example weights (default: all 1).

Returns:
    accuracy (`float`): the fraction (or number) of correct predictions; 1.0 is best.

Examples:
    >>> accuracy = evaluate.load("accuracy")
    >>> accuracy.compute(references=[0, 1, 2, 0], predictions=[0, 1, 1, 2])
    {'accuracy': 0.5}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O.
          and Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A.
          and Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """The fraction of correct predictions (``config_name="multilabel"`` for label sets)."""

    def _info(self):
        value = datasets.Value("int32")
        features = (
            {"predictions": datasets.Sequence(value), "references": datasets.Sequence(value)}
            if self.config_name == "multilabel"
            else {"predictions": value, "references": value}
        )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        score = accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
        return {"accuracy": float(score)}
