"""Which symmetric eigensolver computes the eigenvalues of a batch of Gram matrices, chosen per
(device, dtype, size) among those the machine has, by a small probe run once per process.

Candidates today:

- ``"torch"``: ``torch.linalg.eigvalsh``: the LAPACK the torch wheel carries (MKL on x86 wheels)
  on a CPU, cuSOLVER on CUDA; batched, any device.
- ``"scipy-lapack"``: SciPy's LAPACK ``?syevd`` (eigenvalues only) through the function pointers
  ``scipy.linalg.cython_lapack`` exports, called with :mod:`ctypes` (CPU only; SciPy wheels carry
  OpenBLAS). ``scipy.linalg.eigh`` holds the GIL for the whole solve, which would stall a
  training thread for as long as the worker's solve lasts; a :mod:`ctypes` call releases it, as
  torch's operators do.

Both reduce to a tridiagonal matrix and run the same root-free QR on it (``?sytrd`` +
``?sterf``), so they agree to rounding: alpha within 3e-4 in float32 (``tests/test_solvers.py``).
*Measured* on an AMD EPYC development machine, one thread, float32: MKL's ``eigvalsh`` 11.0 /
84.5 / 321 ms at n = 512 / 1024 / 2048, OpenBLAS's 9.4 / 46 / 292 ms; below n ≈ 256 they are
equal and torch's batched call wins on overhead, so smaller matrices are not probed.

The choice is a probe, not a rule, because which library wins depends on the CPU (MKL is slower
on AMD than on Intel), the size, the dtype and the thread count: the first time a Gram of a new
(device type, dtype, size band, torch thread count) is solved, each candidate solves a random
symmetric matrix of the band's probe size, best of three, interleaved; the fastest wins, torch
unless another is faster by more than ``_MARGIN``. The probe costs about a second on a 2-core CPU
for the largest band. Choices are kept for the process and, when the environment variable
``SPECTRAL_MONITOR_SOLVER_CACHE`` names a JSON file, on disk under a key that names the CPU, the
library versions and the thread count. ``SPECTRAL_MONITOR_SOLVER=<name>`` (read at the
first solve and after :func:`clear_choices`) or :func:`set_solver` forces one solver wherever it
can run.

On CUDA only ``"torch"`` (cuSOLVER, torch's own pick between ``syevd`` and batched ``syevj``) is
registered; :func:`register_solver` is the hook for the cuSOLVER/MAGMA variants a GPU measures
faster (for example a solver that calls ``torch.linalg.eigvalsh`` under
``torch.backends.cuda.preferred_linalg_library("magma")``): a registered candidate takes part in
the probe for its device type like the CPU ones do.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "Solver",
    "available_solvers",
    "choose_solver",
    "clear_choices",
    "register_solver",
    "set_solver",
    "solver_choices",
]

#: A solver takes a (count, n, n) symmetric matrix stack (float32 or float64, contiguous; it may
#: overwrite it) and returns its (count, n) eigenvalues, ascending, same dtype and device.
Solve = Callable[[torch.Tensor], torch.Tensor]

# Below this many columns the candidates take the same time (measured: 0.1 / 0.4 / 1.6–1.8 ms at
# n = 64 / 128 / 256 for both) and torch's one batched call saves a Python loop: no probe.
_PROBE_MIN = 256
# Size bands [lower, upper) and the size each is probed at.
_BANDS: tuple[tuple[int, int, int], ...] = (
    (256, 512, 384),
    (512, 1024, 768),
    (1024, 1 << 62, 1280),
)
# Another solver replaces torch only when its probe is faster by more than this fraction: on a
# shared machine a probe within a few percent is noise, and torch's batched call is simpler.
_MARGIN = 0.05
_ROUNDS = 3
_ENV_FORCE = "SPECTRAL_MONITOR_SOLVER"
_ENV_CACHE = "SPECTRAL_MONITOR_SOLVER_CACHE"


@dataclass(frozen=True)
class Solver:
    """One eigensolver: ``name`` (shown in reports), what it is, which device types
    (``torch.device.type``) it runs on, and its solve function (see :data:`Solve`)."""

    name: str
    description: str
    device_types: tuple[str, ...]
    solve: Solve
    available: Callable[[], bool] = lambda: True


def _torch_solve(gram: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(gram)


class _Lapack:
    """SciPy's ``ssyevd``/``dsyevd`` called through :mod:`ctypes` (which releases the GIL)."""

    _ARGS = 11  # jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._functions: dict[torch.dtype, Any] | None = None
        self._error: str | None = None
        self._workspace: dict[tuple[torch.dtype, int], tuple[int, int]] = {}
        self._set_threads: Any = None  # SciPy's OpenBLAS ``openblas_set_num_threads``, if found
        self._threads = 0

    def _load(self) -> dict[torch.dtype, Any]:
        with self._lock:
            if self._functions is None and self._error is None:
                try:
                    self._functions = self._pointers()
                except Exception as error:  # no SciPy, or a build without the exports
                    self._error = f"{type(error).__name__}: {error}"
            if self._functions is None:
                raise RuntimeError(f"scipy-lapack is not available ({self._error})")
            return self._functions

    def _pointers(self) -> dict[torch.dtype, Any]:
        from scipy.linalg import cython_lapack  # SciPy comes with powerlaw

        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype = ctypes.c_char_p
        get_name.argtypes = [ctypes.py_object]
        get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        get_pointer.restype = ctypes.c_void_p
        get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        prototype = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * self._ARGS))
        out = {}
        for dtype, routine in ((torch.float32, "ssyevd"), (torch.float64, "dsyevd")):
            capsule = cython_lapack.__pyx_capi__[routine]
            out[dtype] = prototype(get_pointer(capsule, get_name(capsule)))
        self._set_threads = _openblas_thread_setter()
        return out

    def _follow_torch_threads(self) -> None:
        """Give SciPy's OpenBLAS the calling thread's torch thread count, so that this solver
        uses as many cores as ``torch.linalg.eigvalsh`` would (``torch.set_num_threads`` does
        not reach it). SciPy's OpenBLAS is its own copy: numpy's and torch's are untouched."""
        threads = torch.get_num_threads()
        if self._set_threads is not None and threads != self._threads:
            self._set_threads(threads)
            self._threads = threads

    def available(self) -> bool:
        try:
            self._load()
        except RuntimeError:
            return False
        return True

    def _call(
        self,
        function: Any,
        n: int,
        a: int,
        w: int,
        work: int,
        lwork: int,
        iwork: int,
        liwork: int,
    ) -> int:
        jobz, uplo = ctypes.c_char(b"N"), ctypes.c_char(b"L")
        size, info = ctypes.c_int(n), ctypes.c_int(0)
        lw, liw = ctypes.c_int(lwork), ctypes.c_int(liwork)
        function(
            ctypes.byref(jobz),
            ctypes.byref(uplo),
            ctypes.byref(size),
            a,
            ctypes.byref(size),
            w,
            work,
            ctypes.byref(lw),
            iwork,
            ctypes.byref(liw),
            ctypes.byref(info),
        )
        return info.value

    def _workspace_sizes(self, function: Any, dtype: torch.dtype, n: int) -> tuple[int, int]:
        key = (dtype, n)
        if key not in self._workspace:
            a = np.zeros((1, 1), dtype=np.float64)  # not read by a workspace query
            w = np.zeros(1, dtype=np.float64)
            work = np.zeros(1, dtype=np.float64)
            iwork = np.zeros(1, dtype=np.int32)
            info = self._call(
                function,
                n,
                a.ctypes.data,
                w.ctypes.data,
                work.ctypes.data,
                -1,
                iwork.ctypes.data,
                -1,
            )
            if info != 0:
                raise RuntimeError(f"?syevd workspace query failed (info={info})")
            lwork = int(work.view(np.float32 if dtype == torch.float32 else np.float64)[0])
            self._workspace[key] = (max(1, lwork), max(1, int(iwork[0])))
        return self._workspace[key]

    def solve(self, gram: torch.Tensor) -> torch.Tensor:
        """Eigenvalues of each matrix of a contiguous CPU (count, n, n) stack, overwritten."""
        function = self._load()[gram.dtype]
        self._follow_torch_threads()
        count, n, _ = gram.shape
        gram = gram.contiguous()
        lwork, liwork = self._workspace_sizes(function, gram.dtype, n)
        out = torch.empty((count, n), dtype=gram.dtype)
        work = torch.empty(lwork, dtype=gram.dtype)
        iwork = torch.empty(liwork, dtype=torch.int32)
        item = gram.element_size()
        for i in range(count):  # a symmetric matrix reads the same in either storage order
            info = self._call(
                function,
                n,
                gram.data_ptr() + i * n * n * item,
                out.data_ptr() + i * n * item,
                work.data_ptr(),
                lwork,
                iwork.data_ptr(),
                liwork,
            )
            if info != 0:
                # Read as torch's LinAlgError is: the caller falls back to a float64 SVD.
                raise RuntimeError(f"scipy-lapack ?syevd failed (info={info}) on matrix {i}")
        return out


def _openblas_thread_setter() -> Any:
    """SciPy's OpenBLAS ``set_num_threads`` (a ctypes function of one int), or None where it
    cannot be found (not Linux, not an OpenBLAS build): the library is found among the loaded
    ones in ``/proc/self/maps`` under ``scipy.libs``, the folder of SciPy's wheel libraries."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "scipy.libs" in line}
    except OSError:
        return None
    for path in sorted(p for p in paths if "openblas" in os.path.basename(p)):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(library, name):
                setter = getattr(library, name)
                setter.argtypes = [ctypes.c_int]
                setter.restype = None
                return setter
    return None


_LAPACK = _Lapack()
_REGISTRY: dict[str, Solver] = {}
_CHOICES: dict[str, str] = {}
# choose_solver's answers by (device type, dtype, band or n, forced name, threads).
_FAST: dict[tuple[Any, ...], Solver] = {}
_FORCED: str | None = None
_LOCK = threading.RLock()
_DISK_LOADED = False


def register_solver(solver: Solver) -> None:
    """Add (or replace) a candidate; it takes part in the probe for its device types. Clears
    the choices made so far, which did not weigh it."""
    with _LOCK:
        _REGISTRY[solver.name] = solver
        _CHOICES.clear()
        _FAST.clear()


register_solver(
    Solver(
        "torch",
        "torch.linalg.eigvalsh ("
        + ("MKL" if torch.backends.mkl.is_available() else "torch's LAPACK")
        + " on CPU, cuSOLVER on CUDA)",
        ("cpu", "cuda", "mps", "xpu"),
        _torch_solve,
    )
)
register_solver(
    Solver(
        "scipy-lapack",
        "SciPy's LAPACK ?syevd (OpenBLAS in SciPy's wheels), through ctypes",
        ("cpu",),
        _LAPACK.solve,
        _LAPACK.available,
    )
)


def available_solvers(device: torch.device | str = "cpu") -> list[Solver]:
    """The registered solvers that run on ``device``'s type here, torch first."""
    kind = torch.device(device).type
    return [s for s in _REGISTRY.values() if kind in s.device_types and s.available()]


def set_solver(name: str | None) -> None:
    """Force solver ``name`` wherever it can run (``None``: probe again). Overrides the
    ``SPECTRAL_MONITOR_SOLVER`` environment variable.

    Raises:
        ValueError: ``name`` is not a registered solver.
    """
    global _FORCED
    if name is not None and name not in _REGISTRY:
        raise ValueError(f"solver must be one of {sorted(_REGISTRY)} or None, got {name!r}")
    _FORCED = name


def clear_choices() -> None:
    """Forget the probed choices of this process and read ``SPECTRAL_MONITOR_SOLVER`` again
    (the disk cache is kept)."""
    global _DISK_LOADED
    with _LOCK:
        _CHOICES.clear()
        _FAST.clear()
        _ENVIRONMENT.clear()
        _DISK_LOADED = False


def solver_choices() -> dict[str, str]:
    """The choices made so far: ``{key: solver name}``; a key reads
    ``"<device type>/<dtype>/n<lower>-<upper>/threads<k>"``."""
    with _LOCK:
        return dict(_CHOICES)


def _band(n: int) -> tuple[int, int, int]:
    for band in _BANDS:
        if band[0] <= n < band[1]:
            return band
    raise ValueError(f"no probe band holds n={n}")


def _key(kind: str, dtype: torch.dtype, n: int) -> str:
    lower, upper, _ = _band(n)
    band = f"n{lower}-" + ("" if upper >= 1 << 62 else str(upper))
    return f"{kind}/{str(dtype).removeprefix('torch.')}/{band}/threads{torch.get_num_threads()}"


def _machine() -> str:
    """Names what makes a stored choice valid: CPU model and count, library versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import scipy

        scipy_version = scipy.__version__
    except ImportError:
        scipy_version = "none"
    return f"{model} x{os.cpu_count()} torch {torch.__version__} scipy {scipy_version}"


def _disk_path() -> str | None:
    return os.environ.get(_ENV_CACHE) or None


def _load_disk() -> None:
    global _DISK_LOADED
    if _DISK_LOADED:
        return
    _DISK_LOADED = True
    path = _disk_path()
    if path is None or not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f).get(_machine(), {})
    except (OSError, ValueError, AttributeError):
        return  # an unreadable cache is a cache miss, never an error during training
    for key, name in stored.items():
        if name in _REGISTRY:
            _CHOICES.setdefault(key, name)


def _save_disk() -> None:
    path = _disk_path()
    if path is None:
        return
    try:
        stored: dict[str, Any] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
        stored[_machine()] = dict(_CHOICES)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass


def probe(
    candidates: list[Solver], n: int, dtype: torch.dtype, device: torch.device
) -> dict[str, float]:
    """Best-of-``_ROUNDS`` seconds of each candidate on one random symmetric n×n matrix (the
    order rotates between rounds, so a slow phase of a shared machine hits each one)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    matrix = (a + a.T).to(device, dtype).unsqueeze(0)
    best = dict.fromkeys((s.name for s in candidates), float("inf"))
    for r in range(_ROUNDS):
        order = candidates[r % len(candidates) :] + candidates[: r % len(candidates)]
        for solver in order:
            work = matrix.clone()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            solver.solve(work)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[solver.name] = min(best[solver.name], time.perf_counter() - start)
    return best


_ENVIRONMENT: list[str | None] = []


def _environment_choice() -> str | None:
    """``SPECTRAL_MONITOR_SOLVER``, read once, and again after :func:`clear_choices` (not on
    every solver call: the worker's Python time is the training thread's GIL wait)."""
    if not _ENVIRONMENT:
        _ENVIRONMENT.append(os.environ.get(_ENV_FORCE) or None)
    return _ENVIRONMENT[0]


def choose_solver(device: torch.device | str, dtype: torch.dtype, n: int) -> Solver:
    """The solver for n×n matrices of ``dtype`` on ``device``: the forced one where it runs,
    else torch below ``_PROBE_MIN`` columns or where it is the only candidate, else the
    probe's winner for the size band (probed on first use, kept for the process)."""
    device = torch.device(device)
    forced = _FORCED or _environment_choice()
    # The worker asks once per solver call: answer a repeated question without the lookups.
    fast_key = (device.type, dtype, n if n < _PROBE_MIN else _band(n)[0], forced)
    threads = torch.get_num_threads()
    known = _FAST.get((*fast_key, threads))
    if known is not None:
        return known
    solver = _choose(device, dtype, n, forced)
    _FAST[(*fast_key, threads)] = solver
    return solver


def _choose(device: torch.device, dtype: torch.dtype, n: int, forced: str | None) -> Solver:
    candidates = available_solvers(device)
    for solver in candidates:
        if solver.name == forced:
            return solver
    if len(candidates) == 1 or n < _PROBE_MIN or dtype not in (torch.float32, torch.float64):
        return candidates[0]
    key = _key(device.type, dtype, n)
    with _LOCK:  # one probe per key, even when two threads ask at once
        _load_disk()
        name = _CHOICES.get(key)
        if name is None or name not in _REGISTRY:
            times = probe(candidates, _band(n)[2], dtype, device)
            first = candidates[0].name
            fastest = min(times, key=lambda s: times[s])
            name = fastest if times[fastest] < (1 - _MARGIN) * times[first] else first
            _CHOICES[key] = name
            _save_disk()
    return _REGISTRY[name]
