"""The model card of a soup: Hub metadata (through `ModelCardData`/`EvalResult`), body, greedy-trajectory plot.

Metadata follows the Hub's conventions for merges: `base_model` lists the ingredient repos (the parents),
`base_model_relation: merge`, tags `model-soup` and `merge`; `eval_results` gives the card a `model-index`
that `huggingface_hub` parses back. The YAML is written by `huggingface_hub`, never by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

if TYPE_CHECKING:
    from .soup import Soup

CITATION = """@inproceedings{wortsman2022model,
  title     = {Model soups: averaging weights of multiple fine-tuned models improves accuracy without increasing inference time},
  author    = {Wortsman, Mitchell and Ilharco, Gabriel and Gadre, Samir Ya and Roelofs, Rebecca and Gontijo-Lopes, Raphael and Morcos, Ari S and Namkoong, Hongseok and Farhadi, Ali and Carmon, Yair and Kornblith, Simon and Schmidt, Ludwig},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2022},
  url       = {https://arxiv.org/abs/2203.05482}
}"""

_PIPELINE_BY_SUFFIX = {
    "ForSequenceClassification": "text-classification",
    "ForImageClassification": "image-classification",
    "ForCausalLM": "text-generation",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
}


def pipeline_tag_for(config: Dict[str, Any]) -> Optional[str]:
    """The Hub pipeline tag implied by a config's `architectures` (None when unknown)."""
    for arch in config.get("architectures") or []:
        for suffix, tag in _PIPELINE_BY_SUFFIX.items():
            if arch.endswith(suffix):
                return tag
    return None


def card_data(soup: "Soup") -> ModelCardData:
    """The card metadata of a soup."""
    cfg = soup.config
    config = _read_config(soup.folder)
    parents = [i.repo_id for i in soup.ingredients if i.accepted and i.repo_id]
    licenses = {i.license for i in soup.ingredients if i.accepted}
    license_ = licenses.pop() if len(licenses) == 1 and None not in licenses else None
    pipeline = pipeline_tag_for(config)
    ev = cfg.evaluation
    dataset = ev.dataset if ev and ev.dataset and not Path(ev.dataset).exists() and ev.dataset != "csv" else None
    eval_results: Optional[List[EvalResult]] = None
    if soup.metrics and ev is not None:
        dataset_name = dataset or (Path(ev.dataset).name if ev.dataset else "held-out")
        eval_results = [
            EvalResult(
                task_type=pipeline or "other",
                dataset_type=dataset or dataset_name,
                dataset_name=dataset_name,
                dataset_config=ev.config,
                dataset_split=ev.split,
                metric_type=name,
                metric_name=name,
                metric_value=float(value),
            )
            for name, value in soup.metrics.items()
            if isinstance(value, (int, float))
        ]
    name = (cfg.push_to or soup.folder.name).split("/")[-1]
    return ModelCardData(
        model_name=name,
        base_model=parents or None,
        base_model_relation="merge" if parents else None,
        tags=["model-soup", "merge", "hf-soups", f"{cfg.method}-soup"],
        library_name="transformers",
        pipeline_tag=pipeline,
        datasets=[dataset] if dataset else None,
        license=license_,
        eval_results=eval_results,
    )


def build_card(soup: "Soup") -> ModelCard:
    """The full model card (metadata + body) of a soup."""
    data = card_data(soup)
    content = f"---\n{data.to_yaml()}\n---\n\n{_body(soup)}"
    return ModelCard(content)


def _body(soup: "Soup") -> str:
    cfg = soup.config
    lineage = soup.lineage
    accepted = [i for i in soup.ingredients if i.accepted]
    base = lineage.base if lineage and lineage.base else "an unnamed base"
    rev = f" at revision `{lineage.base_revision}`" if lineage and lineage.base_revision else ""
    metric = soup.selection_metric or "score"
    out = [f"# {(cfg.push_to or soup.folder.name).split('/')[-1]}", ""]
    out.append(
        f"A **{cfg.method} model soup**: the weights of {len(accepted)} of {len(soup.ingredients)} fine-tunes of "
        f"`{base}`{rev}, averaged element-wise (Wortsman et al., 2022), built and verified with "
        f"hf-soups. It costs nothing extra at inference time."
    )
    out += ["", "## Ingredients", ""]
    hp_keys = _hyperparameter_columns(soup)
    header = ["repo", "revision", *hp_keys, f"held-out {metric}", "accepted", "weight"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for i in soup.ingredients:
        repo = f"[{i.repo_id}](/{i.repo_id})" if i.repo_id else f"`{i.pinned}`"
        sha = f"`{(i.sha or '')[:12]}`"
        hps = [_fmt_value(i.hyperparameters.get(k, "")) for k in hp_keys]
        score = "-" if i.score is None else f"{i.score:.4f}"
        out.append("| " + " | ".join([repo, sha, *hps, score, "yes" if i.accepted else "no", f"{i.weight:.4f}"]) + " |")
    if soup.score is not None:
        out += ["", "## Results", "", f"Held-out {metric} on "
                f"`{_dataset_label(cfg.evaluation.dataset) if cfg.evaluation else '?'}` ({cfg.evaluation.split if cfg.evaluation else '?'}"
                f"{', ' + str(cfg.evaluation.max_samples) + ' examples' if cfg.evaluation and cfg.evaluation.max_samples else ''}):",
                "", "| model | " + metric + " |", "|---|---|"]
        out.append(f"| **this soup ({cfg.method})** | **{soup.score:.4f}** |")
        for name, value in soup.references.items():
            if value is not None:
                out.append(f"| {name.replace('_', ' ')} | {value:.4f} |")
        best = soup.references.get("best_ingredient")
        if best is not None:
            better = soup.score > best if soup.greater_is_better else soup.score < best
            out += ["", "The soup " + ("beats" if better else "does **not** beat") + " the best single ingredient on "
                    "this split. Differences of about one standard error are not evidence either way."]
    if soup.history:
        out += ["", "## Greedy trajectory", ""]
        rule = ">" if cfg.greedy.strict else ">="
        out.append(f"Ingredients sorted by held-out {metric}, best first; each next one is kept if the soup with it "
                   f"scores {rule} the current soup" + (f" + {cfg.greedy.min_delta}" if cfg.greedy.min_delta else "")
                   + ".")
        out += ["", "| step | ingredient | trial score | accepted | examples evaluated |", "|---|---|---|---|---|"]
        for k, h in enumerate(soup.history):
            score = "-" if h.get("score") is None else f"{h['score']:.4f}"
            note = " (stopped early)" if h.get("stopped_early") else ""
            out.append(f"| {k} | {h.get('ingredient')} | {score}{note} | {'yes' if h.get('accepted') else 'no'} | "
                       f"{h.get('n_evaluated', '-')} |")
        if soup.plot is not None:
            out += ["", f"![greedy trajectory]({Path(soup.plot).name})"]
    if soup.coefficients is not None:
        out += ["", "## Learned coefficients", "", "```json", json.dumps(soup.coefficients, indent=1)[:4000], "```"]
    if soup.extra:
        out += ["", "## Method details", "", "```json", json.dumps(soup.extra, indent=1, default=str), "```"]
    if lineage is not None:
        out += ["", "## Lineage checks", ""]
        out.append("Checked before any weight was averaged: " + ", ".join(lineage.checks) + ".")
        for p in lineage.warnings:
            out.append(f"- warning ({p.check}): {p.message}")
    recipe = soup.config.to_dict()
    recipe.pop("provenance", None)
    out += ["", "## Rebuild it", "", "Every ingredient is pinned to a commit. `soup.json` in this repo holds the "
            "recipe and the full provenance:", "", "```bash", "pip install hf-soups",
            f"hf-soups build soup.json --output rebuilt/   # same tensor hash: {soup.tensor_hash[:16]}", "```", "",
            "```yaml", _yaml(recipe).rstrip(), "```", "", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(out)


def plot_history(soup: "Soup", path: Path) -> Optional[Path]:
    """Plot the greedy trajectory (trial score per step, accepted vs rejected) as a PNG; None without history."""
    if not soup.history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = list(range(len(soup.history)))
    for k, h in enumerate(soup.history):
        if h.get("score") is None:
            continue
        ax.scatter([k], [h["score"]], marker="o" if h.get("accepted") else "x",
                   color="tab:green" if h.get("accepted") else "tab:red", zorder=3)
    best = []
    current = None
    for h in soup.history:
        if h.get("accepted"):
            current = h.get("score")
        best.append(current)
    ax.step(steps, best, where="post", color="tab:blue", label="soup")
    for i in soup.ingredients:
        if i.score is not None:
            ax.axhline(i.score, color="grey", alpha=0.25, lw=0.8)
    ax.set_xticks(steps)
    ax.set_xticklabels([str(h.get("ingredient", ""))[-18:] for h in soup.history], rotation=30, ha="right",
                       fontsize=7)
    ax.set_ylabel(soup.selection_metric or "score")
    ax.set_title("Greedy soup: held-out score as ingredients are tried (x = rejected)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _read_config(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _yaml(data: Dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _fmt_value(value: object) -> str:
    """A hyper-parameter for a table cell: floats in short form (3e-05, not 3.0000000000000004e-05)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _dataset_label(dataset: object) -> str:
    """A dataset as the card shows it: a Hub name as is, a local file by its name only (no local paths on the Hub)."""
    text = str(dataset)
    if text.startswith(("/", "./", "../", "~")) or "\\" in text:
        return text.replace("\\", "/").rstrip("/").split("/")[-1]
    return text


# The hyper-parameters a reader compares first; the rest follow alphabetically.
_HP_PRIORITY = ["learning_rate", "seed", "num_train_epochs", "epochs", "max_steps", "total_train_batch_size",
                "batch_size", "weight_decay", "warmup_steps", "warmup_ratio", "lr_scheduler_type", "lr_scheduler"]


def _hyperparameter_columns(soup: "Soup", limit: int = 6) -> List[str]:
    """Which recorded hyper-parameters get a column: those that differ between ingredients first (they explain
    the sweep), in reading order, then the shared ones, at most `limit`."""
    keys = {k for i in soup.ingredients for k in i.hyperparameters}
    rank = {k: (_HP_PRIORITY.index(k) if k in _HP_PRIORITY else len(_HP_PRIORITY), k) for k in keys}

    def differs(k: str) -> bool:
        return len({json.dumps(i.hyperparameters.get(k), sort_keys=True, default=str) for i in soup.ingredients}) > 1

    ordered = sorted(keys, key=lambda k: (not differs(k), rank[k]))
    return ordered[:limit]
