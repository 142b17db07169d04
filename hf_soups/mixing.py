"""Streaming weighted averages of safetensors checkpoints.

`mix` averages N ingredients with one tensor (or one chunk of a large tensor) of one ingredient in memory at
a time, plus a float32 accumulator, and writes the result shard by shard through
:class:`~hf_soups.writer.ShardedSafetensorsWriter` into a temporary folder renamed into place at the end.
Peak memory is about the largest tensor chunk, whatever the number of ingredients (see BENCHMARKS.md).

Reading goes through `safetensors.safe_open`, which memory-maps the file: a tensor it returns is a view of the
mapping, so reading costs no copy, but every page touched stays resident (and counts in the process RSS) until
the handle is closed. :class:`_Source` therefore closes and reopens an ingredient's handles once it has touched
`_MAPPED_BUDGET / k` bytes through them, so that mapped input pages stay bounded too.

Other entry points: :func:`interpolate` (WiSE-FT), :class:`RunningSum` (greedy soup trials without reloading
a model), :func:`tensor_hash`, :func:`read_tensor_specs`, :func:`match_names`, and
:func:`~hf_soups.writer.write_state_dict` (re-exported).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .errors import InvalidWeightsError, MixingError, NonFiniteError
from .progress import get_logger
from .progress import progress as _progress_bar
from .writer import (
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    ShardedSafetensorsWriter,
    TensorHasher,
    TensorSpec,
    atomic_output_dir,
    dtype_name,
    write_state_dict,
)

logger = get_logger(__name__)

PathLike = Union[str, Path]

#: Largest piece of a tensor processed at once, in elements (16 MiB of float32 accumulator).
_CHUNK_ELEMENTS = 4 * 1024 * 1024
#: Bytes of memory-mapped input pages allowed to stay resident, over all ingredients together.
_MAPPED_BUDGET = 64 * 1024 * 1024
_MIN_SOURCE_BUDGET = 4 * 1024 * 1024

_BN_STATS = ("running_mean", "running_var")
_BN_HINT = (
    "BatchNorm running statistics were averaged ({names}); the average of running means/variances is not the "
    "statistics of the averaged network. Re-estimate them: call `reset_running_stats()` on every BatchNorm module "
    "(and set `momentum=None` for a cumulative average), run forward passes in `model.train()` mode under "
    "`torch.no_grad()` over a few hundred batches of training data, then `model.eval()`."
)
# Not copied from `copy_files_from`: weights (ours replace them), the card and provenance (written by others).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")
# Files that describe one ingredient, not the soup: a soup must not carry its first ingredient's card or provenance.
_NOT_COPIED = {"README.md", "soup.json", "hf_soups_ingredient.json"}


# --------------------------------------------------------------------------------------------- reading


def _safe_open(path: Path) -> Any:
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise InvalidWeightsError(f"cannot read {path}: {e}", hint="re-download or re-save the file") from e


class _Weights:
    """The safetensors files of a folder (single file or index + shards) and which file holds which tensor."""

    def __init__(self, folder: PathLike, label: Optional[str] = None) -> None:
        self.folder = Path(folder)
        self.label = label or str(folder)
        index_path = self.folder / WEIGHTS_INDEX_NAME
        single = self.folder / WEIGHTS_NAME
        if index_path.is_file():
            try:
                weight_map: Dict[str, str] = json.loads(index_path.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise InvalidWeightsError(f"{index_path} is not a valid index: {e}", candidate=self.label) from e
            files = sorted(set(weight_map.values()))
        elif single.is_file():
            weight_map, files = {}, [WEIGHTS_NAME]
        elif not self.folder.is_dir():
            raise InvalidWeightsError(f"{self.folder} is not a folder", candidate=self.label)
        else:
            raise InvalidWeightsError(
                f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {self.folder}",
                candidate=self.label,
                hint="save the model with `save_pretrained(..., safe_serialization=True)`",
            )
        self.file_of: Dict[str, Path] = {}
        self.specs: Dict[str, TensorSpec] = {}
        for fname in files:
            path = self.folder / fname
            if not path.is_file():
                raise InvalidWeightsError(f"shard {fname} named in the index is missing", candidate=self.label)
            with _safe_open(path) as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    self.specs[name] = TensorSpec(sl.get_dtype(), tuple(sl.get_shape()))
                    self.file_of[name] = path
        if weight_map:
            wrong = sorted(n for n, fname in weight_map.items() if self.file_of.get(n, Path()).name != fname)
            if wrong:
                raise InvalidWeightsError(
                    f"the index does not match the shards for {len(wrong)} tensors, e.g. {wrong[:3]}",
                    candidate=self.label,
                )


def read_tensor_specs(folder: PathLike) -> Dict[str, TensorSpec]:
    """Names, dtypes and shapes of the tensors of a weights folder, from the safetensors headers only.

    Args:
        folder: a folder with ``model.safetensors``, or ``model.safetensors.index.json`` and its shards.

    Returns:
        Tensor name -> :class:`TensorSpec` (dtype as a safetensors name, e.g. ``"F32"``), sorted by name.

    Raises:
        InvalidWeightsError: no weights, a missing shard, a corrupt header, an index that lies.

    Example:
        >>> read_tensor_specs("ckpt/")["classifier.weight"]  # doctest: +SKIP
        TensorSpec(dtype='F32', shape=(2, 768))
    """
    specs = _Weights(folder).specs
    return {n: specs[n] for n in sorted(specs)}


class _Source:
    """Reads tensors of one ingredient through `safe_open`, keeping its mapped pages within a budget."""

    def __init__(self, weights: _Weights, budget: int) -> None:
        self.weights = weights
        self.budget = budget
        self._handles: Dict[Path, Any] = {}
        self._touched = 0

    def read(self, name: str, rows: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The tensor (rows ``[a, b)`` of its first dimension when given): a view of the mapped file."""
        path = self.weights.file_of[name]
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = _safe_open(path).__enter__()
        if rows is None:
            tensor = handle.get_tensor(name)
        else:
            tensor = handle.get_slice(name)[rows[0] : rows[1]]
        self._touched += tensor.numel() * tensor.element_size()
        return tensor

    def release(self) -> None:
        """Call when the tensors read are no longer referenced: unmaps the pages once over budget."""
        if self._touched >= self.budget:
            self.close()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()
        self._touched = 0


def _row_chunks(spec: TensorSpec) -> List[Optional[Tuple[int, int]]]:
    """Split a tensor along its first dimension into pieces of at most ~_CHUNK_ELEMENTS elements."""
    if len(spec.shape) == 0 or spec.numel <= _CHUNK_ELEMENTS:
        return [None]
    row = spec.numel // spec.shape[0] if spec.shape[0] else 1
    step = max(1, _CHUNK_ELEMENTS // max(row, 1))
    return [(a, min(a + step, spec.shape[0])) for a in range(0, spec.shape[0], step)]


def _is_finite(t: torch.Tensor) -> bool:
    # One reduction pass and no temporary: min/max propagate NaN, and +/-Inf show up in one of them.
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) and torch.isfinite(hi))


# --------------------------------------------------------------------------------------------- mixing


@dataclass
class MixResult:
    """What :func:`mix` wrote.

    Attributes:
        output_dir: the output folder.
        tensor_hash: :func:`tensor_hash` of the written tensors.
        num_tensors: number of tensors written.
        num_bytes: bytes of tensor data written.
        files: every file in the output folder (weights, index, copied files), relative, sorted.
        warnings: things the user should know (BatchNorm statistics averaged, weights not summing to 1, ...).
    """

    output_dir: Path
    tensor_hash: str
    num_tensors: int
    num_bytes: int
    files: List[str]
    warnings: List[str] = field(default_factory=list)


# One term of an output tensor: (ingredient index, tensor name in that ingredient, weight).
_Term = Tuple[int, str, float]


def _check_weights(weights: Sequence[float], names: Sequence[str]) -> List[float]:
    if len(weights) != len(names):
        raise MixingError(f"{len(weights)} weights for {len(names)} ingredients", hint="give one weight per ingredient")
    out: List[float] = []
    for w, name in zip(weights, names):
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise MixingError(f"weight {w!r} of {name} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise MixingError(f"weight {w} of {name} is not a finite non-negative number", candidate=name)
        out.append(w)
    if not sum(out) > 0:
        raise MixingError("the weights sum to 0", hint="give at least one ingredient a positive weight")
    return out


def _spec_differences(specs: Sequence[Dict[str, TensorSpec]], names: Sequence[str], limit: int = 10) -> List[str]:
    lines: List[str] = []
    ref = specs[0]
    for other, name in zip(specs[1:], names[1:]):
        missing = sorted(set(ref) - set(other))
        extra = sorted(set(other) - set(ref))
        if missing:
            lines.append(f"{name} lacks {len(missing)} tensors of {names[0]}: {', '.join(missing[:limit])}")
        if extra:
            lines.append(f"{name} has {len(extra)} tensors {names[0]} lacks: {', '.join(extra[:limit])}")
        bad = [n for n in sorted(set(ref) & set(other)) if ref[n] != other[n]]
        for n in bad[:limit]:
            lines.append(f"{n}: {names[0]} {ref[n].dtype}{list(ref[n].shape)} vs {name} {other[n].dtype}{list(other[n].shape)}")
        if len(bad) > limit:
            lines.append(f"... and {len(bad) - limit} more tensors with another shape or dtype in {name}")
    return lines


def _mix_plan(
    weights: Sequence[_Weights],
    plan: Mapping[str, List[_Term]],
    ref_specs: Mapping[str, TensorSpec],
    output_dir: PathLike,
    *,
    accumulate_dtype: torch.dtype,
    out_dtype: Optional[torch.dtype],
    max_shard_size: Union[int, str],
    overwrite: bool,
    copy_files_from: Optional[PathLike],
    progress: bool,
    warnings: List[str],
) -> MixResult:
    """The engine: output tensor name -> weighted terms, streamed into an atomic sharded output.

    `ref_specs` gives each output tensor's shape and (unless `out_dtype`) dtype.
    """
    if accumulate_dtype not in (torch.float32, torch.float64):
        raise MixingError(f"accumulate_dtype must be torch.float32 or torch.float64, not {accumulate_dtype}")
    if out_dtype is not None and not out_dtype.is_floating_point:
        raise MixingError(f"out_dtype must be a floating point dtype, not {out_dtype}")
    names = sorted(plan)
    in_specs = {n: ref_specs[n] for n in names}
    out_specs: Dict[str, TensorSpec] = {}
    for n in names:
        spec = in_specs[n]
        if spec.is_floating_point and out_dtype is not None:
            spec = TensorSpec(dtype_name(out_dtype), spec.shape)
        out_specs[n] = spec

    bn = [n for n in names if in_specs[n].is_floating_point and n.rsplit(".", 1)[-1] in _BN_STATS]
    if bn:
        shown = ", ".join(bn[:4]) + (f" and {len(bn) - 4} more" if len(bn) > 4 else "")
        warnings.append(_BN_HINT.format(names=shown))
    for w in warnings:
        logger.warning(w)

    # The accumulator (and the cast output) live in buffers sized for the largest chunk, reused by every tensor.
    def chunk_numel(n: str) -> int:
        spec = in_specs[n]
        rows = _row_chunks(spec)[0]
        return spec.numel if rows is None else spec.numel // spec.shape[0] * (rows[1] - rows[0])

    float_names = [n for n in names if in_specs[n].is_floating_point]
    largest = max((chunk_numel(n) for n in float_names), default=0)
    acc_buf = torch.empty(largest, dtype=accumulate_dtype)
    out_buf: Dict[torch.dtype, torch.Tensor] = {}

    used = sorted({i for terms in plan.values() for i, _, _ in terms})
    budget = max(_MIN_SOURCE_BUDGET, _MAPPED_BUDGET // max(len(used), 1))
    sources = {i: _Source(weights[i], budget) for i in used}
    total_read = sum(weights[i].specs[s].nbytes for n in names for i, s, w in plan[n] if w != 0 or not in_specs[n].is_floating_point)
    hasher = TensorHasher()
    num_bytes = 0
    try:
        with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
            with ShardedSafetensorsWriter(tmp, out_specs, max_shard_size,
                                          total_parameters=_total_parameters(weights, out_specs)) as writer, _progress_bar(
                total=total_read, desc="Mixing", unit="B", disable=None if progress else True
            ) as bar:
                for n in names:
                    terms = plan[n]
                    hasher.begin(n, out_specs[n])
                    if not in_specs[n].is_floating_point:
                        value = _equal_across(n, terms, sources, weights)
                        writer.write(n, value)
                        hasher.update(value)
                        bar.update(value.nbytes * len(terms))
                        num_bytes += value.nbytes
                        del value
                        continue
                    offset = 0
                    live = [t for t in terms if t[2] != 0]
                    if not live:
                        raise MixingError(f"tensor {n}: every ingredient has weight 0")
                    for rows in _row_chunks(in_specs[n]):
                        acc = _accumulate(n, rows, live, sources, weights, in_specs[n], acc_buf, bar)
                        out = acc
                        if out_specs[n].torch_dtype != accumulate_dtype:
                            dt = out_specs[n].torch_dtype
                            if dt not in out_buf:
                                out_buf[dt] = torch.empty(largest, dtype=dt)
                            out = out_buf[dt][: acc.numel()].view(acc.shape)
                            out.copy_(acc)
                            if not _is_finite(out):
                                raise NonFiniteError(
                                    f"tensor {n}: the average overflows {dt} (values beyond its range)",
                                    hint="keep a wider out_dtype (e.g. torch.float32 or torch.bfloat16)",
                                )
                        writer.write(n, out, offset)
                        hasher.update(out)
                        offset += out.numel() * out.element_size()
                    num_bytes += offset
                files = writer.finish()
            if copy_files_from is not None:
                files += _copy_side_files(Path(copy_files_from), tmp, out_dtype)
    finally:
        for s in sources.values():
            s.close()
    return MixResult(
        output_dir=Path(output_dir),
        tensor_hash=hasher.hexdigest(),
        num_tensors=len(names),
        num_bytes=num_bytes,
        files=sorted(files),
        warnings=warnings,
    )


def _total_parameters(weights: Sequence[_Weights], out_specs: Mapping[str, TensorSpec]) -> int:
    """The index's ``total_parameters``: the ingredients' own (same architecture) when an index records it."""
    from .writer import count_parameters, read_index_metadata

    counted = count_parameters(out_specs)
    for w in weights:
        recorded = read_index_metadata(w.folder).get("total_parameters")
        if isinstance(recorded, int) and set(w.specs) == set(out_specs):
            return recorded
    return counted


def _accumulate(
    name: str,
    rows: Optional[Tuple[int, int]],
    terms: Sequence[_Term],
    sources: Mapping[int, _Source],
    weights: Sequence[_Weights],
    spec: TensorSpec,
    acc_buf: torch.Tensor,
    bar: Any,
) -> torch.Tensor:
    """sum_i w_i * t_i for one tensor (or rows of it), in the accumulator buffer."""
    shape = list(spec.shape)
    if rows is not None:
        shape[0] = rows[1] - rows[0]
    acc = acc_buf[: math.prod(shape)].view(shape)
    for k, (i, src_name, w) in enumerate(terms):
        t = sources[i].read(src_name, rows)
        if k == 0:
            if w == 1.0:
                acc.copy_(t)  # a lone ingredient (or weight 1) is copied exactly
            elif t.dtype == acc.dtype:
                torch.mul(t, w, out=acc)  # one pass instead of copy + scale
            else:
                acc.copy_(t)  # exact up-cast first, so that the product is computed in the accumulator's dtype
                acc.mul_(w)
        else:
            acc.add_(t, alpha=w)  # in place: no temporary, mixed dtypes are cast inside the kernel
        bar.update(t.numel() * t.element_size())
        del t
        sources[i].release()
    if not _is_finite(acc):
        _raise_non_finite(name, rows, terms, sources, weights)
    return acc


def _raise_non_finite(
    name: str, rows: Optional[Tuple[int, int]], terms: Sequence[_Term], sources: Mapping[int, _Source], weights: Sequence[_Weights]
) -> None:
    # Only on the error path: find which ingredients hold the NaN/Inf (weights are >= 0, so any NaN/Inf in an
    # ingredient with a positive weight makes the sum non-finite; a finite sum means no ingredient had one).
    bad = []
    for i, src_name, _ in terms:
        t = sources[i].read(src_name, rows)
        if not _is_finite(t):
            kinds = [k for k, hit in (("NaN", bool(torch.isnan(t).any())), ("Inf", bool(torch.isinf(t).any()))) if hit]
            bad.append(f"{weights[i].label} ({'/'.join(kinds)})")
        del t
        sources[i].release()
    if bad:
        raise NonFiniteError(
            f"tensor {name} has non-finite values in {', '.join(bad)}",
            candidate=None if len(bad) > 1 else bad[0].rsplit(" (", 1)[0],
            hint="this checkpoint is broken (diverged training?); drop it from the soup",
        )
    raise NonFiniteError(
        f"tensor {name}: the weighted sum overflows the accumulator",
        hint="use accumulate_dtype=torch.float64 or smaller weights",
    )


def _equal_across(
    name: str, terms: Sequence[_Term], sources: Mapping[int, _Source], weights: Sequence[_Weights]
) -> torch.Tensor:
    """A non-floating tensor: must be bit-equal in every ingredient; returned (copied out of the mapping)."""
    first_i, first_name, _ = terms[0]
    ref = sources[first_i].read(first_name).clone()
    sources[first_i].release()
    differ = []
    for i, src_name, _ in terms[1:]:
        t = sources[i].read(src_name)
        if not torch.equal(t, ref):
            differ.append(weights[i].label)
        del t
        sources[i].release()
    if differ:
        raise MixingError(
            f"non-floating tensor {name} ({ref.dtype}) differs between {weights[first_i].label} and "
            f"{', '.join(differ)}; integer buffers (position ids, masks, num_batches_tracked) are never averaged",
            hint="these ingredients do not share the same architecture/buffers; check their configs, "
            "or make the buffer equal before souping (e.g. reset num_batches_tracked)",
        )
    return ref


def _copy_side_files(src: Path, dst: Path, out_dtype: Optional[torch.dtype] = None) -> List[str]:
    """Copy config, tokenizer, generation config and other side files of a model folder into `dst`.

    Not copied: weights (``*.safetensors``, ``*.bin``, indexes, ...), ``README.md`` and ``soup.json`` (a soup
    writes its own), hidden files and Trainer ``checkpoint-*/`` folders. With `out_dtype`, config.json's dtype
    is updated to it.

    Returns:
        The copied files, relative to `dst`, sorted.
    """
    copied: List[str] = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or any(p.startswith(".") for p in rel.parts):
            continue
        # Trainer output folders hold checkpoint-*/ subfolders: not part of the model.
        if any(p.startswith("checkpoint-") for p in rel.parts[:-1]):
            continue
        if rel.name in _NOT_COPIED or rel.name.endswith(_WEIGHT_SUFFIXES):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)
        copied.append(rel.as_posix())
    config = dst / "config.json"
    if out_dtype is not None and config.is_file():
        data = json.loads(config.read_text())
        for key in ("dtype", "torch_dtype"):  # transformers >= 4.56 writes "dtype", older "torch_dtype"
            if key in data:
                data[key] = str(out_dtype).replace("torch.", "")
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return copied


def mix(
    sources: Sequence[PathLike],
    weights: Sequence[float],
    output_dir: PathLike,
    *,
    accumulate_dtype: torch.dtype = torch.float32,
    out_dtype: Optional[torch.dtype] = None,
    max_shard_size: Union[int, str] = "5GB",
    overwrite: bool = False,
    names: Optional[Sequence[str]] = None,
    copy_files_from: Optional[PathLike] = None,
    progress: bool = True,
) -> MixResult:
    """Write the weighted sum ``sum_i weights[i] * sources[i]`` of safetensors checkpoints, streaming.

    Every tensor name (in sorted order) is read from each ingredient in turn with `safe_open` (large tensors
    by chunks of rows), accumulated in `accumulate_dtype` (``acc.add_(t, alpha=w)``), cast to `out_dtype`
    or the ingredients' dtype, and written at its place in its shard. Same inputs, same bytes out.

    - Weights are not normalised (the caller's job; a warning is added when they do not sum to 1).
      An ingredient with weight 0 is checked (headers, integer tensors) but its floating tensors are not read.
    - Non-floating tensors (position ids, masks, ``num_batches_tracked``) are never averaged: they must be
      bit-equal across ingredients and are copied.
    - Names absent from the files (tied weights dropped by `save_pretrained`) stay absent; tensors identical
      in every ingredient come out identical.
    - BatchNorm ``running_mean``/``running_var`` are averaged, with a warning saying how to re-estimate them.

    Args:
        sources: local folders with ``model.safetensors`` or an index and shards.
        weights: one finite non-negative weight per source, summing to more than 0.
        output_dir: the folder to write (created atomically: a temporary folder renamed at the end).
        accumulate_dtype: ``torch.float32`` (default) or ``torch.float64``.
        out_dtype: dtype of the floating output tensors (default: the ingredients' dtype).
        max_shard_size: largest shard, as in `save_pretrained` (``"5GB"``, ``"500MB"`` or bytes).
        overwrite: replace a non-empty `output_dir` (atomically).
        names: human names of the sources for messages (e.g. candidate refs); default their paths.
        copy_files_from: copy config, tokenizer, generation config... (everything but weights, README.md,
            soup.json and hidden files) from this folder; with `out_dtype`, config.json's dtype is updated.
        progress: show a progress bar (bytes read).

    Returns:
        A :class:`MixResult`.

    Raises:
        MixingError: bad weights; tensor names, shapes or dtypes that differ (all listed); integer tensors
            that differ.
        NonFiniteError: NaN/Inf in an ingredient (named) or in the result.
        InvalidWeightsError: a source without readable safetensors weights.
        OutputExistsError: `output_dir` is not empty and `overwrite` is False.

    Example:
        >>> mix(["run-a", "run-b", "run-c"], [1 / 3] * 3, "soup/", copy_files_from="run-a")  # doctest: +SKIP
        MixResult(output_dir=PosixPath('soup'), tensor_hash='9f2c...', num_tensors=201, ...)
    """
    if not sources:
        raise MixingError("no ingredients to mix")
    labels = [str(s) for s in sources] if names is None else [str(n) for n in names]
    if len(labels) != len(sources):
        raise MixingError(f"{len(labels)} names for {len(sources)} ingredients")
    ws = _check_weights(weights, labels)
    folders = [_Weights(s, label) for s, label in zip(sources, labels)]
    diffs = _spec_differences([f.specs for f in folders], labels)
    if diffs:
        raise MixingError(
            "the ingredients' tensors do not match:\n  " + "\n  ".join(diffs),
            hint="all ingredients must be fine-tunes of one architecture (run `hf-soups verify`)",
        )
    warnings: List[str] = []
    if abs(sum(ws) - 1.0) > 1e-6:
        warnings.append(f"the weights sum to {sum(ws):.6g}, not 1: the result is a weighted sum, not an average")
    plan = {n: [(i, n, w) for i, w in enumerate(ws)] for n in folders[0].specs}
    return _mix_plan(
        folders,
        plan,
        folders[0].specs,
        output_dir,
        accumulate_dtype=accumulate_dtype,
        out_dtype=out_dtype,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        copy_files_from=copy_files_from,
        progress=progress,
        warnings=warnings,
    )


copy_side_files = _copy_side_files


# --------------------------------------------------------------------------------------------- interpolation

_FROM_FINETUNE: Any = object()


def match_names(
    base_names: Iterable[str], target_names: Iterable[str], prefix: Optional[str] = None
) -> Dict[str, str]:
    """Map tensor names of a target model to those of a base model saved with or without its task wrapper.

    A backbone saved as `BertModel` has names like ``embeddings.word_embeddings.weight``; a fine-tune saved as
    `BertForSequenceClassification` has ``bert.embeddings.word_embeddings.weight``: the class's
    `base_model_prefix` (``bert``) followed by a dot. Both directions are handled.

    Args:
        base_names: tensor names of the base.
        target_names: tensor names of the target (e.g. the fine-tune).
        prefix: the `base_model_prefix`; inferred from the names when None (the first name component that
            turns the most unmatched names into matches).

    Returns:
        target name -> base name, for every target name that has a counterpart (new heads are left out).

    Example:
        >>> match_names(["embeddings.w", "pooler.b"], ["bert.embeddings.w", "bert.pooler.b", "classifier.w"])
        {'bert.embeddings.w': 'embeddings.w', 'bert.pooler.b': 'pooler.b'}
    """
    base = set(base_names)
    targets = list(target_names)
    if prefix is None:
        prefix = _infer_prefix(base, targets)
    mapping: Dict[str, str] = {}
    for t in targets:
        if t in base:
            mapping[t] = t
        elif prefix and t.startswith(prefix + ".") and t[len(prefix) + 1 :] in base:
            mapping[t] = t[len(prefix) + 1 :]
        elif prefix and f"{prefix}.{t}" in base:
            mapping[t] = f"{prefix}.{t}"
    return mapping


def _infer_prefix(base: set, targets: List[str]) -> Optional[str]:
    counts: Dict[str, int] = {}
    tset = set(targets)
    for names, other in ((targets, base), (base, tset)):
        for n in names:
            head, _, rest = n.partition(".")
            if n not in other and rest and rest in other:
                counts[head] = counts.get(head, 0) + 1
    return max(sorted(counts), key=lambda p: counts[p]) if counts else None


def _config_prefix(folder: Path) -> Optional[str]:
    """The `base_model_prefix` of the folder's architecture (else its `model_type`), from config.json."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for arch in config.get("architectures") or []:
        try:
            import transformers

            prefix = getattr(getattr(transformers, arch, None), "base_model_prefix", None)
        except Exception:  # an optional nicety: a broken transformers import must not stop a merge
            prefix = None
        if prefix:
            return str(prefix)
    return config.get("model_type")


def interpolate(
    base_folder: PathLike,
    finetuned_folder: PathLike,
    alpha: float,
    output_dir: PathLike,
    *,
    prefix: Optional[str] = None,
    names: Optional[Sequence[str]] = None,
    accumulate_dtype: torch.dtype = torch.float32,
    out_dtype: Optional[torch.dtype] = None,
    max_shard_size: Union[int, str] = "5GB",
    overwrite: bool = False,
    copy_files_from: Optional[PathLike] = _FROM_FINETUNE,
    progress: bool = True,
) -> MixResult:
    """WiSE-FT: write ``(1 - alpha) * base + alpha * finetuned``, a 2-ingredient :func:`mix`.

    The output has the fine-tune's tensors (names, shapes, dtypes). Its tensors are matched to the base's
    with :func:`match_names` (a base saved without the task wrapper, ``embeddings.x`` vs ``bert.embeddings.x``,
    is handled through the `base_model_prefix` of the config, else inferred from the names).
    Tensors the base lacks (a new classification head) are copied from the fine-tune unchanged, whatever
    `alpha` (listed in `MixResult.warnings`); base tensors the fine-tune lacks are dropped. Matched tensors
    must have equal shapes; their floating dtypes may differ (accumulation is in `accumulate_dtype`).
    ``alpha=0`` gives the base's values exactly, ``alpha=1`` the fine-tune's.

    Args:
        base_folder: the pre-trained weights.
        finetuned_folder: the fine-tuned weights.
        alpha: in [0, 1]; the fine-tune's weight.
        output_dir: the folder to write.
        prefix: the `base_model_prefix` to strip/add when matching names (default: from config / names).
        names: human names of (base, fine-tune) for messages.
        accumulate_dtype, out_dtype, max_shard_size, overwrite, progress: as in :func:`mix`.
        copy_files_from: side files to copy (default: the fine-tune's folder; None: none).

    Returns:
        A :class:`MixResult`.

    Raises:
        MixingError: alpha outside [0, 1], matched tensors of different shapes, integer tensors that differ.
        NonFiniteError, InvalidWeightsError, OutputExistsError: as in :func:`mix`.

    Example:
        >>> for a in (0.25, 0.5, 0.75):  # doctest: +SKIP
        ...     interpolate("bert-base/", "bert-sst2/", a, f"wise-{a}/")
    """
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise MixingError(f"alpha {alpha!r} is not a number") from None
    if not (0.0 <= alpha <= 1.0):
        raise MixingError(f"alpha must be in [0, 1], got {alpha}")
    labels = list(names) if names is not None else [str(base_folder), str(finetuned_folder)]
    base, ft = _Weights(base_folder, labels[0]), _Weights(finetuned_folder, labels[1])
    mapping = match_names(base.specs, ft.specs)
    config_prefix = prefix if prefix is not None else _config_prefix(Path(finetuned_folder))
    if config_prefix:
        by_config = match_names(base.specs, ft.specs, prefix=config_prefix)
        if prefix is not None or len(by_config) >= len(mapping):
            mapping = by_config
    if not mapping:
        raise MixingError(
            f"no tensor of {labels[1]} matches a tensor of {labels[0]}",
            hint="is this fine-tune really from this base? pass prefix= if the names use another prefix",
        )
    bad = [
        f"{t}: {labels[1]} {ft.specs[t].dtype}{list(ft.specs[t].shape)} vs {labels[0]} {base.specs[b].dtype}{list(base.specs[b].shape)}"
        for t, b in sorted(mapping.items())
        if ft.specs[t].shape != base.specs[b].shape
        or ft.specs[t].is_floating_point != base.specs[b].is_floating_point
        or (not ft.specs[t].is_floating_point and ft.specs[t].dtype != base.specs[b].dtype)
    ]
    if bad:
        raise MixingError("base and fine-tune tensors do not match:\n  " + "\n  ".join(bad[:20]))
    new = sorted(set(ft.specs) - set(mapping))
    warnings = []
    if new:
        shown = ", ".join(new[:6]) + (f" and {len(new) - 6} more" if len(new) > 6 else "")
        warnings.append(f"{len(new)} tensors absent from the base were copied from the fine-tune unchanged: {shown}")
    dropped = len(base.specs) - len(set(mapping.values()))
    if dropped:
        logger.info("%d tensors of the base are not in the fine-tune and were left out", dropped)
    plan: Dict[str, List[_Term]] = {
        t: ([(0, mapping[t], 1.0 - alpha), (1, t, alpha)] if t in mapping else [(1, t, 1.0)]) for t in ft.specs
    }
    return _mix_plan(
        [base, ft],
        plan,
        ft.specs,
        output_dir,
        accumulate_dtype=accumulate_dtype,
        out_dtype=out_dtype,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        copy_files_from=finetuned_folder if copy_files_from is _FROM_FINETUNE else copy_files_from,
        progress=progress,
        warnings=warnings,
    )


# --------------------------------------------------------------------------------------------- hashing


def tensor_hash(folder_or_state_dict: Union[PathLike, Mapping[str, torch.Tensor]]) -> str:
    """A sha256 of tensor contents: sorted names, dtypes, shapes and raw bytes.

    The same for the same tensors however they are sharded or laid out in the files, and whatever the
    safetensors metadata; a state dict hashes like the folder `write_state_dict` makes of it (aliases of a
    tied tensor count once). Bytes are hashed as stored: ``-0.0`` and ``0.0`` differ, so do NaN payloads.

    Args:
        folder_or_state_dict: a weights folder (single file or shards), or a name -> tensor mapping.

    Returns:
        The hex digest.

    Example:
        >>> tensor_hash("soup/") == tensor_hash(load_file("soup/model.safetensors"))  # doctest: +SKIP
        True
    """
    from .writer import _drop_aliases

    hasher = TensorHasher()
    if isinstance(folder_or_state_dict, Mapping):
        state_dict = _drop_aliases(folder_or_state_dict, None)
        for n in sorted(state_dict):
            t = state_dict[n].detach().to("cpu").contiguous()
            hasher.begin(n, TensorSpec.of(t))
            hasher.update(t)
        return hasher.hexdigest()
    weights = _Weights(folder_or_state_dict)
    source = _Source(weights, _MAPPED_BUDGET)
    try:
        for n in sorted(weights.specs):
            hasher.begin(n, weights.specs[n])
            for rows in _row_chunks(weights.specs[n]):
                t = source.read(n, rows)
                hasher.update(t.contiguous())
                del t
                source.release()
    finally:
        source.close()
    return hasher.hexdigest()


# --------------------------------------------------------------------------------------------- greedy soups


def _target_tensors(target: Union[torch.nn.Module, Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    if isinstance(target, torch.nn.Module):
        # keep_vars: the live Parameter/buffer objects, so that copy_ writes into the module.
        return {k: v.detach() for k, v in target.state_dict(keep_vars=True).items()}
    return {k: v.detach() for k, v in target.items()}


class RunningSum:
    """A float32 running sum of accepted ingredients, for greedy soups: one model's memory, no reloading.

    The sum starts empty (``count == 0``); `reference_folder` fixes which tensors are tracked and their
    shapes/dtypes, and every folder added or tried must match it. :meth:`trial_into` writes the average of
    the accepted set plus one candidate straight into a live model, so a trial costs one read of the
    candidate, not a model load.

    Args:
        reference_folder: a weights folder whose tensors define the layout (usually the best ingredient).
        names: the tensor names to track (default: all of the reference's).
        accumulate_dtype: ``torch.float32`` (default) or ``torch.float64``.

    Example:
        >>> rs = RunningSum(ranked[0]); rs.add(ranked[0])  # doctest: +SKIP
        >>> for cand in ranked[1:]:
        ...     rs.trial_into(model, cand)
        ...     if evaluate(model) >= best:
        ...         rs.add(cand)
        >>> rs.load_into(model)
    """

    def __init__(
        self,
        reference_folder: PathLike,
        names: Optional[Iterable[str]] = None,
        *,
        accumulate_dtype: torch.dtype = torch.float32,
    ) -> None:
        if accumulate_dtype not in (torch.float32, torch.float64):
            raise MixingError(f"accumulate_dtype must be torch.float32 or torch.float64, not {accumulate_dtype}")
        ref = _Weights(reference_folder)
        specs = ref.specs
        if names is not None:
            wanted = sorted(set(names))
            unknown = [n for n in wanted if n not in specs]
            if unknown:
                raise MixingError(f"{len(unknown)} names are not in {reference_folder}: {unknown[:5]}")
            specs = {n: specs[n] for n in wanted}
        self.specs: Dict[str, TensorSpec] = {n: specs[n] for n in sorted(specs)}
        self.accumulate_dtype = accumulate_dtype
        self._sum: Dict[str, torch.Tensor] = {}
        self._fixed: Dict[str, torch.Tensor] = {}
        self._count = 0
        self._total = 0.0

    @property
    def count(self) -> int:
        """How many ingredients were added."""
        return self._count

    @property
    def total_weight(self) -> float:
        """The sum of the weights added (== count with the default weight 1)."""
        return self._total

    def _open(self, folder: PathLike, label: Optional[str]) -> _Source:
        weights = _Weights(folder, label)
        diffs = _spec_differences([self.specs, {n: s for n, s in weights.specs.items() if n in self.specs}],
                                  ["the reference", weights.label])
        if diffs:
            raise MixingError(f"{weights.label} does not match the running sum:\n  " + "\n  ".join(diffs))
        return _Source(weights, _MAPPED_BUDGET)

    def _check_fixed(self, n: str, t: torch.Tensor, label: str) -> None:
        if n in self._fixed and not torch.equal(self._fixed[n], t):
            raise MixingError(f"non-floating tensor {n} of {label} differs from the accepted ingredients'", candidate=label)

    def _scan(self, source: _Source, label: str) -> None:
        for n, spec in self.specs.items():
            for rows in _row_chunks(spec) if spec.is_floating_point else [None]:
                t = source.read(n, rows)
                if spec.is_floating_point and not _is_finite(t):
                    raise NonFiniteError(f"tensor {n} of {label} has NaN or Inf values", candidate=label)
                if not spec.is_floating_point:
                    self._check_fixed(n, t, label)
                del t
                source.release()

    def add(self, folder: PathLike, weight: float = 1.0, *, name: Optional[str] = None) -> None:
        """Add ``weight * folder`` to the sum.

        The folder is checked in full (layout, NaN/Inf, integer tensors) before the sum changes, so a
        failed add leaves the sum as it was (it costs a second read of the folder).

        Raises:
            MixingError: another layout, a non-positive weight, integer tensors that differ.
            NonFiniteError: NaN/Inf in the folder.
        """
        label = name or str(folder)
        (w,) = _check_weights([weight], [label])
        source = self._open(folder, label)
        try:
            self._scan(source, label)
            for n, spec in self.specs.items():
                if not spec.is_floating_point:
                    if n not in self._fixed:
                        self._fixed[n] = source.read(n).clone()
                        source.release()
                    continue
                acc = self._sum.get(n)
                if acc is None:
                    acc = self._sum[n] = torch.zeros(spec.shape, dtype=self.accumulate_dtype)
                for rows in _row_chunks(spec):
                    t = source.read(n, rows)
                    (acc if rows is None else acc[rows[0] : rows[1]]).add_(t, alpha=w)
                    del t
                    source.release()
        finally:
            source.close()
        self._count += 1
        self._total += w

    def _resolve(self, target: Union[torch.nn.Module, Mapping[str, torch.Tensor]]) -> Dict[str, List[torch.Tensor]]:
        tensors = _target_tensors(target)
        mapping = match_names(self.specs, tensors)
        out: Dict[str, List[torch.Tensor]] = {}
        for tname, n in mapping.items():
            out.setdefault(n, []).append(tensors[tname])
        missing = [n for n in self.specs if n not in out]
        wrong = [n for n, ts in out.items() if any(tuple(t.shape) != self.specs[n].shape for t in ts)]
        if missing or wrong:
            raise MixingError(
                f"the model does not fit the running sum: {len(missing)} tensors missing (e.g. {missing[:3]}), "
                f"{len(wrong)} of another shape (e.g. {wrong[:3]})"
            )
        return out

    def _write(self, targets: Dict[str, List[torch.Tensor]], extra: Optional[_Source], w: float, label: str) -> None:
        denom = self._total + w
        with torch.no_grad():
            for n, spec in self.specs.items():
                if not spec.is_floating_point:
                    value = self._fixed.get(n)
                    if extra is not None:
                        t = extra.read(n)
                        self._check_fixed(n, t, label)
                        value = t.clone()
                        extra.release()
                    for tgt in targets[n]:
                        tgt.copy_(value)
                    continue
                acc = self._sum.get(n, torch.zeros(spec.shape, dtype=self.accumulate_dtype))
                for rows in _row_chunks(spec):
                    part = acc if rows is None else acc[rows[0] : rows[1]]
                    if extra is not None:
                        t = extra.read(n, rows)
                        if not _is_finite(t):
                            raise NonFiniteError(f"tensor {n} of {label} has NaN or Inf values", candidate=label)
                        value = torch.add(part, t, alpha=w).div_(denom)
                        del t
                        extra.release()
                    else:
                        value = part / denom
                    for tgt in targets[n]:
                        (tgt if rows is None else tgt[rows[0] : rows[1]]).copy_(value)

    def trial_into(
        self,
        model_or_state_dict_params: Union[torch.nn.Module, Mapping[str, torch.Tensor]],
        extra_folder: PathLike,
        *,
        weight: float = 1.0,
        name: Optional[str] = None,
    ) -> None:
        """Write ``(sum + weight * extra) / (total_weight + weight)`` into a live model, in place.

        Parameters and buffers are matched by state-dict name (:func:`match_names`, so a sum of `BertModel`
        weights fills a `BertForSequenceClassification` backbone); tensors of the model that the sum does not
        track (tied copies, a head left out with `names`) are left alone. The running sum is not changed.
        After an error, the model's values are unspecified (partly written).

        Args:
            model_or_state_dict_params: a `torch.nn.Module`, or name -> live tensor (e.g. ``model.state_dict()``).
            extra_folder: the candidate's weights folder.
            weight: the candidate's weight.
            name: the candidate's name for messages.

        Raises:
            MixingError: the model or the candidate does not fit the sum.
            NonFiniteError: NaN/Inf in the candidate.
        """
        label = name or str(extra_folder)
        (w,) = _check_weights([weight], [label])
        targets = self._resolve(model_or_state_dict_params)
        source = self._open(extra_folder, label)
        try:
            self._write(targets, source, w, label)
        finally:
            source.close()

    def load_into(self, module: Union[torch.nn.Module, Mapping[str, torch.Tensor]]) -> None:
        """Write the current average into a live model, in place (see :meth:`trial_into`)."""
        if self._count == 0:
            raise MixingError("the running sum is empty: add an ingredient first")
        self._write(self._resolve(module), None, 0.0, "")

    def average(self) -> Dict[str, torch.Tensor]:
        """The current average as a new state dict, in the reference's dtypes (one more model in memory)."""
        if self._count == 0:
            raise MixingError("the running sum is empty: add an ingredient first")
        out: Dict[str, torch.Tensor] = {}
        for n, spec in self.specs.items():
            out[n] = self._fixed[n].clone() if not spec.is_floating_point else (self._sum[n] / self._total).to(spec.torch_dtype)
        return out


__all__ = [
    "MixResult",
    "copy_side_files",
    "RunningSum",
    "TensorSpec",
    "interpolate",
    "match_names",
    "mix",
    "read_tensor_specs",
    "tensor_hash",
    "write_state_dict",
]
