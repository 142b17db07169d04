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
"""F1 score, as an `evaluate` metric module.

A local stand-in for the canonical ``evaluate-metric/f1`` module of the Hugging Face `evaluate` library
(https://github.com/huggingface/evaluate, Apache-2.0): same name, inputs, keyword arguments and output
(``{"f1": float}``, or an array of per-class scores with ``average=None``), computed with scikit-learn. Load it
with ``evaluate.load("path/to/f1")``, or through ``hf_soups.testing.LocalHub`` as ``evaluate-metric/f1``.
"""

import datasets
import numpy as np
from sklearn.metrics import f1_score

import evaluate

_DESCRIPTION = """
The F1 score is the harmonic mean of precision and recall:
F1 = 2 * (precision * recall) / (precision + recall).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    labels (`list` of `int`): the labels to include when `average` is not "binary" (default: all labels seen).
    pos_label (`int`): the positive class when `average="binary"` (default 1).
    average (`str` or None): "binary" (default), "micro", "macro", "weighted", "samples", or None for one score
        per class.
    sample_weight (`list` of `float`): per-example weights (default: all 1).

Returns:
    f1 (`float`, or an array of `float` when `average=None`): between 0 and 1; higher is better.

Examples:
    >>> f1 = evaluate.load("f1")
    >>> f1.compute(references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0])
    {'f1': 0.5}
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
class F1(evaluate.Metric):
    """Harmonic mean of precision and recall (``config_name="multilabel"`` for label sets)."""

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
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        score = f1_score(
            references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
        )
        # scikit-learn returns a float (or a 0-d array in older versions) unless average=None.
        return {"f1": float(score) if np.ndim(score) == 0 else np.asarray(score)}
