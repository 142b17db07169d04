"""Benchmark: hf-soups' streaming uniform soup against the usual ways of averaging checkpoints.

For a MiniLM-sized (6 layers, hidden 384) and a BERT-base-sized (12 layers, hidden 768) sequence classifier and
k = 2, 4, 8 ingredients (random perturbations of one random base, written with `save_pretrained` into
``.bench/models/``, once), each method runs in its own process; we record the wall time of the merge step
(measured inside the process, after imports), of the whole process, and the process's peak RSS (``os.wait4``):

- ``hf-soups``: :func:`hf_soups.mixing.mix` (streaming, one tensor of one ingredient at a time);
- ``torch stack``: load every state dict, ``torch.stack(...).mean(0)`` per tensor, ``save_file``;
- ``model-soups``: the reference repository's loop (load each full state dict, running sum), ``save_file``;
- ``mergekit``: mergekit's ``linear`` merge (`run_merge`), installed by this script into a separate venv
  ``.bench/mergekit-venv`` (reusing this venv's torch/transformers; rows are marked absent if it cannot be
  installed);
- ``read floor``: ``cat`` of every input file to /dev/null (no interpreter, no compute, no write).

Also the largest absolute difference between the hf-soups and mergekit outputs (and the torch-stack one).
Every run reads from the page cache (the floor runs first, so inputs are warm for every method alike).
The table replaces the "## Mixing" section of BENCHMARKS.md (with ``--write``).

Usage::

    python scripts/bench_mixing.py --write                       # everything (needs ~5 GB disk, ~8 GB RAM)
    python scripts/bench_mixing.py --sizes minilm --ks 2 4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import REPO, ChildRun, machine_note, markdown_table, report, run_child, write_section  # noqa: E402

BENCH_DIR = REPO / ".bench"
MODELS_DIR = BENCH_DIR / "models"
OUT_DIR = BENCH_DIR / "out"
MERGEKIT_VENV = BENCH_DIR / "mergekit-venv"
MERGEKIT_VERSION = "0.1.5"

SIZES: Dict[str, Dict[str, Any]] = {
    "minilm": dict(label="MiniLM-sized (6 x 384)", num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                   intermediate_size=1536),
    "bert-base": dict(label="BERT-base-sized (12 x 768)", num_hidden_layers=12, hidden_size=768,
                      num_attention_heads=12, intermediate_size=3072),
}
NOISE = 2e-3  # std of each ingredient's perturbation of the base (init std is 0.02)
METHODS = ["hf-soups", "torch stack", "model-soups", "mergekit"]


# ------------------------------------------------------------------------------------------------ workers
# Each runs in its own process: `python bench_mixing.py --worker NAME --out DIR FOLDER...`.


def _load_folder(folder: Path) -> Dict[str, Any]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():
        out: Dict[str, Any] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out.update(load_file(folder / shard))
        return out
    return load_file(folder / "model.safetensors")


def _save(state: Dict[str, Any], out: Path, src: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    shutil.copy2(src / "config.json", out / "config.json")


def worker_import(folders: List[Path], out: Path) -> Dict[str, Any]:
    import hf_soups.mixing  # noqa: F401  (what the hf-soups worker imports, without merging)

    return {}


def worker_hf_soups(folders: List[Path], out: Path) -> Dict[str, Any]:
    from hf_soups.mixing import mix

    k = len(folders)
    t0 = time.perf_counter()
    mix(folders, [1.0 / k] * k, out, copy_files_from=folders[0], progress=False)
    return {"op_s": time.perf_counter() - t0}


_BUCKETS = [  # (label, substrings of cProfile's function names)
    ("read + accumulate (mapped pages, add/scale)", ["'add_'", "'copy_'", "'mul_'", "method mul>", "get_tensor",
                                                     "storage.py", "get_slice"]),
    ("sha256 of the output (provenance hash)", ["_hashlib.HASH"]),
    ("write (pwrite)", ["posix.pwrite"]),
    ("open/close safetensors handles", ["_safe_open", "'__exit__' of 'builtins.safe_open'"]),
    ("NaN/Inf checks", ["aminmax", "isfinite"]),
]


def worker_hf_soups_profile(folders: List[Path], out: Path) -> Dict[str, Any]:
    """hf-soups under cProfile: where its merge time goes (own time of the calls in each bucket)."""
    import cProfile
    import pstats

    from hf_soups.mixing import mix

    k = len(folders)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    mix(folders, [1.0 / k] * k, out, copy_files_from=folders[0], progress=False)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    buckets = {label: 0.0 for label, _ in _BUCKETS}
    for (filename, _, func), (_, _, tottime, _, _) in stats.items():
        name = f"{filename}:{func}"
        for label, keys in _BUCKETS:
            if any(key in name for key in keys):
                buckets[label] += tottime
                break
    buckets["other (Python, headers, ...)"] = max(0.0, total - sum(buckets.values()))
    return {"op_s": total, "breakdown": buckets}


def worker_torch_stack(folders: List[Path], out: Path) -> Dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    states = [_load_folder(f) for f in folders]
    merged = {}
    for name in states[0]:
        if states[0][name].is_floating_point():
            merged[name] = torch.stack([s[name] for s in states]).mean(dim=0)
        else:
            merged[name] = states[0][name]
    _save(merged, out, folders[0])
    return {"op_s": time.perf_counter() - t0}


def worker_model_soups(folders: List[Path], out: Path) -> Dict[str, Any]:
    # mlfoundations/model-soups main.py, recipe 1 (uniform soup), with safetensors instead of torch.load.
    t0 = time.perf_counter()
    n = len(folders)
    soup: Dict[str, Any] = {}
    for j, folder in enumerate(folders):
        state_dict = _load_folder(folder)
        if j == 0:
            soup = {k: (v * (1.0 / n) if v.is_floating_point() else v) for k, v in state_dict.items()}
        else:
            soup = {k: (v * (1.0 / n) + soup[k] if v.is_floating_point() else soup[k]) for k, v in state_dict.items()}
    _save(soup, out, folders[0])
    return {"op_s": time.perf_counter() - t0}


def worker_mergekit(folders: List[Path], out: Path) -> Dict[str, Any]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate({
        "merge_method": "linear",
        "models": [{"model": str(f), "parameters": {"weight": 1.0}} for f in folders],
        "dtype": "float32",
    })
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    t0 = time.perf_counter()
    run_merge(config, str(out), options)
    return {"op_s": time.perf_counter() - t0}


WORKERS = {
    "import": worker_import,
    "hf-soups": worker_hf_soups,
    "hf-soups-profile": worker_hf_soups_profile,
    "torch stack": worker_torch_stack,
    "model-soups": worker_model_soups,
    "mergekit": worker_mergekit,
}


# ------------------------------------------------------------------------------------------------ setup


def generate_models(size: str, k: int) -> List[Path]:
    """The base and k ingredients of `size` under .bench/models (generated once, reused)."""
    spec = SIZES[size]
    folders = [MODELS_DIR / size / f"ingredient-{i}" for i in range(k)]
    stamp = {"size": size, "noise": NOISE, **{key: v for key, v in spec.items() if key != "label"}}
    missing = [f for f in folders if not (f / "model.safetensors").exists()
               or json.loads((f / "bench.json").read_text()) != stamp]
    if not missing:
        return folders
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=2,
                        **{key: v for key, v in spec.items() if key != "label"})
    torch.manual_seed(0)
    base = BertForSequenceClassification(config).eval()
    base_state = {n: t.detach().clone() for n, t in base.state_dict().items()}
    for folder in missing:
        i = int(folder.name.rsplit("-", 1)[1])
        print(f"generating {size} ingredient {i} in {folder}", flush=True)
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, t in base.state_dict().items():
                t.copy_(base_state[name])
                if t.is_floating_point():
                    t.add_(torch.randn(t.shape, generator=gen) * NOISE)
        if folder.exists():
            shutil.rmtree(folder)
        base.save_pretrained(folder)  # model.safetensors (no shards below 5 GB), config.json
        (folder / "bench.json").write_text(json.dumps(stamp))
    return folders


def ensure_mergekit() -> Optional[Path]:
    """The python of .bench/mergekit-venv with mergekit installed, or None (and why, printed)."""
    py = MERGEKIT_VENV / "bin" / "python"
    check = [str(py), "-c", "import mergekit.merge, mergekit.config, mergekit.options"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    print(f"installing mergekit=={MERGEKIT_VERSION} into {MERGEKIT_VENV} (separate venv)", flush=True)
    shutil.rmtree(MERGEKIT_VENV, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base_python, "-m", "venv", str(MERGEKIT_VENV)], check=True, capture_output=True)
        # Reuse this venv's torch/transformers/safetensors (torch is large; same versions as hf-soups runs with):
        # a .pth that adds our site-packages *after* the new venv's own, so mergekit's pins take precedence.
        purelib = sysconfig.get_paths()["purelib"]
        new_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip()
        Path(new_site, "zz_hf_soups_venv.pth").write_text(f"import site; site.addsitedir({purelib!r})\n")
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"mergekit=={MERGEKIT_VERSION}"], check=True,
                       capture_output=True, text=True)
        subprocess.run(check, check=True, capture_output=True, text=True)
    except (subprocess.CalledProcessError, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        print(f"mergekit could not be installed; its rows are marked absent: {str(detail).strip()[-500:]}", flush=True)
        return None
    return py


# ------------------------------------------------------------------------------------------------ measuring


def _tensor_files(folder: Path) -> List[Path]:
    return sorted(folder.glob("*.safetensors"))


def max_abs_diff(a: Path, b: Path) -> Dict[str, Any]:
    """Largest |a - b| over the tensors both folders hold (float64), and the names only one of them has."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> Dict[str, Path]:
        out = {}
        for f in _tensor_files(folder):
            with safe_open(str(f), "pt") as h:
                out.update({n: f for n in h.keys()})
        return out

    ia, ib = index(a), index(b)
    worst, where = 0.0, None
    for name in sorted(set(ia) & set(ib)):
        with safe_open(str(ia[name]), "pt") as ha, safe_open(str(ib[name]), "pt") as hb:
            ta, tb = ha.get_tensor(name), hb.get_tensor(name)
        if ta.shape != tb.shape:
            return {"error": f"{name}: shapes {tuple(ta.shape)} vs {tuple(tb.shape)}"}
        d = float((ta.double() - tb.double()).abs().max()) if ta.numel() else 0.0
        if where is None or d > worst:
            worst, where = d, name
    return {"max_abs_diff": worst, "tensor": where, "only_in_first": sorted(set(ia) - set(ib)),
            "only_in_second": sorted(set(ib) - set(ia)), "compared": len(set(ia) & set(ib))}


def measure(method: str, folders: List[Path], out: Path, python: str, threads: int) -> ChildRun:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [python, str(Path(__file__).resolve()), "--worker", method, "--out", str(out), *map(str, folders)]
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return run_child(cmd, env=env)


def read_floor(folders: List[Path]) -> ChildRun:
    files = [str(p) for f in folders for p in _tensor_files(f)]
    return run_child(["sh", "-c", 'cat "$@" > /dev/null', "sh", *files])


def _fmt_s(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}"


def _fmt_mb(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.0f}"


def _ratio(x: Optional[float], ref: Optional[float]) -> str:
    return "—" if x is None or not ref else f"{x / ref:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--ks", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest is kept")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of every method (OMP_NUM_THREADS; 0: torch's default)")
    ap.add_argument("--no-mergekit", action="store_true", help="skip installing and running mergekit")
    ap.add_argument("--write", action="store_true", help="replace the '## Mixing' section of BENCHMARKS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("folders", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        import safetensors.torch  # noqa: F401  (imports torch: outside every method's timed step)

        result = WORKERS[args.worker]([Path(f) for f in args.folders], Path(args.out))
        report(result)
        return

    command = "python scripts/bench_mixing.py " + " ".join(a for a in sys.argv[1:])
    free_gb = shutil.disk_usage(REPO).free / 2**30
    print(f"{free_gb:.0f} GiB free on {REPO}", flush=True)
    mergekit_py = None if args.no_mergekit else ensure_mergekit()
    mergekit_note = ("mergekit " + MERGEKIT_VERSION + " in .bench/mergekit-venv" if mergekit_py else
                     "mergekit: absent (" + ("--no-mergekit" if args.no_mergekit else "install failed") + ")")
    py = sys.executable

    baseline = {"hf-soups": measure("import", [], OUT_DIR / "import", py, args.threads)}
    if mergekit_py:
        baseline["mergekit"] = run_child([str(mergekit_py), "-c", "import mergekit.merge, mergekit.config, mergekit.options"])

    rows: List[List[Any]] = []
    diffs: List[List[Any]] = []
    checks: List[str] = []
    breakdowns: List[str] = []
    hf_rss_by_size: Dict[str, Dict[int, float]] = {}
    for size in args.sizes:
        all_folders = generate_models(size, max(args.ks))
        model_mb = sum(p.stat().st_size for p in _tensor_files(all_folders[0])) / 2**20
        for k in sorted(args.ks):
            folders = all_folders[:k]
            input_gb = sum(p.stat().st_size for f in folders for p in _tensor_files(f)) / 2**30
            if shutil.disk_usage(REPO).free < 3 * k * model_mb * 2**20:
                print(f"skipping {size} k={k}: not enough free disk", flush=True)
                continue
            read_floor(folders)  # warm the page cache for every method alike
            best: Dict[str, ChildRun] = {}
            for _ in range(args.repeat):
                for method in ["read floor", *METHODS]:
                    if method == "mergekit" and not mergekit_py:
                        continue
                    run = read_floor(folders) if method == "read floor" else measure(
                        method, folders, OUT_DIR / method.replace(" ", "-"),
                        str(mergekit_py) if method == "mergekit" else py, args.threads)
                    op = run.result.get("op_s", run.wall_s)
                    print(f"{size} k={k} {method:12s} op {op:7.2f} s  process {run.wall_s:7.2f} s  "
                          f"peak RSS {run.peak_rss_mb:7.0f} MB {'' if run.ok else 'FAILED: ' + run.error}", flush=True)
                    prev = best.get(method)
                    if prev is None or (run.ok and (not prev.ok or op < prev.result.get("op_s", prev.wall_s))):
                        best[method] = run
            hf = best["hf-soups"]
            hf_op = hf.result.get("op_s") if hf.ok else None
            hf_rss = hf.peak_rss_mb if hf.ok else None
            if hf_rss is not None:
                hf_rss_by_size.setdefault(size, {})[k] = hf_rss
            for method in ["read floor", *METHODS]:
                run = best.get(method)
                if run is None or not run.ok:
                    why = "absent" if run is None else "failed: " + run.error
                    rows.append([SIZES[size]["label"], k, f"{input_gb:.2f}", method, why, "—", "—", "—", "—"])
                    continue
                op = run.result.get("op_s", run.wall_s)
                rss = run.peak_rss_mb
                rows.append([SIZES[size]["label"], k, f"{input_gb:.2f}", method, _fmt_s(op), _fmt_s(run.wall_s),
                             _fmt_mb(rss), _ratio(op, hf_op), _ratio(rss, hf_rss)])
            hf_out = OUT_DIR / "hf-soups"
            for other in ["mergekit", "torch stack"]:
                run = best.get(other)
                if run is None or not run.ok or not hf.ok:
                    continue
                # the output folders hold the last run of each method (all runs of a method write the same bytes)
                d = max_abs_diff(hf_out, OUT_DIR / other.replace(" ", "-"))
                text = (d["error"] if "error" in d else
                        f"{d['max_abs_diff']:.3g} (over {d['compared']} tensors"
                        + (f"; only in hf-soups: {d['only_in_first']}" if d["only_in_first"] else "")
                        + (f"; only in {other}: {d['only_in_second']}" if d["only_in_second"] else "") + ")")
                diffs.append([SIZES[size]["label"], k, other, text])
            if k == max(args.ks) and hf.ok:
                prof = measure("hf-soups-profile", folders, OUT_DIR / "hf-soups-profile", py, args.threads)
                if prof.ok:
                    parts = ", ".join(f"{label} {sec:.2f} s" for label, sec in prof.result["breakdown"].items())
                    floor_run = best.get("read floor")
                    floor_s = f"; read floor {floor_run.wall_s:.2f} s" if floor_run and floor_run.ok else ""
                    breakdowns.append(f"{SIZES[size]['label']}, k={k}: {prof.result['op_s']:.2f} s under cProfile: "
                                      f"{parts}{floor_s}")
                floor = best.get("read floor")
                mk = best.get("mergekit")
                above = hf_rss - baseline["hf-soups"].peak_rss_mb
                line = (f"{SIZES[size]['label']}, k={k}: hf-soups peak RSS {hf_rss:.0f} MB, of which {above:.0f} MB "
                        f"above an import-only process ({above / model_mb:.2f}x one model of {model_mb:.0f} MB; "
                        f"target <= 1.25x)")
                if floor is not None and floor.ok:
                    line += f"; merge time {hf_op / floor.wall_s:.2f}x the read floor (target <= 1.5x)"
                if mk is not None and mk.ok:
                    line += (f"; vs mergekit: RSS {hf_rss / mk.peak_rss_mb:.2f}x, merge time "
                             f"{hf_op / mk.result['op_s']:.2f}x (targets <= 0.5x)")
                checks.append(line)
            for method in METHODS:
                shutil.rmtree(OUT_DIR / method.replace(" ", "-"), ignore_errors=True)
    for size, by_k in hf_rss_by_size.items():
        if len(by_k) > 1:
            checks.append(f"{SIZES[size]['label']}: hf-soups peak RSS by k: "
                          + ", ".join(f"k={k}: {v:.0f} MB" for k, v in sorted(by_k.items())))

    exact_note = ""
    if diffs and all(k & (k - 1) == 0 for k in args.ks):
        exact_note = ("(With k a power of two, scaling by 1/k is exact, and so is mergekit's division by the summed "
                      "weights: equal bits are expected; other weights differ from mergekit's "
                      "`sum(w_i t_i) / sum(w_i)` by float32 rounding only.)\n\n")
    header = ["model", "k", "input GiB", "method", "merge s", "process s", "peak RSS MB", "time vs hf-soups",
              "RSS vs hf-soups"]
    table = markdown_table(header, rows)
    body = f"""Command: `{command}` (from the repository root, in the project venv).

Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {machine_note()}; {mergekit_note}.
The machine's 2 cores were shared with other work (a niced training job): absolute times are noisy, the
ratios (methods run one after the other on the same inputs) less so.

What is measured: each method in its own process. "merge s" is the merge step alone (timed inside the process,
after imports: read inputs, average, write `model.safetensors`); "process s" is the whole process;
"peak RSS MB" is the process's peak resident set size (its VmHWM, which the process reports at its end;
polled for `cat`; file pages mapped by `safe_open` count too). Inputs are random perturbations of one random `BertForSequenceClassification`, float32,
saved with `save_pretrained`; every run reads them from the page cache (warmed first). The read floor is `cat`
of every input file to /dev/null. Torch threads per process: {args.threads or "torch's default"} (`--threads`; on 2
contended cores, 2 threads made every method slower and far noisier). Import-only processes: hf-soups {baseline['hf-soups'].peak_rss_mb:.0f} MB"""
    if "mergekit" in baseline:
        body += f", mergekit {baseline['mergekit'].peak_rss_mb:.0f} MB"
    body += f""" peak RSS. Repeats per method: {args.repeat} (fastest kept).

{table}

Largest absolute difference of the outputs from hf-soups' (float32, uniform weights):

{markdown_table(["model", "k", "against", "max abs diff"], diffs) if diffs else "(no comparison ran)"}

{exact_note}Against the targets of issue 4:

""" + "\n".join(f"- {c}" for c in checks) + """

Where hf-soups' merge time goes (one extra run under cProfile, own time of the calls in each group):

""" + "\n".join(f"- {b}" for b in breakdowns) + "\n"
    print("\n" + body)
    if args.write:
        write_section("Mixing", body)
        print("wrote the '## Mixing' section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
