"""Which weights are analysed, under which names, and how each becomes the matrices we fit.

This module is the one place that knows layer kinds: a new kind is added here (or by a user,
through :func:`register_layer`) and every entry point — :func:`~spectral_monitor.analyze` on a
module or a state dict, the tracker, the callback, the CLI, the distributed split — sees it.

Every analysed weight is brought to one layout, *(out, in, \\*kernel)*:

========================  =========================  ======================================
kind                      modules                    matrix
========================  =========================  ======================================
``"linear"``              ``nn.Linear`` (subclasses   W (out, in); GPT-2's ``Conv1D`` (weight
                          too), GPT-2 style           (in, out), duck-typed by ``nf``) is
                          ``Conv1D``                  transposed to (out, in)
``"attention"``           ``nn.MultiheadAttention``   ``in_proj.q``/``.k``/``.v``: the three
                                                      row blocks of ``in_proj_weight`` or the
                                                      separate ``q/k/v_proj_weight``
                                                      (``out_proj`` is a Linear)
``"conv1d"/"conv2d"/      ``nn.Conv1d/2d/3d``,        (out, in/groups, \\*k); a transposed
"conv3d"``                ``nn.ConvTranspose1d/2d/3d`` convolution's (in, out/groups, \\*k)
                                                      is swapped to (out/groups, in, \\*k)
``"rnn"``                 ``nn.LSTM/GRU/RNN``         each ``weight_ih_l{k}``/``weight_hh_l{k}``
                                                      (and ``_reverse``, ``weight_hr``), gates
                                                      stacked as torch stores them
``"embedding"``           ``nn.Embedding``            (num_embeddings, dim); only when asked
========================  =========================  ======================================

A convolution is one (out, in·prod(k)) matrix (``conv="flatten"``, the seed's convention) or
prod(k) matrices ``W[:, :, i, ...]`` whose eigenvalues are pooled (``conv="slices"``,
WeightWatcher's). A grouped convolution's weight holds each group's (out/groups, in/groups)
block stacked along the rows, and is analysed as that one stacked matrix (WeightWatcher does the
same); a depthwise convolution (groups = in) is therefore an (out, prod(k)) matrix when
flattened, and its slices are single columns (usually fewer eigenvalues than ``min_evals``).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import nn

from spectral_monitor.utilities.names import model_order

__all__ = [
    "CONV2D_MODES",
    "CONV_MODES",
    "DEFAULT_KINDS",
    "KINDS",
    "LAYER_KINDS",
    "LORA_MODES",
    "LayerFilter",
    "LayerSpec",
    "Selection",
    "left_out_message",
    "matrix_shape",
    "normalize_filter",
    "normalize_kinds",
    "register_layer",
    "select_layers",
    "select_state_dict",
    "weight_matrices",
]

CONV_MODES = ("flatten", "slices")
CONV2D_MODES = CONV_MODES  # the argument's old name, kept for imports
ConvMode = Literal["flatten", "slices"]
Conv2dMode = ConvMode

#: Every layer kind, and the module types a type filter (``layers=nn.Conv2d``) matches for each
#: when only a state dict is at hand.
LAYER_KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "attention": (nn.MultiheadAttention,),
    "conv1d": (nn.Conv1d, nn.ConvTranspose1d),
    "conv2d": (nn.Conv2d, nn.ConvTranspose2d),
    "conv3d": (nn.Conv3d, nn.ConvTranspose3d),
    "rnn": (nn.RNNBase,),
    "embedding": (nn.Embedding,),
}
KINDS = tuple(LAYER_KINDS)
#: Analysed unless ``kinds=`` says otherwise: every kind but embeddings (a lookup table, whose
#: rows for rare tokens barely train, reads differently from a layer that multiplies).
DEFAULT_KINDS = tuple(kind for kind in KINDS if kind != "embedding")

#: How a LoRA-wrapped layer is read: its effective weight W + scale·B·A, the adapter scale·B·A
#: alone, or the frozen base weight W.
LORA_MODES = ("effective", "adapter", "base")
LoraMode = Literal["effective", "adapter", "base"]

#: A filter entry: a glob pattern on the layer name (``"features.*"``), or a module type.
LayerFilterItem = Union[str, type]  # noqa: UP007 - a runtime alias must work on Python 3.10
LayerFilter = Union[LayerFilterItem, Sequence[LayerFilterItem], None]  # noqa: UP007

#: Parameters at least this large (and with >= 2 dims) that no kind covers are listed as left out.
LEFT_OUT_MIN_ELEMENTS = 4096


def normalize_filter(value: LayerFilter, argument: str) -> tuple[LayerFilterItem, ...] | None:
    """Check a ``layers``/``exclude`` argument and return it as a tuple (or None).

    Raises:
        ValueError: an entry is neither a string nor an ``nn.Module`` subclass.
    """
    if value is None:
        return None
    if not isinstance(value, (str, type, Sequence, set, frozenset)):
        raise ValueError(
            f"{argument} must be a name pattern, an nn.Module type or a list of them, got {value!r}"
        )
    items: Sequence[LayerFilterItem] = (value,) if isinstance(value, (str, type)) else tuple(value)
    for item in items:
        if isinstance(item, str):
            continue
        if isinstance(item, type) and issubclass(item, nn.Module):
            continue
        raise ValueError(
            f"{argument} must hold name patterns (str) or nn.Module types, got {item!r}"
        )
    return tuple(items)


def normalize_kinds(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Check a ``kinds`` argument: None (every kind but ``"embedding"``), ``"all"``, or kind
    names (:data:`KINDS` and those given to :func:`register_layer`) — returned as a tuple.

    Raises:
        ValueError: an entry is not a known kind.
    """
    if value is None:
        return None
    if value == "all":
        return (*KINDS, *_REGISTERED_KINDS)
    if not isinstance(value, (str, Sequence, set, frozenset)):
        raise ValueError(f"kinds must be a kind name, a list of them or 'all', got {value!r}")
    items = (value,) if isinstance(value, str) else tuple(value)
    known = (*KINDS, *_REGISTERED_KINDS)
    for item in items:
        if item not in known:
            raise ValueError(f"kinds must name kinds among {known} (or be 'all'), got {item!r}")
    if not items:
        raise ValueError("kinds must name at least one kind, got an empty sequence")
    return items


# --- one analysed matrix ------------------------------------------------------------------


def _transpose01(weight: torch.Tensor) -> torch.Tensor:
    return weight.transpose(0, 1)


@dataclass(frozen=True)
class LayerSpec:
    """Where one analysed layer's weight comes from; read by the snapshot.

    Attributes:
        name: the layer's name in reports (wrapper prefixes removed).
        kind: one of :data:`KINDS` (or a registered kind).
        shape: the weight's shape in the (out, in, \\*kernel) layout, or () when unknown.
        sources: the tensors read (parameters; DTensors are gathered whole by the snapshot).
        build: from the whole ``sources`` to the weight in the (out, in, \\*kernel) layout, or
            None when ``sources[0]`` is that weight as it is.
        part: tells apart matrices derived from the same sources (``"q"``, ``"k"``...); with
            ``sources`` it identifies a weight tied under two names.
        skipped: why the layer cannot be analysed (non-floating weights, ...), or None.
        module: the module whose type the ``layers``/``exclude`` type filters test (None for a
            state dict).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    sources: tuple[Any, ...]
    build: Callable[..., torch.Tensor] | None = None
    part: str = ""
    skipped: str | None = None
    module: nn.Module | None = None

    def weight(self, *full_sources: torch.Tensor) -> torch.Tensor:
        """The weight in the (out, in, \\*kernel) layout from ``sources`` (default: as held)."""
        tensors = full_sources or self.sources
        return tensors[0] if self.build is None else self.build(*tensors)


_NO_WEIGHT = "no initialised weight"


def _tensor_problem(tensor: Any) -> str | None:
    """Why a source tensor cannot be analysed, or None."""
    if not isinstance(tensor, torch.Tensor) or isinstance(
        tensor, nn.parameter.UninitializedParameter
    ):
        return _NO_WEIGHT
    if not tensor.is_floating_point():
        return (
            f"non-floating weight ({tensor.dtype}), not analysed raw: quantized codes are not "
            "the weights; dequantize to analyse"
        )
    return None


def _spec(
    name: str,
    kind: str,
    sources: Sequence[Any],
    shape: Callable[[], tuple[int, ...]] | None = None,
    build: Callable[..., torch.Tensor] | None = None,
    part: str = "",
    module: nn.Module | None = None,
) -> LayerSpec:
    """A spec, with the reason to skip it when a source is missing or not floating-point."""
    problem = next((p for p in map(_tensor_problem, sources) if p is not None), None)
    dims: tuple[int, ...] = ()
    if problem is None:
        dims = tuple(int(d) for d in (shape() if shape is not None else sources[0].shape))
    elif isinstance(sources[0], torch.Tensor) and _tensor_problem(sources[0]) != _NO_WEIGHT:
        dims = tuple(sources[0].shape)
    return LayerSpec(name, kind, dims, tuple(sources), build, part, problem, module)


# --- the kinds of modules -------------------------------------------------------------------

#: Extractor: (name, module, lora mode) -> the module's specs, and whether its children are
#: covered by them (not visited).
_Extractor = Callable[[str, nn.Module, str], tuple[list[LayerSpec], bool]]

_REGISTERED: list[tuple[type[nn.Module], Callable[[nn.Module], Mapping[str, torch.Tensor]], str]]
_REGISTERED = []
_REGISTERED_KINDS: list[str] = []


def register_layer(
    cls: type[nn.Module],
    matrices: Callable[[nn.Module], Mapping[str, torch.Tensor]],
    kind: str = "linear",
) -> None:
    """Teach the analysis a layer class of your own.

    Args:
        cls: the module class (subclasses match too); it takes precedence over built-in kinds.
        matrices: from a module of that class to its matrices, ``{suffix: weight}``, each weight
            in the (out, in) or (out, in, \\*kernel) layout; the suffix ``""`` names the layer
            after the module itself, any other is appended (``"<module>.<suffix>"``). It is
            called at every analysis on the training thread, so return views of the parameters
            or cheap expressions of them. The module's children are not visited.
        kind: the kind its layers are reported under (a built-in kind, e.g. ``"linear"``, or a
            new name, which ``kinds=`` then accepts; analysed by default).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from spectral_monitor import analyze, register_layer
        >>> class Bilinear(nn.Module):  # y = U (V x): two factors, analysed as their product
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.u = nn.Parameter(torch.randn(64, 16))
        ...         self.v = nn.Parameter(torch.randn(16, 48))
        >>> register_layer(Bilinear, lambda m: {"": m.u @ m.v, "v": m.v})
        >>> [layer.name for layer in analyze(nn.Sequential(Bilinear())).layers]
        ['0', '0.v']
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"cls must be an nn.Module subclass, got {cls!r}")
    if not callable(matrices):
        raise ValueError(f"matrices must be callable, got {matrices!r}")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    _REGISTERED[:] = [entry for entry in _REGISTERED if entry[0] is not cls]
    _REGISTERED.insert(0, (cls, matrices, kind))
    if kind not in KINDS and kind not in _REGISTERED_KINDS:
        _REGISTERED_KINDS.append(kind)


def _registered(name: str, module: nn.Module, lora: str) -> tuple[list[LayerSpec], bool] | None:
    for cls, matrices, kind in _REGISTERED:
        if isinstance(module, cls):
            specs = [
                _spec(f"{name}.{suffix}" if suffix else name, kind, [w], module=module)
                for suffix, w in matrices(module).items()
            ]
            return specs, True
    return None


def _linear(name: str, module: nn.Module, lora: str) -> tuple[list[LayerSpec], bool]:
    return [_spec(name, "linear", [module.weight], module=module)], False


def _is_gpt2_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` (transformers): a 2-D weight (in, out) and ``nf`` = out."""
    weight = getattr(module, "weight", None)
    return (
        isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


def _swapped(weight: torch.Tensor) -> Callable[[], tuple[int, ...]]:
    """The shape of ``weight.transpose(0, 1)``, computed when asked (not for a lazy weight)."""
    return lambda: (weight.shape[1], weight.shape[0], *weight.shape[2:])


def _gpt2_conv1d(name: str, module: Any, lora: str) -> tuple[list[LayerSpec], bool]:
    weight = module.weight
    return [
        _spec(name, "linear", [weight], _swapped(weight), _transpose01, "T", module=module)
    ], False


def _conv(name: str, module: Any, lora: str) -> tuple[list[LayerSpec], bool]:
    weight = module.weight
    kind = f"conv{len(module.kernel_size)}d"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return [
            _spec(name, kind, [weight], _swapped(weight), _transpose01, "T", module=module)
        ], False
    return [_spec(name, kind, [weight], module=module)], False


def _rows(start: int, stop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def build(weight: torch.Tensor) -> torch.Tensor:
        return weight[start:stop]

    return build


def _attention_specs(
    name: str, packed: Any, separate: Sequence[Any], module: nn.Module | None
) -> list[LayerSpec]:
    """``<name>.in_proj.q/k/v`` from a packed (3E, E) weight or three separate ones."""
    if packed is not None:
        rows = packed.shape[0] // 3 if _tensor_problem(packed) != _NO_WEIGHT else 0
        return [
            _spec(
                f"{name}.in_proj.{part}",
                "attention",
                [packed],
                lambda: (rows, packed.shape[1]),
                _rows(k * rows, (k + 1) * rows),
                part,
                module,
            )
            for k, part in enumerate("qkv")
        ]
    return [
        _spec(f"{name}.in_proj.{part}", "attention", [weight], module=module)
        for part, weight in zip("qkv", separate, strict=True)
        if weight is not None
    ]


def _attention(name: str, module: nn.Module, lora: str) -> tuple[list[LayerSpec], bool]:
    mha: nn.MultiheadAttention = module  # type: ignore[assignment]
    separate = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    return _attention_specs(name, mha.in_proj_weight, separate, module), False


def _rnn(name: str, module: nn.Module, lora: str) -> tuple[list[LayerSpec], bool]:
    rnn: nn.RNNBase = module  # type: ignore[assignment]
    specs = [
        _spec(f"{name}.{attr}", "rnn", [getattr(rnn, attr)], module=module)
        for attr in rnn._flat_weights_names
        if attr.startswith("weight_")
    ]
    return specs, True


def _embedding(name: str, module: nn.Module, lora: str) -> tuple[list[LayerSpec], bool]:
    return [_spec(name, "embedding", [module.weight], module=module)], False


def _is_quantized(module: nn.Module) -> bool:
    """A ``torch.ao`` quantized module: its ``weight`` is a method returning packed codes."""
    return type(module).__module__.startswith("torch.ao.nn.quantized") and callable(
        getattr(module, "weight", None)
    )


def _quantized(name: str, module: nn.Module, lora: str) -> tuple[list[LayerSpec], bool]:
    cls = type(module).__name__
    match = re.search(r"Conv(\d)d", cls)
    kind = f"conv{match.group(1)}d" if match else "linear"
    reason = f"quantized module ({type(module).__module__}.{cls}): dequantize to analyse"
    return [LayerSpec(name, kind, (), (), None, "", reason, module)], True


def _is_lora(module: nn.Module) -> bool:
    """A peft LoRA layer (duck-typed: no import of peft)."""
    return all(hasattr(module, a) for a in ("base_layer", "lora_A", "lora_B", "scaling"))


def _lora(name: str, module: Any, lora: str) -> tuple[list[LayerSpec], bool]:
    """A LoRA layer under its base layer's name: W + Σ scale·B·A over the active adapters (a
    merged adapter is already in W), the adapters' Σ scale·B·A, or the frozen W."""
    base_specs, _ = _extract(name, module.base_layer, lora) or ([], False)
    if lora == "base" and not getattr(module, "merged_adapters", []):
        return [_with_module(s, module.base_layer) for s in base_specs], True
    active = [a for a in _as_list(getattr(module, "active_adapters", [])) if a in module.lora_A]
    merged = set(_as_list(getattr(module, "merged_adapters", [])))
    base = base_specs[0] if len(base_specs) == 1 else None
    reason = None
    if base is None or len(base.shape) != 2 or base.skipped is not None:
        reason = (base.skipped if base is not None else None) or (
            f"LoRA on {type(module.base_layer).__name__} is not supported"
        )
    elif any(getattr(module, "use_dora", {}).get(a, False) for a in active):
        reason = "DoRA adapter: its effective weight is not W + scale·B·A"
    elif not all(isinstance(module.lora_A[a], nn.Linear) for a in active):
        reason = "LoRA factors that are not Linear layers"
    if reason is not None:
        if lora == "base":
            reason = f"{reason} (and an adapter is merged into the base weight)"
        reason += "; lora='base' analyses the frozen weight"
        return [LayerSpec(name, "linear", (), (), None, "", reason, module.base_layer)], True
    assert base is not None
    terms = {
        "effective": [a for a in active if a not in merged],
        "adapter": active,
        "base": sorted(merged),
    }[lora]
    factors = [(module.lora_B[a].weight, module.lora_A[a].weight) for a in terms]
    scales = [float(module.scaling[a]) for a in terms]
    sign = -1.0 if lora == "base" else 1.0
    n_base = len(base.sources)
    base_build = base.build

    def build(*tensors: torch.Tensor) -> torch.Tensor:
        weight = tensors[0] if base_build is None else base_build(*tensors[:n_base])
        out = torch.zeros_like(weight, dtype=torch.float32) if lora == "adapter" else None
        if out is None:
            out = weight.to(torch.float32, copy=True)
        pairs = tensors[n_base:]
        for k, scale in enumerate(scales):
            b, a = pairs[2 * k].to(torch.float32), pairs[2 * k + 1].to(torch.float32)
            out.add_(b @ a, alpha=sign * scale)
        return out

    sources = [*base.sources, *(t for pair in factors for t in pair)]
    shape = base.shape
    spec = _spec(name, "linear", sources, lambda: shape, build, f"lora:{lora}", module.base_layer)
    return [spec], True


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _with_module(spec: LayerSpec, module: nn.Module) -> LayerSpec:
    return LayerSpec(
        spec.name, spec.kind, spec.shape, spec.sources, spec.build, spec.part, spec.skipped, module
    )


#: Built-in kinds, tried in order after the registered ones: (test, extractor).
_BUILTIN: tuple[tuple[Callable[[nn.Module], bool], _Extractor], ...] = (
    (_is_lora, _lora),
    (_is_quantized, _quantized),
    (lambda m: isinstance(m, nn.Linear), _linear),
    (lambda m: isinstance(m, nn.modules.conv._ConvNd), _conv),
    (lambda m: isinstance(m, nn.MultiheadAttention), _attention),
    (lambda m: isinstance(m, nn.RNNBase), _rnn),
    (lambda m: isinstance(m, nn.Embedding), _embedding),
    (_is_gpt2_conv1d, _gpt2_conv1d),
)


def _extract(name: str, module: nn.Module, lora: str) -> tuple[list[LayerSpec], bool] | None:
    """The specs of one module and whether its children are covered, or None (not a layer)."""
    found = _registered(name, module, lora)
    if found is not None:
        return found
    for test, extractor in _BUILTIN:
        if test(module):
            return extractor(name, module, lora)
    return None


# --- names ----------------------------------------------------------------------------------

# Attribute names under which torch.compile, FSDP (1) and activation checkpointing hold the
# module they wrap; they are not part of the user's layer names.
_WRAPPER_NAMES = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def _clean_parts(name: str) -> list[str]:
    """A dotted name without wrapper components and without peft's ``base_model.model``
    (a PeftModel holds the user's model there, also inside a LightningModule)."""
    parts = [part for part in name.split(".") if part and part not in _WRAPPER_NAMES]
    out: list[str] = []
    k = 0
    while k < len(parts):
        if parts[k : k + 2] == ["base_model", "model"]:
            k += 2
            continue
        out.append(parts[k])
        k += 1
    return out


def _clean(name: str) -> str:
    return ".".join(_clean_parts(name)) or "root"


def _user_model(model: nn.Module) -> nn.Module:
    """The user's model inside DDP/DataParallel: layer names start below ``module``."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _walk(module: nn.Module, prefix: str, lora: str, covered: set[int]) -> Iterator[LayerSpec]:
    """Specs in module order; adds to ``covered`` the ids of the parameters of every module a
    kind covers (all of them below a module whose children are not visited)."""
    found = _extract(_clean(prefix), module, lora)
    if found is not None:
        specs, whole = found
        yield from specs
        covered.update(id(p) for p in module.parameters(recurse=whole))
        if whole:
            return
    for child_name, child in module.named_children():
        yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name, lora, covered)


# --- selection ------------------------------------------------------------------------------


def _storage_key(tensor: Any) -> tuple[Any, ...]:
    """Identifies a tensor's values: two names of one tied weight give the same key."""
    if (
        not isinstance(tensor, torch.Tensor)
        or tensor.is_meta
        or hasattr(tensor, "full_tensor")
        or isinstance(tensor, nn.parameter.UninitializedParameter)
        or tensor.numel() == 0
    ):
        return ("id", id(tensor))
    return (
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
    )


def _matches(spec: LayerSpec, items: tuple[LayerFilterItem, ...]) -> bool:
    """Whether a layer matches a filter: a glob on its name, or a type; without a module (a
    state dict) a type matches the kinds it stands for (see :data:`LAYER_KINDS`)."""
    for item in items:
        if isinstance(item, str):
            if fnmatch.fnmatchcase(spec.name, item):
                return True
        elif spec.module is not None:
            if isinstance(spec.module, item):
                return True
        elif any(issubclass(t, item) for t in LAYER_KINDS.get(spec.kind, ())):
            return True
    return False


@dataclass(frozen=True)
class Selection:
    """The layers an analysis looks at, and what it leaves out.

    Attributes:
        specs: the selected layers in model order, a tied weight once (under its first name).
        left_out: ``(name, shape)`` of floating-point weights with >= 2 dims and >= 4,096
            elements that no layer kind covers (whatever ``kinds``/``layers`` select).
    """

    specs: list[LayerSpec]
    left_out: list[tuple[str, tuple[int, ...]]]


def _select(
    specs: Sequence[LayerSpec],
    kinds: Sequence[str] | None,
    layers: tuple[LayerFilterItem, ...] | None,
    exclude: tuple[LayerFilterItem, ...] | None,
) -> list[LayerSpec]:
    selected, seen = [], set()
    for spec in specs:
        if spec.kind not in kinds if kinds is not None else spec.kind == "embedding":
            continue
        if layers is not None and not _matches(spec, layers):
            continue
        if exclude is not None and _matches(spec, exclude):
            continue
        key = (tuple(_storage_key(s) for s in spec.sources), spec.part)
        if spec.sources and key in seen:
            continue  # a tied weight: analysed once, under its first name
        seen.add(key)
        selected.append(spec)
    return selected


def _is_left_out(tensor: Any) -> bool:
    return (
        isinstance(tensor, torch.Tensor)
        and not isinstance(tensor, nn.parameter.UninitializedParameter)
        and tensor.is_floating_point()
        and tensor.dim() >= 2
        and tensor.numel() >= LEFT_OUT_MIN_ELEMENTS
    )


def select_layers(
    model: nn.Module,
    layers: tuple[LayerFilterItem, ...] | None = None,
    exclude: tuple[LayerFilterItem, ...] | None = None,
    kinds: Sequence[str] | None = None,
    lora: str = "effective",
) -> Selection:
    """The analysed layers of a module, in ``named_modules()`` order.

    Args:
        model: any module (DDP, peft and ``torch.compile`` wrappers are seen through).
        layers: keep only layers whose name matches one of these glob patterns or whose module
            is one of these types; None keeps every layer of ``kinds``.
        exclude: drop layers matching any of these patterns or types (applied after ``layers``).
        kinds: the kinds to analyse (see :data:`KINDS`); None: every kind but embeddings.
        lora: how a peft LoRA layer is read (see :data:`LORA_MODES`).

    Returns:
        The :class:`Selection`; a layer that is the root module is named ``"root"``; the
        wrappers of ``torch.compile``, FSDP and activation checkpointing do not appear in names.
    """
    covered: set[int] = set()
    every = list(_walk(_user_model(model), "", lora, covered))
    left_out = [
        (_clean(name), tuple(p.shape))
        for name, p in _user_model(model).named_parameters()
        if id(p) not in covered and _is_left_out(p)
    ]
    return Selection(_select(every, kinds, layers, exclude), left_out)


# --- state dicts ----------------------------------------------------------------------------

_RNN_KEY = re.compile(r"^(?:(.*)\.)?(weight_(?:ih|hh|hr)_l\d+(?:_reverse)?)$")
_MHA_SEPARATE = {"q_proj_weight": "q", "k_proj_weight": "k", "v_proj_weight": "v"}
#: Module names under which GPT-2-family models hold ``Conv1D`` layers, stored (in, out).
GPT2_CONV1D_NAMES = frozenset({"c_attn", "c_fc", "c_proj", "q_attn"})
_LORA_KEY = re.compile(r"^(.*)\.(?:lora_A|lora_B)\.[^.]+\.weight$")


def _is_embedding_name(module_name: str) -> bool:
    """Whether a 2-D weight's module name says embedding (``embed``, ``wte``, ``wpe`` ...)."""
    last = module_name.rsplit(".", 1)[-1].lower()
    return "emb" in last or last in ("wte", "wpe")


def _strip_prefixes(keys: Sequence[str]) -> dict[str, str]:
    """Key -> name without wrapper components, without peft's ``base_model.model`` and
    without a leading ``module.`` (DDP) shared by every key."""
    cleaned = {key: ".".join(_clean_parts(key)) for key in keys}
    if cleaned and all(c.startswith("module.") for c in cleaned.values()):
        cleaned = {k: c[len("module.") :] for k, c in cleaned.items()}
    return cleaned


def _state_dict_specs(state_dict: Mapping[str, Any], lora: str) -> tuple[list[LayerSpec], set[str]]:
    """Specs from a state dict's keys and shapes, in model order
    (:func:`~spectral_monitor.utilities.names.model_order`), and the keys they read."""
    names = _strip_prefixes([k for k in state_dict if isinstance(k, str)])
    # Model order, not key order: safetensors files keep their keys sorted as strings
    # ("layer.10" before "layer.2", "attention.output" before "attention.self").
    place = {name: i for i, name in enumerate(model_order(list(names.values())))}
    names = dict(sorted(names.items(), key=lambda item: place[item[1]]))
    specs: list[LayerSpec] = []
    used: set[str] = set()
    lora_bases = {m.group(1) for m in map(_LORA_KEY.match, names.values()) if m}
    done_attention: set[str] = set()
    for key, name in names.items():
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor):
            continue
        module, _, leaf = name.rpartition(".")
        owner = module or "root"
        if ".lora_" in f".{name}" or name.endswith(".lora_magnitude_vector"):
            used.add(key)
            continue
        if leaf == "in_proj_weight" and tensor.dim() == 2:
            specs += _attention_specs(owner, tensor, (), None)
        elif leaf in _MHA_SEPARATE:
            if owner not in done_attention:
                done_attention.add(owner)
                prefix = f"{module}." if module else ""
                inverse = {v: k for k, v in names.items()}
                separate = [state_dict.get(inverse.get(f"{prefix}{w}", "")) for w in _MHA_SEPARATE]
                specs += _attention_specs(owner, None, separate, None)
                used.update(k for k in (inverse.get(f"{prefix}{w}") for w in _MHA_SEPARATE) if k)
        elif _RNN_KEY.match(name) is not None:
            specs.append(_spec(name, "rnn", [tensor]))
        elif leaf == "weight" and module.endswith("base_layer") and module[:-11] in lora_bases:
            base = module[: -len(".base_layer")] or "root"
            if lora == "base":
                specs.append(_weight_spec(base, tensor))
            else:
                reason = (
                    "LoRA scale is not stored in a state dict: analyse the module, or "
                    "lora='base' for the frozen weight"
                )
                specs.append(LayerSpec(base, "linear", tuple(tensor.shape), (), None, "", reason))
        elif leaf == "weight" and tensor.dim() in (2, 3, 4, 5):
            specs.append(_weight_spec(owner, tensor))
        else:
            continue
        used.add(key)
    return specs, used


def _weight_spec(name: str, tensor: torch.Tensor) -> LayerSpec:
    """A ``*.weight`` tensor by its dimensions (and, for 2-D, its module name)."""
    if tensor.dim() > 2:
        return _spec(name, f"conv{tensor.dim() - 2}d", [tensor])
    last = name.rsplit(".", 1)[-1]
    if _is_embedding_name(name):
        return _spec(name, "embedding", [tensor])
    if last in GPT2_CONV1D_NAMES:
        return _spec(name, "linear", [tensor], _swapped(tensor), _transpose01, "T")
    return _spec(name, "linear", [tensor])


def select_state_dict(
    state_dict: Mapping[str, Any],
    layers: tuple[LayerFilterItem, ...] | None = None,
    exclude: tuple[LayerFilterItem, ...] | None = None,
    kinds: Sequence[str] | None = None,
    lora: str = "effective",
) -> Selection:
    """The analysed layers of a state dict, when no model class is at hand; the same names as
    :func:`select_layers` gives for the module, as far as keys and shapes can tell:

    - ``*.weight``: 2-D is a Linear weight (out, in) — or an embedding when its module name says
      so (contains ``emb``, or is ``wte``/``wpe``), or a GPT-2 ``Conv1D`` (in, out) under the
      names ``c_attn``/``c_fc``/``c_proj``/``q_attn``; 3-/4-/5-D is a Conv1d/2d/3d weight (a
      transposed convolution cannot be told apart and is read as a plain one);
    - ``*.in_proj_weight`` and ``*.q/k/v_proj_weight``: attention, ``<m>.in_proj.q`` ...;
    - ``*.weight_ih_l0`` ...: RNN matrices;
    - peft LoRA keys: the base layer's name, ``lora='base'`` only (the scale is not stored);
    - wrapper names are removed (``_orig_mod``, ``_fsdp_wrapped_module``,
      ``_checkpoint_wrapped_module``, peft's ``base_model.model``, a ``module.`` on every
      key); tied weights (one storage under two keys, as ``torch.save`` keeps them) are
      analysed once, under the first key.
    """
    specs, used = _state_dict_specs(state_dict, lora)
    left_out = [
        (name, tuple(state_dict[key].shape))
        for key, name in _strip_prefixes([k for k in state_dict if isinstance(k, str)]).items()
        if key not in used and _is_left_out(state_dict[key])
    ]
    return Selection(_select(specs, kinds, layers, exclude), left_out)


def left_out_message(left_out: Sequence[tuple[str, tuple[int, ...]]], limit: int = 10) -> str:
    """One line naming the weights no layer kind covers (at most ``limit``, then a count)."""
    shown = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in left_out[:limit])
    more = f" and {len(left_out) - limit} more" if len(left_out) > limit else ""
    return (
        f"{len(left_out)} weight(s) with >= 2 dims and >= {LEFT_OUT_MIN_ELEMENTS} elements are "
        f"not analysed, no layer kind covers them: {shown}{more} "
        "(spectral_monitor.register_layer adds a kind)"
    )


# --- matrices -------------------------------------------------------------------------------


def matrix_shape(weight_shape: Sequence[int], conv: ConvMode) -> tuple[int, int, int]:
    """``(count, rows, cols)`` of the matrices :func:`weight_matrices` makes, rows >= cols."""
    if len(weight_shape) == 2:
        count, a, b = 1, weight_shape[0], weight_shape[1]
    elif 3 <= len(weight_shape) <= 5:
        out, inp, *kernel = weight_shape
        if conv == "flatten":
            count, a, b = 1, out, inp * math.prod(kernel)
        else:
            count, a, b = math.prod(kernel), out, inp
    else:
        raise ValueError(f"expected a 2-D to 5-D weight, got shape {tuple(weight_shape)}")
    return count, max(a, b), min(a, b)


def weight_matrices(weight: torch.Tensor, conv: ConvMode = "flatten") -> torch.Tensor:
    """The matrices of one layer's weight, stacked and oriented tall.

    Args:
        weight: (out, in) or (out, in, \\*kernel) with 1 to 3 kernel dimensions.
        conv: ``"flatten"`` gives one (out, in·prod(kernel)) matrix; ``"slices"`` gives the
            prod(kernel) matrices ``W[:, :, i, ...]``.

    Returns:
        (count, rows, cols) with rows >= cols (transposed where needed: the nonzero eigenvalues
        of WᵀW and WWᵀ are the same), sharing storage with ``weight`` where possible.
    """
    if weight.dim() == 2:
        mats = weight.unsqueeze(0)
    elif 3 <= weight.dim() <= 5:
        if conv == "flatten":
            mats = weight.reshape(weight.shape[0], -1).unsqueeze(0)
        else:
            kernel_first = weight.permute(*range(2, weight.dim()), 0, 1)
            mats = kernel_first.reshape(-1, weight.shape[0], weight.shape[1])
    else:
        raise ValueError(f"expected a 2-D to 5-D weight, got shape {tuple(weight.shape)}")
    if mats.shape[1] < mats.shape[2]:
        mats = mats.transpose(1, 2)
    return mats
