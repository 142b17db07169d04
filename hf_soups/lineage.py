"""Shared-base verification: may these candidates be averaged?

A soup only works when every ingredient was fine-tuned from the same pre-trained weights (same base model, same
revision) and nothing else that the average assumes differs. :func:`verify_lineage` runs every check and returns
a :class:`LineageReport` that lists **every** problem at once, each with the candidates involved and the fix.

Checks, cheapest first (the metadata checks need no weight download):

1. declared base: card ``base_model`` / hf-soups provenance / config ``_name_or_path`` (weak hint) agree, and so
   does the base revision wherever one is declared; a base named by the user must match every declaration;
2. architecture and model type; shape-relevant config; label maps; tokenizer vocabulary;
3. tensor names, shapes and dtypes, from safetensors headers;
4. weight space (only when 1-3 pass, since it downloads weights): every candidate is close to the base, and
   tensors that the base lacks (new heads) are not independently initialised across candidates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .candidates import Candidate, resolve_all
from .errors import IncompatibleCandidatesError
from .hub import Hub
from .progress import get_logger, progress

logger = get_logger(__name__)

#: Config keys that do not change what a weight means (run settings, bookkeeping, regularisation).
_NON_STRUCTURAL = {
    "_name_or_path", "_commit_hash", "transformers_version", "architectures", "id2label", "label2id", "num_labels",
    "torch_dtype", "dtype", "finetuning_task", "problem_type", "use_cache", "return_dict", "output_attentions",
    "output_hidden_states", "torchscript", "task_specific_params", "chunk_size_feed_forward", "pruned_heads",
    "tie_word_embeddings", "initializer_range",
}


@dataclass
class Problem:
    """One incompatibility (or, with severity "warning", one thing that could not be confirmed)."""

    check: str
    message: str
    candidates: List[str]
    fix: str
    severity: str = "error"


@dataclass
class LineageReport:
    """What :func:`verify_lineage` found.

    Attributes:
        candidates: the pinned references checked (``org/model@sha`` or folders).
        base: the base model id (named by the user, or the one the candidates declare).
        base_revision: the base revision (sha) when known.
        problems: every problem found; errors make the set incompatible, warnings do not.
        checks: the names of the checks that ran.
        distances: candidate -> relative L2 distance to the base over shared weight matrices (weight check only).
        head_tensors: tensors the base lacks (task heads).
    """

    candidates: List[str]
    base: Optional[str] = None
    base_revision: Optional[str] = None
    problems: List[Problem] = field(default_factory=list)
    checks: List[str] = field(default_factory=list)
    distances: Dict[str, float] = field(default_factory=dict)
    head_tensors: List[str] = field(default_factory=list)

    @property
    def errors(self) -> List[Problem]:
        """Problems that make the candidates incompatible."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> List[Problem]:
        """Things that could not be confirmed; they do not block a soup."""
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        """True when no check found an error."""
        return not self.errors

    def add(self, check: str, message: str, candidates: Iterable[str], fix: str, severity: str = "error") -> None:
        """Record one problem."""
        self.problems.append(Problem(check, message, list(candidates), fix, severity))

    def summary(self) -> str:
        """A short text: compatible or not, then every problem with its candidates and fix."""
        head = (
            f"{len(self.candidates)} candidates are compatible"
            if self.ok
            else f"{len(self.errors)} problem(s) make these {len(self.candidates)} candidates incompatible"
        )
        if self.base:
            head += f" (base {self.base}" + (f"@{self.base_revision}" if self.base_revision else "") + ")"
        lines = [head + ":" if self.problems else head]
        for p in self.problems:
            lines.append(f"- [{p.severity}] {p.check}: {p.message}")
            if p.candidates:
                lines.append(f"    candidates: {', '.join(p.candidates)}")
            lines.append(f"    fix: {p.fix}")
        return "\n".join(lines)

    def to_table(self) -> str:
        """A plain-text table of the checks that ran and their outcome, then the problems."""
        rows = []
        for check in self.checks:
            found = [p for p in self.problems if p.check == check]
            status = "FAIL" if any(p.severity == "error" for p in found) else ("warn" if found else "ok")
            rows.append((check, status, "; ".join(p.message for p in found) or "-"))
        width = max([len(r[0]) for r in rows] + [5])
        out = ["candidates (pinned):"] + [f"  {c}" for c in self.candidates]
        if self.base:
            out.append(f"base: {self.base}" + (f" @ {self.base_revision}" if self.base_revision else ""))
        out.append("")
        out += [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  ------"]
        out += [f"{c:<{width}}  {s:<6}  {d}" for c, s, d in rows]
        if self.distances:
            out.append("")
            out.append("relative L2 distance to the base:")
            out += [f"  {name}: {d:.4f}" for name, d in self.distances.items()]
        out.append("")
        out.append(self.summary())
        return "\n".join(out)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (``ok`` added)."""
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def raise_for_problems(self) -> None:
        """Raise :class:`IncompatibleCandidatesError` carrying this report if any check found an error."""
        if not self.ok:
            raise IncompatibleCandidatesError(self)


# -- declared base -------------------------------------------------------------------------------------------


def declared_base(candidate: Candidate) -> Tuple[Optional[str], Optional[str], str]:
    """The base model a candidate declares: (repo id, revision, where it was read).

    Read from hf-soups provenance first, then the model card (`base_model`, `base_model_revision`), then the
    config's `_name_or_path` (a weak hint: it is often a local path).
    """
    prov = candidate.provenance or {}
    base = prov.get("base") if isinstance(prov.get("base"), dict) else None
    if base and base.get("id"):
        return base.get("id"), base.get("revision"), "soup.json"
    if prov.get("base_model"):
        return prov["base_model"], prov.get("base_model_revision"), "hf-soups provenance"
    card_base = candidate.card_data.get("base_model")
    if isinstance(card_base, list):
        card_base = card_base[0] if len(card_base) == 1 else None
    if card_base:
        return str(card_base), candidate.card_data.get("base_model_revision"), "model card"
    hint = candidate.config.get("_name_or_path")
    if hint and not str(hint).startswith((".", "/", "~")) and str(hint).count("/") <= 1:
        return str(hint), None, "config _name_or_path"
    return None, None, "none"


def _same_revision(a: str, b: str) -> bool:
    """Revisions match when equal, or when one is a (short) sha prefix of the other."""
    a, b = a.lower(), b.lower()
    return a == b or (min(len(a), len(b)) >= 7 and (a.startswith(b) or b.startswith(a)))


def _group(values: Dict[str, Any]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    for cand, value in values.items():
        groups.setdefault(json.dumps(value, sort_keys=True, default=str), []).append(cand)
    return groups


def _describe_groups(values: Dict[str, Any]) -> str:
    return "; ".join(f"{', '.join(c)} -> {json.loads(v)}" for v, c in _group(values).items())


def _check_base(report: LineageReport, cands: Sequence[Candidate], base: Optional[Candidate]) -> None:
    report.checks.append("base model")
    declared = {c.pinned_ref: declared_base(c) for c in cands}
    named = {ref: d for ref, d in declared.items() if d[0]}
    strong = {ref: d for ref, d in named.items() if d[2] != "config _name_or_path"}
    silent = [ref for ref, d in declared.items() if not d[0]]
    if silent:
        report.add(
            "base model",
            "no declared base model (no card base_model, no hf-soups provenance)",
            silent,
            "Add `base_model: <id>` and `base_model_revision: <sha>` to the card metadata, or publish with "
            "SoupCallback; name the base with --base so the weight-space check can confirm it.",
            severity="warning",
        )
    ids = {ref: d[0] for ref, d in (strong or named).items()}
    if len(set(ids.values())) > 1:
        report.add(
            "base model",
            f"candidates declare different base models: {_describe_groups(ids)}",
            ids.keys(),
            "Soup only fine-tunes of one base; drop the candidates of the other base(s).",
        )
    if base is not None and not base.is_local:
        wrong = [ref for ref, i in ids.items() if i != base.repo_id]
        if wrong:
            report.add(
                "base model",
                f"declared base differs from the named base {base.repo_id}: "
                + "; ".join(f"{r} -> {ids[r]}" for r in wrong),
                wrong,
                "Check --base, or drop these candidates.",
            )
    report.base = (base.repo_id or str(base.local_path)) if base is not None else (next(iter(ids.values()), None))

    report.checks.append("base revision")
    revisions = {ref: d[1] for ref, d in named.items() if d[1]}
    if base is not None and not base.is_local:
        report.base_revision = base.sha
        wrong = [ref for ref, r in revisions.items() if not _same_revision(str(r), str(base.sha))]
        if wrong:
            report.add(
                "base revision",
                f"fine-tuned from another revision of the base than {base.repo_id}@{str(base.sha)[:12]}: "
                + "; ".join(f"{r} -> {str(revisions[r])[:12]}" for r in wrong),
                wrong,
                "Soup only fine-tunes of the same base revision; re-train from that revision or drop them.",
            )
    elif revisions:
        distinct: List[str] = []
        for r in revisions.values():
            if not any(_same_revision(str(r), d) for d in distinct):
                distinct.append(str(r))
        if len(distinct) > 1:
            report.add(
                "base revision",
                "candidates were fine-tuned from different revisions of the base: "
                + "; ".join(f"{ref} -> {str(r)[:12]}" for ref, r in revisions.items()),
                revisions.keys(),
                "Soup only fine-tunes of one base revision; drop the others, or re-train them from one revision.",
            )
        report.base_revision = distinct[0] if len(distinct) == 1 else None
    missing_rev = [ref for ref in named if ref not in revisions]
    if missing_rev and (revisions or base is not None):
        report.add(
            "base revision",
            "no declared base revision, so the revision cannot be confirmed from metadata",
            missing_rev,
            "Record `base_model_revision: <sha>` in the card (SoupCallback does); the weight-space check "
            "against --base ID@REV confirms it from the weights.",
            severity="warning",
        )


# -- metadata checks -----------------------------------------------------------------------------------------


def _check_metadata(report: LineageReport, cands: Sequence[Candidate]) -> None:
    report.checks.append("architecture")
    arch = {c.pinned_ref: (c.config.get("model_type"), c.config.get("architectures")) for c in cands}
    if len(_group(arch)) > 1:
        report.add(
            "architecture",
            f"different model types or architectures: {_describe_groups(arch)}",
            arch.keys(),
            "Soup only models of one architecture (the same AutoModel class and model_type).",
        )

    report.checks.append("config")
    keys = sorted({k for c in cands for k in c.config} - _NON_STRUCTURAL)
    for key in keys:
        if "dropout" in key:
            continue
        values = {c.pinned_ref: c.config.get(key) for c in cands}
        if len(_group(values)) > 1:
            report.add(
                "config",
                f"config `{key}` differs: {_describe_groups(values)}",
                values.keys(),
                f"Soup only models whose `{key}` agrees (it changes the network's shape or meaning).",
            )

    report.checks.append("labels")
    labels = {
        c.pinned_ref: {str(k): v for k, v in (c.config.get("id2label") or {}).items()} for c in cands
    }
    if len(_group(labels)) > 1:
        report.add(
            "labels",
            f"different label maps (id2label): {_describe_groups(labels)}",
            labels.keys(),
            "Every ingredient must map the same ids to the same labels; re-train with one label2id, or drop.",
        )

    report.checks.append("tokenizer")
    toks = {c.pinned_ref: c.tokenizer_hash for c in cands if c.tokenizer_hash}
    if len(set(toks.values())) > 1:
        report.add(
            "tokenizer",
            f"different tokenizer vocabularies: {_describe_groups(toks)}",
            toks.keys(),
            "Every ingredient must use the base's tokenizer; drop those with another vocabulary.",
        )


def _check_tensors(report: LineageReport, cands: Sequence[Candidate], base: Optional[Candidate]) -> None:
    report.checks.append("tensors")
    ref = cands[0]
    for cand in cands[1:]:
        issues = _spec_diff(ref.tensor_specs, cand.tensor_specs)
        if issues:
            report.add(
                "tensors",
                f"tensors differ from {ref.pinned_ref}: " + _clip(issues),
                [ref.pinned_ref, cand.pinned_ref],
                "Soup only checkpoints with identical tensor names, shapes and dtypes (cast with "
                "model.to(dtype) and save_pretrained if only the dtype differs).",
            )
    if base is not None:
        mapping = _match_to_base(base.tensor_specs, ref.tensor_specs)
        report.head_tensors = sorted(n for n in ref.tensor_specs if n not in mapping)
        issues = [
            f"{n}: {ref.tensor_specs[n][1]} vs base {base.tensor_specs[b][1]}"
            for n, b in mapping.items()
            if tuple(ref.tensor_specs[n][1]) != tuple(base.tensor_specs[b][1])
        ]
        if issues:
            report.add(
                "tensors",
                "tensor shapes differ from the base: " + _clip(issues),
                [c.pinned_ref for c in cands],
                "These candidates were not fine-tuned from this base; check --base.",
            )


def _spec_diff(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    issues = [f"missing {n}" for n in sorted(set(a) - set(b))]
    issues += [f"extra {n}" for n in sorted(set(b) - set(a))]
    for name in sorted(set(a) & set(b)):
        (da, sa), (db, sb) = a[name], b[name]
        if tuple(sa) != tuple(sb):
            issues.append(f"{name} shape {list(sb)} vs {list(sa)}")
        elif da != db:
            issues.append(f"{name} dtype {db} vs {da}")
    return issues


def _clip(items: List[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _match_to_base(base_specs: Dict[str, Any], specs: Dict[str, Any]) -> Dict[str, str]:
    from .mixing import match_names

    return match_names(list(base_specs), list(specs))


# -- weight space --------------------------------------------------------------------------------------------


def _check_weights(
    report: LineageReport,
    cands: Sequence[Candidate],
    base: Optional[Candidate],
    hub: Hub,
    *,
    max_distance: float,
    head_distance: float,
    head_ratio: float,
) -> None:
    """Stream every floating tensor once (one tensor of each candidate at a time) and measure distances."""
    from safetensors import safe_open

    report.checks.append("weight distance")
    folders = [c.fetch(hub) for c in cands]
    base_folder = base.fetch(hub) if base is not None else None
    ref = cands[0]
    mapping = _match_to_base(base.tensor_specs, ref.tensor_specs) if base is not None else {}
    files = [_file_map(c) for c in cands]
    base_files = _file_map(base) if base is not None else {}

    n = len(cands)
    to_base = [[0.0, 0.0] for _ in range(n)]  # squared diff, squared base norm
    pair_dist: Dict[str, Dict[Tuple[int, int], float]] = {}  # tensor -> pair -> relative distance
    body = [0.0, 0.0]  # squared pairwise diffs and squared norms over non-head tensors
    names = [k for k, (dt, _) in sorted(ref.tensor_specs.items()) if dt.upper().startswith(("F", "BF"))]
    for name in progress(names, desc="Comparing weights", unit="tensor"):
        tensors = []
        for i in range(n):
            with safe_open(str(folders[i] / files[i][name]), framework="pt") as fh:
                tensors.append(fh.get_tensor(name).double())
        # distance to the base over weight matrices only: norms and biases start at constants (LayerNorm weights
        # are ones in any initialisation) and would dominate the norm while saying nothing about lineage.
        if name in mapping and len(ref.tensor_specs[name][1]) >= 2:
            bname = mapping[name]
            with safe_open(str(base_folder / base_files[bname]), framework="pt") as fh:  # type: ignore[operator]
                b = fh.get_tensor(bname).double()
            bn = float(b.pow(2).sum())
            for i, t in enumerate(tensors):
                to_base[i][0] += float((t - b).pow(2).sum())
                to_base[i][1] += bn
        dists = {}
        for i in range(n):
            for j in range(i + 1, n):
                diff2 = float((tensors[i] - tensors[j]).pow(2).sum())
                norm2 = 0.5 * (float(tensors[i].pow(2).sum()) + float(tensors[j].pow(2).sum()))
                dists[(i, j)] = math.sqrt(diff2 / norm2) if norm2 > 0 else 0.0
                if name not in report.head_tensors:
                    body[0] += diff2
                    body[1] += norm2
        pair_dist[name] = dists
        del tensors

    if base is not None:
        for i, (diff, norm) in enumerate(to_base):
            if norm > 0:
                report.distances[cands[i].pinned_ref] = math.sqrt(diff / norm)
        far = {r: d for r, d in report.distances.items() if d > max_distance}
        if far:
            report.add(
                "weight distance",
                f"far from the base {report.base} (relative L2 > {max_distance}): "
                + ", ".join(f"{r}: {d:.3f}" for r, d in far.items()),
                far.keys(),
                "These were not fine-tuned from this base revision (or trained very long); drop them, or raise "
                "max_distance if you know they are.",
            )

    if n >= 2 and pair_dist:
        report.checks.append("head initialisation")
        # The backbone's typical pairwise distance, norm-weighted over all its tensors (a per-tensor median
        # would be 0 for LayerNorm weights and biases that barely move).
        typical = math.sqrt(body[0] / body[1]) if body[1] > 0 else 0.0
        pool = report.head_tensors if report.head_tensors else list(pair_dist)
        # Only weight matrices: random initialisation shows in them, while biases and norms start at constants
        # and stay near zero, where a relative distance means nothing.
        pool = [nm for nm in pool if len(ref.tensor_specs[nm][1]) >= 2]
        worst = {nm: max(pair_dist[nm].values()) for nm in pool if pair_dist.get(nm)}
        flagged = [nm for nm, d in worst.items() if d > head_distance and d > head_ratio * typical]
        if flagged:
            far_pairs = [pair for nm in flagged for pair, d in pair_dist[nm].items() if d > head_distance]
            # name the odd one out when one candidate is in every far pair, else everyone involved
            common = set(far_pairs[0]).intersection(*map(set, far_pairs[1:])) if len(cands) > 2 else set()
            involved = sorted(cands[k].pinned_ref for k in (common or {k for p in far_pairs for k in p}))
            report.add(
                "head initialisation",
                "heads were initialised differently: "
                + ", ".join(f"{nm} (distance {worst[nm]:.2f})" for nm in flagged[:4])
                + f" are far apart between candidates while the backbone is close ({typical:.4f}); "
                "averaging them collapses the head",
                involved,
                "Fine-tune every ingredient with the same seed for the head initialisation (e.g. "
                "transformers.set_seed(<same seed>) before from_pretrained, then vary the training seed), "
                "or re-initialise the heads identically.",
            )


def _file_map(cand: Candidate) -> Dict[str, str]:
    """tensor name -> weight file holding it (from the shard index when there is one)."""
    folder = cand.fetch()
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return dict(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    out: Dict[str, str] = {}
    for fname in cand.weight_files():
        with safe_open(str(folder / fname), framework="pt") as fh:
            out.update({k: fname for k in fh.keys()})
    return out


# -- entry point ---------------------------------------------------------------------------------------------


def verify_lineage(
    candidates: Sequence[str | Candidate],
    base: Optional[str | Candidate] = None,
    *,
    hub: Optional[Hub] = None,
    check_weights: bool = True,
    max_distance: float = 0.5,
    head_distance: float = 0.5,
    head_ratio: float = 10.0,
    allow_pickle: bool = False,
    before_download: Optional[Callable[[List[Candidate]], None]] = None,
) -> LineageReport:
    """Check that candidates share one base model revision and can be averaged.

    Metadata checks run first and need no weight download. The weight-space checks (distance to the base,
    head initialisation) run only when those pass, since they download weights.

    Args:
        candidates: references (``org/model@rev``, folders) or :class:`Candidate` objects.
        base: the base model (``id@rev`` or a folder) every candidate must have been fine-tuned from.
        hub: the Hub connection (default `Hub()`).
        check_weights: run the weight-space checks (downloads weights).
        max_distance: largest relative L2 distance to the base a fine-tune may have.
        head_distance: relative distance between candidates above which a head tensor counts as far apart.
        head_ratio: how many times the backbone's typical distance a head must exceed to be flagged.
        allow_pickle: accept pickle-only candidates.
        before_download: called with the resolved candidates once the metadata checks pass and before any
            weight is downloaded, e.g. to check the evaluation set-up first (its errors propagate).

    Returns:
        A :class:`LineageReport` listing every problem (``report.ok`` when there is none).

    Raises:
        InvalidReferenceError, CandidateNotFoundError, UnsafeWeightsError: a candidate cannot be resolved.

    Example:
        >>> report = verify_lineage(["org/run-a", "org/run-b@3f1c9e2"], base="org/base@main")  # doctest: +SKIP
        >>> print(report.to_table())                                                           # doctest: +SKIP
    """
    hub = hub or Hub()
    cands = resolve_all(candidates, hub, allow_pickle=allow_pickle)
    base_cand: Optional[Candidate] = None
    if base is not None:
        base_cand = base if isinstance(base, Candidate) else Candidate(base, allow_pickle=allow_pickle)
        if not base_cand.resolved:
            base_cand.resolve(hub)
    report = LineageReport(candidates=[c.pinned_ref for c in cands])
    _check_base(report, cands, base_cand)
    _check_metadata(report, cands)
    _check_tensors(report, cands, base_cand)
    if before_download is not None and report.ok:
        before_download(cands)
    if check_weights and report.ok and (base_cand is not None or len(cands) >= 2):
        _check_weights(
            report, cands, base_cand, hub,
            max_distance=max_distance, head_distance=head_distance, head_ratio=head_ratio,
        )
    return report
