"""Safetensors output: tensor specs, a streaming sharded writer, an atomic output folder, a content hash.

What is here and why it is not a library call:

- :func:`plan_shards` is `huggingface_hub.split_state_dict_into_shards_factory` (what
  `split_torch_state_dict_into_shards`, and so `save_pretrained`, use) run over the specs, so the shard
  boundaries and file names are exactly those of `save_pretrained` (``model.safetensors`` or
  ``model-00001-of-0000N.safetensors``) without any weight in memory.
- :class:`ShardedSafetensorsWriter` writes the safetensors format by hand (8-byte header length, JSON header,
  raw little-endian bytes). `safetensors.torch.save_file` needs every tensor of a shard in memory at once
  (a 5 GB shard is 5 GB of RAM); since the header only needs names, dtypes and shapes, which are known before
  any value is computed, we write the header first and then each tensor's bytes at its offset as soon as it
  is computed (even chunk by chunk). Memory: one tensor (or chunk), whatever the shard size.
  The files are read back by `safe_open` / `load_file` / `from_pretrained` (tests check it).
- :func:`atomic_output_dir` writes into a temporary folder next to the output and renames it into place, so
  an interrupted run never leaves a half-written soup; `save_pretrained` writes in place.
- :class:`TensorHasher` is the one definition of :func:`~hf_soups.mixing.tensor_hash`'s byte stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch

from .errors import InvalidWeightsError, OutputExistsError
from .progress import get_logger

logger = get_logger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

#: safetensors dtype names (as written in file headers) and their torch dtypes.
SAFETENSORS_DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in [("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")]:
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)
_TORCH_TO_NAME = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.float32`` -> ``"F32"``).

    Raises:
        InvalidWeightsError: the dtype has no safetensors name.
    """
    try:
        return _TORCH_TO_NAME[dtype]
    except KeyError:
        raise InvalidWeightsError(f"dtype {dtype} cannot be stored in safetensors") from None


@dataclass(frozen=True)
class TensorSpec:
    """What a safetensors header says about one tensor.

    Attributes:
        dtype: the safetensors dtype name (``"F32"``, ``"BF16"``, ``"I64"``, ...), as in
            `huggingface_hub`'s `TensorInfo`.
        shape: the shape.
    """

    dtype: str
    shape: Tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype (raises InvalidWeightsError for a dtype torch does not have)."""
        try:
            return SAFETENSORS_DTYPES[self.dtype]
        except KeyError:
            raise InvalidWeightsError(f"unsupported safetensors dtype {self.dtype!r}") from None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_floating_point(self) -> bool:
        return self.torch_dtype.is_floating_point

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorSpec":
        """The spec of an in-memory tensor."""
        return cls(dtype_name(tensor.dtype), tuple(tensor.shape))


_BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def count_parameters(specs: Mapping[str, TensorSpec]) -> int:
    """How many parameters `save_pretrained` would report for these tensors (``model.num_parameters()``).

    Parameters are the floating tensors; the buffers that models persist (BatchNorm statistics, integer
    position ids and counters) are not. Tied parameters are stored once, so they count once.
    """
    return sum(spec.numel for name, spec in specs.items()
               if spec.is_floating_point and not name.endswith(_BUFFER_SUFFIXES))


def read_index_metadata(folder: Union[str, Path]) -> Dict[str, Any]:
    """The ``metadata`` of a folder's ``model.safetensors.index.json`` ({} when there is no index)."""
    path = Path(folder) / WEIGHTS_INDEX_NAME
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("metadata") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def plan_shards(specs: Mapping[str, TensorSpec], max_shard_size: Union[int, str]) -> Dict[str, List[str]]:
    """Assign tensors to shard files exactly as `save_pretrained` does, from specs alone.

    Args:
        specs: tensor name -> spec, in the order the tensors will be produced.
        max_shard_size: the largest shard, in bytes or as a string (``"5GB"``, ``"500MB"``).

    Returns:
        Shard file name -> tensor names in it (one ``model.safetensors`` when everything fits).
    """
    from huggingface_hub import constants, split_state_dict_into_shards_factory

    # The generic splitter behind `split_torch_state_dict_into_shards`, with the specs' sizes: the same shard
    # boundaries and file names, without building tensors (the torch version also imports
    # torch.distributed.tensor on first use, ~1-2 s). Aliases were removed before (see write_state_dict).
    split = split_state_dict_into_shards_factory(
        dict(specs),
        get_storage_size=lambda spec: spec.nbytes,
        get_storage_id=lambda spec: None,
        filename_pattern=constants.SAFETENSORS_WEIGHTS_FILE_PATTERN,
        max_shard_size=max_shard_size,
    )
    return {fname: list(names) for fname, names in split.filename_to_tensors.items()}


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (little-endian, as safetensors stores it)."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


class TensorHasher:
    """The byte stream of :func:`~hf_soups.mixing.tensor_hash`: sha256 over tensors in sorted-name order.

    For each tensor: ``name NUL dtype NUL shape(comma-separated) NUL nbytes LF`` then its raw little-endian
    bytes. The sharding, the file layout and the safetensors metadata do not enter the hash.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._last: Optional[str] = None

    def begin(self, name: str, spec: TensorSpec) -> None:
        """Start a tensor; names must come in increasing order."""
        if self._last is not None and name <= self._last:
            raise ValueError(f"tensors must be hashed in sorted order ({name!r} after {self._last!r})")
        self._last = name
        shape = ",".join(str(d) for d in spec.shape)
        self._h.update(f"{name}\0{spec.dtype}\0{shape}\0{spec.nbytes}\n".encode())

    def update(self, data: Union[torch.Tensor, memoryview, bytes]) -> None:
        """Add raw bytes (a contiguous tensor, or a chunk of one, in order)."""
        self._h.update(_raw_bytes(data) if isinstance(data, torch.Tensor) else data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass
class _Slot:
    file_index: int
    offset: int  # absolute offset in the file of the tensor's first byte
    nbytes: int


class ShardedSafetensorsWriter:
    """Write tensors into safetensors shard files as they are produced, one tensor (or chunk) at a time.

    The shard plan and every header are fixed at construction from the specs; :meth:`write` puts bytes at
    their final offset (``os.pwrite``), so tensors may be written in any order and in chunks. Inside a file,
    tensors are laid out by decreasing item size then name (what `safetensors.torch.save_file` does), so
    every tensor is aligned on its item size.

    Args:
        folder: an existing folder to write into.
        specs: tensor name -> spec of every tensor to write (the shard plan follows this order).
        max_shard_size: see :func:`plan_shards`.
        metadata: safetensors header metadata; ``{"format": "pt"}`` is always set.
        total_parameters: written in the index's metadata when sharded, as transformers' `save_pretrained`
            does (``model.num_parameters()``); default: :func:`count_parameters` of the specs.

    Example:
        >>> with ShardedSafetensorsWriter(tmp, {"w": TensorSpec("F32", (2,))}, "5GB") as w:  # doctest: +SKIP
        ...     w.write("w", torch.ones(2))
        ...     files = w.finish()
    """

    def __init__(
        self,
        folder: Union[str, Path],
        specs: Mapping[str, TensorSpec],
        max_shard_size: Union[int, str] = "5GB",
        metadata: Optional[Mapping[str, str]] = None,
        total_parameters: Optional[int] = None,
    ) -> None:
        if sys.byteorder != "little":  # safetensors is little-endian; we write native bytes
            raise NotImplementedError("writing safetensors on a big-endian machine is not supported")
        self.folder = Path(folder)
        self.specs = dict(specs)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta["format"] = "pt"
        self.plan = plan_shards(self.specs, max_shard_size)
        self.filenames = list(self.plan)
        self._slots: Dict[str, _Slot] = {}
        self._remaining: List[int] = []
        self._fds: Dict[int, int] = {}
        self._written: Dict[str, int] = {}
        for index, (fname, names) in enumerate(self.plan.items()):
            header, data_start, offsets = self._header(names, meta)
            total = 0
            for name in names:
                begin, end = offsets[name]
                self._slots[name] = _Slot(index, data_start + begin, end - begin)
                total += end - begin
            self._remaining.append(total)
            fd = self._open(index)
            _pwrite_all(fd, header, 0)
            if total == 0:
                self._close(index)
        self.total_size = sum(s.nbytes for s in self._slots.values())
        self.total_parameters = count_parameters(self.specs) if total_parameters is None else int(total_parameters)

    def _header(self, names: List[str], meta: Dict[str, str]) -> Tuple[bytes, int, Dict[str, Tuple[int, int]]]:
        layout = sorted(names, key=lambda n: (-self.specs[n].itemsize, n))
        offsets: Dict[str, Tuple[int, int]] = {}
        pos = 0
        for name in layout:
            offsets[name] = (pos, pos + self.specs[name].nbytes)
            pos += self.specs[name].nbytes
        header: Dict[str, Any] = {"__metadata__": meta}
        for name in layout:
            spec = self.specs[name]
            header[name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": list(offsets[name])}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # pad so that the data starts 8-byte aligned, as safetensors does
        return struct.pack("<Q", len(text)) + text, 8 + len(text), offsets

    def _open(self, index: int) -> int:
        fd = os.open(self.folder / self.filenames[index], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._fds[index] = fd
        return fd

    def _close(self, index: int) -> None:
        fd = self._fds.pop(index, None)
        if fd is not None:
            os.close(fd)

    def write(self, name: str, data: torch.Tensor, offset: int = 0) -> None:
        """Write a tensor, or the chunk of it that starts `offset` bytes into it.

        Args:
            name: a tensor name from the specs.
            data: a contiguous CPU tensor of the spec's dtype (its bytes are written as they are).
            offset: byte offset of this chunk inside the tensor.
        """
        slot = self._slots[name]
        raw = _raw_bytes(data)
        if data.dtype != self.specs[name].torch_dtype or offset + raw.nbytes > slot.nbytes:
            raise ValueError(f"{name}: {data.dtype} chunk of {raw.nbytes} bytes at {offset} does not fit its spec")
        fd = self._fds.get(slot.file_index)
        if fd is None:
            raise ValueError(f"{name}: its shard is already complete")
        _pwrite_all(fd, raw, slot.offset + offset)
        self._written[name] = self._written.get(name, 0) + raw.nbytes
        self._remaining[slot.file_index] -= raw.nbytes
        if self._remaining[slot.file_index] == 0:
            self._close(slot.file_index)

    def finish(self) -> List[str]:
        """Check that every byte was written, write the index when sharded; return the file names written."""
        missing = [n for n, s in self._slots.items() if self._written.get(n, 0) != s.nbytes]
        if missing:
            raise ValueError(f"{len(missing)} tensors were not fully written, e.g. {missing[:3]}")
        files = list(self.filenames)
        if len(self.filenames) > 1:
            weight_map = {name: fname for fname, names in self.plan.items() for name in names}
            index = {"metadata": {"total_parameters": self.total_parameters, "total_size": self.total_size},
                     "weight_map": weight_map}
            with open(self.folder / WEIGHTS_INDEX_NAME, "w", encoding="utf-8") as f:
                f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")  # as save_pretrained writes it
            files.append(WEIGHTS_INDEX_NAME)
        return files

    def close(self) -> None:
        for index in list(self._fds):
            self._close(index)

    def __enter__(self) -> "ShardedSafetensorsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _pwrite_all(fd: int, data: Union[bytes, memoryview], offset: int) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


@contextmanager
def atomic_output_dir(output_dir: Union[str, Path], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `output_dir`; rename it into place when the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary folder is removed and `output_dir` is left
    as it was. With `overwrite`, an existing `output_dir` is moved aside, the new folder renamed in, and the
    old one deleted: readers see either the old or the new folder (for an instant, none). A killed process
    (SIGKILL, power loss) can leave a ``.NAME.tmp-*`` folder behind, never a half-written `output_dir`.

    Args:
        output_dir: the final folder.
        overwrite: replace an existing non-empty folder.

    Raises:
        OutputExistsError: `output_dir` exists, is not empty (or is a file) and `overwrite` is False.
    """
    output_dir = Path(output_dir).absolute()
    _check_output(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        yield tmp
        _check_output(output_dir, overwrite)
        if output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old)  # `old` is an empty folder: rename onto it is allowed
            try:
                os.rename(tmp, output_dir)
            except BaseException:
                os.rename(old, output_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.is_file() or output_dir.is_symlink():
        raise OutputExistsError(f"{output_dir} exists and is not a folder", hint="choose another output path")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output folder {output_dir} exists and is not empty",
            hint="choose another folder, empty it, or pass overwrite=True to replace it",
        )


def _drop_aliases(
    state_dict: Mapping[str, torch.Tensor], tied_weights_keys: Optional[Collection[str]]
) -> Dict[str, torch.Tensor]:
    """Drop names that alias another tensor (same storage, offset, shape, strides), like `save_pretrained`.

    transformers (`remove_tied_weights_from_state_dict`) keeps, in each group of aliases, the name that does
    not match the model's `_tied_weights_keys` patterns. Without a model we keep the first name in sorted order
    unless `tied_weights_keys` (names or regex patterns) says which ones are the tied copies.
    """
    groups: Dict[Any, List[str]] = {}
    for name in sorted(state_dict):
        t = state_dict[name]
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        groups.setdefault(key, []).append(name)
    out = dict(state_dict)
    patterns = [re.compile(p) for p in (tied_weights_keys or [])]
    for names in groups.values():
        if len(names) < 2:
            continue
        tied = [n for n in names if any(p.search(n) for p in patterns)]
        keep = next((n for n in names if n not in tied), names[0])
        dropped = [n for n in names if n != keep]
        for n in dropped:
            del out[n]
        logger.info("tied tensors: kept %s, dropped its aliases %s", keep, dropped)
    return out


def write_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    output_dir: Union[str, Path],
    *,
    max_shard_size: Union[int, str] = "5GB",
    metadata: Optional[Mapping[str, str]] = None,
    overwrite: bool = False,
    tied_weights_keys: Optional[Collection[str]] = None,
) -> List[str]:
    """Write an in-memory state dict as `save_pretrained` would (sharded safetensors), atomically.

    Args:
        state_dict: tensor name -> tensor (any device; moved to CPU one at a time).
        output_dir: the folder to create (see :func:`atomic_output_dir`).
        max_shard_size: the largest shard (``"5GB"`` like `save_pretrained`, or bytes).
        metadata: extra safetensors header metadata (``{"format": "pt"}`` is always written).
        overwrite: replace a non-empty existing `output_dir`.
        tied_weights_keys: names/patterns of tied copies to drop (e.g. a model's `_tied_weights_keys`);
            aliased tensors are written once in any case.

    Returns:
        The file names written, relative to `output_dir`.

    Raises:
        OutputExistsError: `output_dir` is not empty and `overwrite` is False.

    Example:
        >>> write_state_dict(model.state_dict(), "out/", max_shard_size="500MB")  # doctest: +SKIP
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
    """
    tensors = _drop_aliases(state_dict, tied_weights_keys)
    names = sorted(tensors)
    specs = {n: TensorSpec.of(tensors[n]) for n in names}
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        with ShardedSafetensorsWriter(tmp, specs, max_shard_size, metadata) as writer:
            for n in names:
                writer.write(n, tensors[n].detach().to("cpu").contiguous())
            return writer.finish()


__all__ = [
    "SAFETENSORS_DTYPES",
    "WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "TensorSpec",
    "TensorHasher",
    "ShardedSafetensorsWriter",
    "atomic_output_dir",
    "count_parameters",
    "dtype_name",
    "plan_shards",
    "write_state_dict",
]
