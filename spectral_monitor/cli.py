"""The ``spectral-monitor`` command line.

    spectral-monitor analyze PATH [--csv F] [--json F] [--plots DIR] [--conv slices]
                             [--kinds K ...] [--lora MODE] [--base PATH] ...
    spectral-monitor history LOGDIR [--csv F] [--prefix spectral] [--plot alpha.png]
    spectral-monitor prune-ratios PATH --sparsity 0.7 [--epsilon 0.3] [--block] [--json F]

``analyze`` reads a Lightning ``.ckpt``, a ``torch.save``d state dict or module, or a
safetensors file (recognised by content, whatever its name) and builds the per-layer table from
the weights alone. ``history`` reads what a run's loggers wrote — the CSV logger's
``spectral_history.csv`` (every per-layer field) or else TensorBoard events — and prints the alpha
trajectories per layer, each step once (a run resumed into the same directory included).
``prune-ratios`` prints AlphaPruning's per-layer sparsities for a target sparsity
(:mod:`spectral_monitor.acting.prune_ratios`).

Exit codes: 0 success; 2 bad command line; 3 file or directory not found; 4 the file cannot be
read as weights (or the directory holds no spectral events); 5 no analysable layer in the file;
6 an output file or directory cannot be written; 130 interrupted. Every error is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from spectral_monitor.analysis.analyze import analyze_snapshot
from spectral_monitor.analysis.config import DEFAULT_MIN_EVALS, AnalysisConfig
from spectral_monitor.analysis.history_files import FoundHistory
from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.analysis.snapshot import (
    LayerSnapshot,
    select,
    snapshot_state_dict,
    subtract_base,
)
from spectral_monitor.weights.layers import CONV_MODES, KINDS, LORA_MODES, left_out_message

__all__ = [
    "EXIT_EMPTY",
    "EXIT_MISSING",
    "EXIT_OUTPUT",
    "EXIT_UNREADABLE",
    "EXIT_USAGE",
    "detect_format",
    "load_weights",
    "main",
    "read_history",
]

EXIT_USAGE = 2
EXIT_MISSING = 3
EXIT_UNREADABLE = 4
EXIT_EMPTY = 5
EXIT_OUTPUT = 6
EXIT_INTERRUPTED = 130

_COLORS = {"over-trained": "31", "under-trained": "33", "well-trained": "32"}


class CLIError(Exception):
    """An error with a message for the user and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _tensors_of(obj: Any) -> Mapping[str, torch.Tensor] | None:
    """The state dict inside a loaded object, or None."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            inner = obj.get(key)
            found = _tensors_of(inner) if inner is not None else None
            if found:
                return found
        tensors = {
            k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
        }
        return tensors or None
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def detect_format(path: Path) -> str:
    """``"torch"`` (``torch.save``'s zip archive or legacy pickle) or ``"safetensors"``, from the
    file's first bytes, whatever its name.

    Raises:
        CLIError: the file cannot be opened, is empty, or is neither (exit 4).
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise CLIError(f"cannot read {path}: {error.strerror or error}", EXIT_UNREADABLE) from error
    if not head:
        raise CLIError(f"cannot read {path}: the file is empty", EXIT_UNREADABLE)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # a zip archive; a pickle
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    header = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and 0 < header <= size - 8:
        return "safetensors"
    raise CLIError(
        f"cannot read {path}: not a torch checkpoint, state dict or safetensors file "
        f"(it starts with {head[:8]!r})",
        EXIT_UNREADABLE,
    )


def _load_safetensors(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise CLIError(
            "reading safetensors files needs: pip install safetensors", EXIT_UNREADABLE
        ) from error
    try:
        return load_file(str(path))
    except Exception as error:
        raise CLIError(
            f"cannot read {path} as safetensors ({_first_line(error)})", EXIT_UNREADABLE
        ) from error


def _load_torch(path: Path, trust_pickle: bool) -> Any:
    import pickle

    try:
        # A file object, not the name: this torch reads a '.safetensors' name as safetensors.
        with path.open("rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        # Only the safe unpickler's refusal is helped by --trust-pickle.
        refused = not trust_pickle and "weights only" in str(error).lower()
        hint = (
            " It holds objects other than tensors and plain containers (a whole model, custom "
            "classes); if you trust the file, add --trust-pickle."
            if refused
            else ""
        )
        raise CLIError(
            f"cannot read {path} as a torch checkpoint"
            + ("." if refused else f" ({_first_line(error)}).")
            + hint,
            EXIT_UNREADABLE,
        ) from error
    except Exception as error:
        raise CLIError(
            f"cannot read {path} as a torch checkpoint ({_first_line(error)})", EXIT_UNREADABLE
        ) from error


def load_weights(path: str | Path, trust_pickle: bool = False) -> Mapping[str, torch.Tensor]:
    """The named weight tensors in a checkpoint, state dict, pickled module or safetensors file,
    the format told by the file's content (:func:`detect_format`), not its name.

    Args:
        path: the file.
        trust_pickle: allow full unpickling (runs code from the file: only for files you trust);
            by default only tensors and plain containers are unpickled.

    Raises:
        CLIError: the file is missing (exit 3) or holds no weights we can read (exit 4).
    """
    path = Path(path)
    if not path.exists():
        raise CLIError(f"no such file: {path}", EXIT_MISSING)
    if path.is_dir():
        raise CLIError(f"{path} is a directory; give a checkpoint or weights file", EXIT_UNREADABLE)
    if detect_format(path) == "safetensors":
        return _load_safetensors(path)
    obj = _load_torch(path, trust_pickle)
    tensors = _tensors_of(obj)
    if not tensors:
        raise CLIError(f"{path} holds no named weight tensors", EXIT_UNREADABLE)
    return tensors


def _color(text: str, verdict: str, enabled: bool) -> str:
    code = _COLORS.get(verdict)
    return f"\033[{code}m{text}\033[0m" if enabled and code else text


def _print_table(report: SpectralReport, out: TextIO, color: bool) -> None:
    for line in report.format_table(width=100).splitlines():
        verdict = next((v for v in _COLORS if line.endswith(v)), "")
        out.write((_color(line, verdict, color) if verdict else line) + "\n")


def _analyze_with_progress(
    snapshot: list[LayerSnapshot], config: AnalysisConfig, progress: bool
) -> SpectralReport:
    if not progress or len(snapshot) <= 8:
        return analyze_snapshot(snapshot, config)
    parts: list[SpectralReport] = []
    chunk = 8
    for start in range(0, len(snapshot), chunk):
        done = min(len(snapshot), start + chunk)
        parts.append(analyze_snapshot(snapshot[start:done], config))
        width = 30
        filled = width * done // len(snapshot)
        sys.stderr.write(
            f"\ranalysing layers [{'#' * filled}{'.' * (width - filled)}] {done}/{len(snapshot)}"
        )
        sys.stderr.flush()
    sys.stderr.write("\n")
    report = parts[0]
    report.layers = [la for part in parts for la in part.layers]
    report.seconds = sum(part.seconds for part in parts)
    return report


def _write_plots(report: SpectralReport, directory: Path) -> list[Path]:
    from spectral_monitor.sinks.plots import plot_alpha_by_layer, plot_esd

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    fitted = report.fitted
    figure = plot_alpha_by_layer([la.name for la in fitted], [la.alpha for la in fitted])
    written.append(directory / "alpha_by_layer.png")
    figure.savefig(written[-1], dpi=110)
    for la in report.layers:
        if la.evals is None:
            continue
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in la.name)
        written.append(directory / f"esd_{safe}.png")
        title = f"{la.name} {'x'.join(map(str, la.shape))}"
        plot_esd(la.evals, la.fit, title).savefig(written[-1], dpi=110)
    return written


def _check_output_file(path: str | None) -> None:
    """Fail before the work, not after it, when an output file cannot be written there."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"cannot write {target}: it is a directory", EXIT_OUTPUT)
    if not target.parent.is_dir():
        raise CLIError(f"cannot write {target}: no directory {target.parent}", EXIT_OUTPUT)


def _writing(path: str | Path, write: Callable[[], Any]) -> Any:
    """Run ``write``; an OSError becomes the output exit code with a one-line message."""
    try:
        return write()
    except OSError as error:
        raise CLIError(f"cannot write {path}: {error.strerror or error}", EXIT_OUTPUT) from error


def _cmd_analyze(args: argparse.Namespace, out: TextIO) -> int:
    config = AnalysisConfig.create(
        layers=args.layers,
        exclude=args.exclude,
        conv=args.conv,
        normalize=args.normalize,
        min_evals=args.min_evals,
        precision=args.precision,
        kinds="all" if args.kinds and "all" in args.kinds else args.kinds,
        lora=args.lora,
    )
    _check_output_file(args.csv)
    _check_output_file(args.json)
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise CLIError(f"cannot write figures to {args.plots}: not a directory", EXIT_OUTPUT)
    state = load_weights(args.path, trust_pickle=args.trust_pickle)
    selection = select(state, config)  # one selection: the snapshot and the left-out list
    snapshot = snapshot_state_dict(state, config, selection)
    if args.base:
        base = load_weights(args.base, trust_pickle=args.trust_pickle)
        snapshot = subtract_base(snapshot, snapshot_state_dict(base, config))
    report = _analyze_with_progress(snapshot, config, progress=sys.stderr.isatty())
    if not report.layers:
        raise CLIError(
            f"{args.path}: no analysable layer (no weight of a known layer kind)"
            + (" after --layers/--exclude/--kinds" if args.layers or args.exclude else ""),
            EXIT_EMPTY,
        )
    color = out.isatty() and "NO_COLOR" not in os.environ and not args.no_color
    _print_table(report, out, color)
    if selection.left_out:
        limit = len(selection.left_out)
        out.write(f"left out: {left_out_message(selection.left_out, limit=limit)}\n")
    if args.csv:
        out.write(f"wrote {_writing(args.csv, lambda: report.to_csv(args.csv))}\n")
    if args.json:
        out.write(f"wrote {_writing(args.json, lambda: report.to_json(args.json))}\n")
    if args.plots:
        paths = _writing(args.plots, lambda: _write_plots(report, Path(args.plots)))
        out.write(f"wrote {len(paths)} figures to {args.plots}\n")
    return 0


def _cmd_prune_ratios(args: argparse.Namespace, out: TextIO) -> int:
    import json

    from spectral_monitor.acting.prune_ratios import prune_ratios

    config = AnalysisConfig.create(layers=args.layers, exclude=args.exclude)
    state = load_weights(args.path, trust_pickle=args.trust_pickle)
    report = analyze_snapshot(snapshot_state_dict(state, config), config)
    if not report.fitted:
        raise CLIError(f"{args.path}: no layer with a fitted alpha", EXIT_EMPTY)
    rows = prune_ratios(report, args.sparsity, args.epsilon, args.block)
    out.write(f"{'layer':<40} {'params':>10} {'alpha':>7} {'reliable':>8} {'sparsity':>8}\n")
    for row in rows:
        name = row.name if len(row.name) <= 40 else "…" + row.name[-39:]
        out.write(
            f"{name:<40} {row.num_params:>10} {row.alpha:>7.3f} {row.reliable!s:>8} "
            f"{row.sparsity:>8.4f}\n"
        )
    total = sum(r.num_params for r in rows)
    mean = sum(r.num_params * r.sparsity for r in rows) / total
    out.write(f"parameter-weighted mean sparsity {mean:.4f} (target {args.sparsity})\n")
    if args.json:
        data = {
            "sparsity": args.sparsity,
            "epsilon": args.epsilon,
            "block": args.block,
            "layers": [
                {**vars(r), "alpha": r.alpha if math.isfinite(r.alpha) else None} for r in rows
            ],
        }
        _writing(args.json, lambda: Path(args.json).write_text(json.dumps(data, indent=2)))
        out.write(f"wrote {args.json}\n")
    return 0


def read_history(logdir: str | Path, prefix: str = "spectral") -> dict[str, FoundHistory]:
    """Every run's history under ``logdir``: ``{run: FoundHistory}``, from the CSV sink's
    ``<prefix>_history.csv`` where a folder has one, else from its TensorBoard events
    (:func:`spectral_monitor.analysis.history_files.find_histories`)."""
    from spectral_monitor.analysis.history_files import find_histories

    return find_histories(logdir, prefix)


def _stats(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return f"{'–':>8} {'–':>8} {'–':>8} {'–':>8}"
    return f"{finite[0]:>8.3f} {finite[-1]:>8.3f} {min(finite):>8.3f} {max(finite):>8.3f}"


def _reliable_count(flags: Sequence[Any]) -> str:
    """``k/n``: in how many of the layer's analyses its fit was reliable; ``?`` if unknown (a
    TensorBoard source has no flag)."""
    known = [f for f in flags if isinstance(f, float) and math.isfinite(f)]
    return f"{sum(f == 1.0 for f in known)}/{len(flags)}" if known else "?"


def _cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    root = Path(args.logdir)
    if not root.exists():
        raise CLIError(f"no such directory: {root}", EXIT_MISSING)
    if not root.is_dir():
        raise CLIError(
            f"{root} is not a directory; give a TensorBoard or CSV logger's log dir",
            EXIT_UNREADABLE,
        )
    _check_output_file(args.csv)
    runs = read_history(root, args.prefix)
    if not runs:
        raise CLIError(
            f"no TensorBoard events with '{args.prefix}/alpha/' scalars and no "
            f"{args.prefix}_history.csv under {root}",
            EXIT_UNREADABLE,
        )
    for run, found in runs.items():
        steps = found.history.steps
        out.write(
            f"run {run}: {len(steps)} analyses, steps {steps[0]}..{steps[-1]} "
            f"(from {found.source})\n"
        )
        out.write(
            f"{'layer':<32} {'first':>8} {'last':>8} {'min':>8} {'max':>8} {'reliable':>8}"
            "  alpha over steps\n"
        )
        for layer, track in found.history.layers.items():
            name = layer if len(layer) <= 32 else "…" + layer[-31:]
            values = [float(v) for v in track["alpha"]]
            out.write(
                f"{name:<32} {_stats(values)} {_reliable_count(track.get('reliable', [])):>8}"
                f"  {_sparkline(values)}\n"
            )
    if args.csv:
        import csv

        def write_csv() -> None:
            columns = list(dict.fromkeys(c for f in runs.values() for c in f.history.columns))
            with open(args.csv, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["run", *columns])
                writer.writeheader()
                for run, found in runs.items():
                    writer.writerows({"run": run, **row} for row in found.history.to_rows())

        _writing(args.csv, write_csv)
        out.write(f"wrote {args.csv}\n")
    if args.plot:
        for path in _write_heatmaps(runs, Path(args.plot)):
            out.write(f"wrote {path}\n")
    return 0


def _write_heatmaps(runs: Mapping[str, FoundHistory], path: Path) -> list[Path]:
    """One heatmap of alpha per run (the picture ``<prefix>/alpha_heatmap`` shows in TensorBoard,
    unreliable fits hatched where the source says which); ``path`` itself for one run,
    ``<stem>_<run><suffix>`` for each of several."""
    from spectral_monitor.sinks.plots import plot_alpha_heatmap

    written = []
    for run, found in runs.items():
        layers, steps, alpha = found.history.alpha_matrix()
        unreliable = found.history.layer_matrix("reliable")[2] == 0.0  # NaN (unknown) is not
        target = path
        if len(runs) > 1:
            label = re.sub(r"[^A-Za-z0-9_.-]+", "_", run).strip("_") or "run"
            target = path.with_name(f"{path.stem}_{label}{path.suffix or '.png'}")
        target.parent.mkdir(parents=True, exist_ok=True)
        figure = plot_alpha_heatmap(
            layers, steps, alpha, unreliable, title=f"alpha by layer — {run}"
        )
        figure.savefig(target, dpi=100)
        written.append(target)
    return written


def _sparkline(values: Sequence[float], width: int = 24) -> str:
    bars = "▁▂▃▄▅▆▇█"
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(values) > width:  # keep evenly spaced samples, always the last one
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(
        bars[min(7, int((v - lo) / span * 8))] if math.isfinite(v) else " " for v in values
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectral-monitor",
        description="Heavy-tailed spectral analysis (HT-SR alpha, λmax) of network weights.",
        epilog="exit codes: 0 ok, 2 usage, 3 not found, 4 unreadable, 5 no analysable layer, "
        "6 cannot write an output, 130 interrupted",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="per-layer table of a checkpoint or weights file")
    a.add_argument("path", help=".ckpt, torch.save'd state dict or module, or .safetensors")
    a.add_argument("--csv", help="write the table as CSV")
    a.add_argument("--json", help="write the table and aggregates as JSON")
    a.add_argument("--plots", metavar="DIR", help="write PNG figures (ESD per layer, alpha)")
    a.add_argument(
        "--conv",
        "--conv2d",
        dest="conv",
        choices=CONV_MODES,
        default="flatten",
        help="every convolution as one flattened matrix or as kernel slices (WeightWatcher); "
        "--conv2d is the old name",
    )
    a.add_argument(
        "--kinds",
        nargs="+",
        choices=[*KINDS, "all"],
        metavar="KIND",
        help=f"layer kinds to analyse, among {', '.join(KINDS)}, or all "
        "(default: all but embedding)",
    )
    a.add_argument(
        "--lora",
        choices=LORA_MODES,
        default="effective",
        help="peft LoRA layers: W + scale·B·A (needs the module), the adapter, or the base W",
    )
    a.add_argument(
        "--base",
        metavar="PATH",
        help="base model weights: analyse each layer's change W - W_base",
    )
    norm = a.add_mutually_exclusive_group()
    norm.add_argument(
        "--normalize",
        dest="normalize",
        action="store_true",
        default=True,
        help="divide eigenvalues by the weight's rows (default)",
    )
    norm.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="keep σ² (WeightWatcher's convention)",
    )
    a.add_argument("--layers", nargs="+", metavar="GLOB", help="only layers matching these")
    a.add_argument("--exclude", nargs="+", metavar="GLOB", help="drop layers matching these")
    a.add_argument("--min-evals", type=int, default=DEFAULT_MIN_EVALS)
    a.add_argument("--precision", choices=["float32", "float64"], default="float32")
    a.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling (runs code from the file)",
    )
    a.add_argument("--no-color", action="store_true", help="no ANSI colours")
    h = sub.add_parser(
        "history", help="alpha trajectories from a run's TensorBoard events or CSV logger files"
    )
    h.add_argument(
        "logdir", help="a TensorBoard or CSV logger's log directory (searched recursively)"
    )
    h.add_argument(
        "--csv", help="write run, step, layer and every per-layer field (as far as the source has)"
    )
    h.add_argument("--prefix", default="spectral", help="tag prefix used by the monitor")
    h.add_argument(
        "--plot",
        metavar="PATH",
        help="write the heatmap of alpha (layers x steps) as PNG; several runs: PATH_<run>.png",
    )
    p = sub.add_parser("prune-ratios", help="AlphaPruning's per-layer sparsities")
    p.add_argument("path", help=".ckpt, torch.save'd state dict or module, or .safetensors")
    p.add_argument("--sparsity", type=float, required=True, help="target overall sparsity")
    p.add_argument("--epsilon", type=float, default=0.3, help="spread of the ratios (0.3)")
    p.add_argument("--block", action="store_true", help="use each block's mean alpha")
    p.add_argument("--json", help="write the sparsities as JSON")
    p.add_argument("--layers", nargs="+", metavar="GLOB", help="only layers matching these")
    p.add_argument("--exclude", nargs="+", metavar="GLOB", help="drop layers matching these")
    p.add_argument("--trust-pickle", action="store_true", help="allow full unpickling")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        if args.command == "analyze":
            return _cmd_analyze(args, out)
        if args.command == "prune-ratios":
            return _cmd_prune_ratios(args, out)
        return _cmd_history(args, out)
    except CLIError as error:
        sys.stderr.write(f"spectral-monitor: error: {error}\n")
        return error.code
    except ValueError as error:  # invalid option values, from the analysis' own checks
        sys.stderr.write(f"spectral-monitor: error: {error}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("spectral-monitor: interrupted\n")
        return EXIT_INTERRUPTED


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    main_entry()
