r"""
Spectral Balancer
=================

Acts on the monitor's alphas: a per-layer learning rate (TempBalance, Model Balancing, LLR) or
weight decay (AlphaDecay) as a drop-in Lightning callback beside
:class:`~spectral_monitor.SpectralMonitor`, on the monitor's asynchronous (and, under DDP, sharded)
analyses — no second SVD.

How the value reaches the optimizer (README "Acting on alpha"):

1. ``on_fit_start`` (after ``configure_optimizers``, before a checkpoint's optimizer state is
   restored): each analysed layer's parameters get a param group of their own, appended after the
   user's groups and copying the options of the group they came from; the user's schedulers get
   the matching per-group entries (:mod:`spectral_monitor.acting.param_groups`).
2. For each such group the balancer keeps ``base``, the value the user's configuration gives
   (their scheduler included), and writes ``base × factor`` into the group — what the optimizer
   uses and what ``LearningRateMonitor`` shows.
3. Around every scheduler step (the LightningModule's ``lr_scheduler_step``, which Lightning calls
   for every scheduler) the groups hold ``base`` again, so schedulers that compute from the
   current value (``CosineAnnealingLR``, ``LinearLR``, ``ReduceLROnPlateau``) see the user's
   value; the result is the new ``base``.
4. Anything else that writes the group's value between steps (a warm-up in ``optimizer_step``)
   is noticed before the optimizer steps and taken as the new ``base``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from spectral_monitor.acting.balance_factors import GROUPS, MAPPINGS, layer_factors
from spectral_monitor.acting.factor_ramp import FactorRamp
from spectral_monitor.acting.param_groups import (
    LAYERS_KEY,
    extend_schedulers,
    layer_owners,
    split_param_groups,
)
from spectral_monitor.analysis.snapshot import select
from spectral_monitor.integrations.lightning_callback import SpectralMonitor, _logging_step
from spectral_monitor.utilities.validation import check_choice, check_int, check_number

__all__ = ["DEFAULT_RANGES", "TARGETS", "SpectralBalancer"]

TARGETS = ("lr", "weight_decay")
#: The linear map's (low, high) per target: TempBalance's for lr, AlphaDecay's for weight decay.
DEFAULT_RANGES = {"lr": (0.5, 1.5), "weight_decay": (0.667, 3.0)}
_FACTOR_TAG = {"lr": "lr_factor", "weight_decay": "wd_factor"}


class SpectralBalancer(Callback):
    r"""Multiplies each analysed layer's learning rate (or weight decay) by a factor computed
    from its alpha in the latest analysis of a :class:`~spectral_monitor.SpectralMonitor` on the
    same Trainer, and updates the factors each time the monitor reports.

    The value in the optimizer param group that holds a layer's weight is the value the user's
    own configuration would give (scheduler included) times the layer's factor. Unreliable,
    skipped, excluded layers (and the first and last with ``skip_first_last``) keep factor 1.
    Factors are logged as ``<prefix>/lr_factor/<layer>`` (or ``wd_factor``), with the monitor's
    prefix, saved in checkpoints and restored on resume; under DDP every rank takes in the same
    merged report at the same step, so every rank applies the same factors.

    Args:
        target: ``"lr"`` (default) or ``"weight_decay"``.
        mapping: ``"linear"`` (default; TempBalance, AlphaDecay, LLR):
            ``low + (high − low)(α − α_min)/(α_max − α_min)``, or ``"sigmoid"`` (Model
            Balancing): ``10^(scale · (sigmoid(temperature · (α − mean α)) − 0.5))``.
        low: the linear map's factor at the smallest alpha; None: the target's default (0.5
            for ``lr`` as TempBalance; 0.667 for ``weight_decay`` as AlphaDecay).
        high: the linear map's factor at the largest alpha; None: the target's default (1.5
            for ``lr``; 3 for ``weight_decay``).
        scale: the sigmoid map's s (default 0.25).
        temperature: the sigmoid map's T (default 10).
        group: ``"layer"`` (default) or ``"block"``: map the mean alpha of each transformer
            block or parent module (``blocks.3``, ``model.layers.3``; see
            :func:`~spectral_monitor.acting.balance_factors.block_of`), every layer of a block takes
            its factor (Model Balancing, AlphaPruning).
        ramp_steps: move each factor linearly from its old to its new value over this many
            optimizer steps (LLR: 50); 0 (default): at once.
        exclude: glob patterns of layer names that keep factor 1.
        skip_first_last: the first and last analysed layers keep factor 1 (TempBalance's
            default; default True).
        monitor_prefix: the ``prefix`` of the monitor to follow when the Trainer has several;
            None: the only one.

    Raises:
        ValueError: an argument has a wrong type or value (the message names it); at fit start,
            when the Trainer has no matching monitor or several.

    Example::

        >>> import lightning as L
        >>> from spectral_monitor import SpectralBalancer, SpectralMonitor
        >>> monitor = SpectralMonitor(every_n_steps=200, estimator="hill_median")
        >>> balancer = SpectralBalancer(target="lr", low=0.5, high=1.5)
        >>> trainer = L.Trainer(callbacks=[monitor, balancer])
    """

    def __init__(
        self,
        target: str = "lr",
        mapping: str = "linear",
        low: float | None = None,
        high: float | None = None,
        scale: float = 0.25,
        temperature: float = 10.0,
        group: str = "layer",
        ramp_steps: int = 0,
        exclude: Sequence[str] | None = None,
        skip_first_last: bool = True,
        monitor_prefix: str | None = None,
    ) -> None:
        check_choice("target", target, TARGETS)
        check_choice("mapping", mapping, MAPPINGS)
        check_choice("group", group, GROUPS)
        default_low, default_high = DEFAULT_RANGES[target]
        self.low = check_number("low", default_low if low is None else low, above=0.0)
        self.high = check_number("high", default_high if high is None else high, above=0.0)
        if self.high < self.low:
            raise ValueError(f"high must be >= low, got low={self.low!r}, high={self.high!r}")
        self.scale = check_number("scale", scale)
        self.temperature = check_number("temperature", temperature, above=0.0)
        check_int("ramp_steps", ramp_steps, 0)
        if isinstance(exclude, str):
            exclude = [exclude]
        if exclude is not None and not all(isinstance(p, str) for p in exclude):
            raise ValueError(f"exclude must be a list of glob strings, got {exclude!r}")
        if not isinstance(skip_first_last, bool):
            raise ValueError(f"skip_first_last must be a bool, got {skip_first_last!r}")
        if monitor_prefix is not None and not isinstance(monitor_prefix, str):
            raise ValueError(f"monitor_prefix must be a string or None, got {monitor_prefix!r}")
        self.target, self.mapping, self.group = target, mapping, group
        self.ramp_steps = ramp_steps
        self.exclude = tuple(exclude or ())
        self.skip_first_last = skip_first_last
        self.monitor_prefix = monitor_prefix
        self._ramp = FactorRamp(ramp_steps)
        self._base: dict[str, float] = {}  # per balanced group (see groups): the user's value
        self._applied: dict[str, float] = {}  # per balanced group: the value written into it
        self._restored: dict[str, Any] | None = None
        self._monitor: SpectralMonitor | None = None
        self._optimizers: list[torch.optim.Optimizer] = []
        self._hooks: list[Any] = []
        self._scheduler_step: Any = None  # the module's own lr_scheduler_step, while wrapped
        self._warned: set[str] = set()

    # --- public state ------------------------------------------------------------------------

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(target=self.target, monitor_prefix=self.monitor_prefix)

    @property
    def factors(self) -> dict[str, float]:
        """The factor now applied, per analysed layer name."""
        return self._ramp.factors

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        """The balanced param groups (one per analysed layer and user group, or per set of
        layers sharing a parameter), by ``"<optimizer index>/<group index>"``: positions that a
        checkpoint's optimizer state keeps, unlike the group dicts it replaces."""
        return {
            f"{i}/{j}": group
            for i, opt in enumerate(self._optimizers)
            for j, group in enumerate(opt.param_groups)
            if LAYERS_KEY in group
        }

    # --- hooks -------------------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._monitor = self._find_monitor(trainer)
        specs = select(pl_module, self._monitor.tracker.config).specs
        names = [spec.name for spec in specs]
        if self._restored is None:  # a new run (not a resume): factors start at 1
            self._ramp.reset(names)
            self._base, self._applied = {}, {}
        else:
            self._ramp.add(names)
        owners = layer_owners(pl_module, specs)
        self._optimizers = list(trainer.optimizers)
        for optimizer in self._optimizers:
            before = len(optimizer.param_groups)
            parents = split_param_groups(optimizer, owners)
            schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
            mine = [s for s in schedulers if getattr(s, "optimizer", None) is optimizer]
            extend_schedulers(mine, before, parents)
        if not self.groups:
            self._warn_once(
                "no-groups",
                "SpectralBalancer: no optimizer parameter belongs to an analysed layer; "
                "nothing will be balanced.",
            )
        self._hooks = [
            opt.register_step_pre_hook(lambda optimizer, args, kwargs: self._before_step())
            for opt in self._optimizers
        ]
        self._wrap_scheduler_step(pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The optimizer state of a resumed run is in place now: it holds the applied values.
        restored = self._restored or {}
        for key, group in self.groups.items():
            if key in restored.get("base", {}):
                self._base[key] = restored["base"][key]
                self._applied[key] = restored["applied"][key]
            else:
                self._base[key] = self._applied[key] = group[self.target]
        self._restored = None
        self._apply()

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._update(trainer)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._scheduler_step is not None:
            # The wrapper was an instance attribute; removing it restores the class's method.
            pl_module.__dict__.pop("lr_scheduler_step", None)
            self._scheduler_step = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **self._ramp.state_dict(),
            "base": dict(self._base),
            "applied": dict(self._applied),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._ramp.load_state_dict(state_dict)
        self._restored = {
            "base": dict(state_dict.get("base", {})),
            "applied": dict(state_dict.get("applied", {})),
        }

    # --- steps -------------------------------------------------------------------------------

    def _find_monitor(self, trainer: Trainer) -> SpectralMonitor:
        # Trainer.callbacks is set by Lightning's callback connector, not declared on the class.
        callbacks: list[Callback] = getattr(trainer, "callbacks", [])
        monitors = [cb for cb in callbacks if isinstance(cb, SpectralMonitor)]
        if self.monitor_prefix is not None:
            monitors = [m for m in monitors if m.tracker.prefix == self.monitor_prefix]
        if len(monitors) != 1:
            which = "" if self.monitor_prefix is None else f" with prefix {self.monitor_prefix!r}"
            raise ValueError(
                f"SpectralBalancer needs exactly one SpectralMonitor{which} on the Trainer, "
                f"found {len(monitors)}"
                + ("; pass monitor_prefix to choose one" if len(monitors) > 1 else "")
            )
        return monitors[0]

    def _update(self, trainer: Trainer) -> None:
        """Take in a new report (new goal factors) and advance the ramp; write the values."""
        monitor = self._monitor
        report = None if monitor is None else monitor.latest
        changed = False
        if report is not None and report.step is not None and report.step != self._ramp.report_step:
            goal = layer_factors(
                report,
                self.mapping,
                self.low,
                self.high,
                self.scale,
                self.temperature,
                self.group,
                self.exclude,
                self.skip_first_last,
            )
            self._ramp.set_goal(goal, report.step, trainer.global_step)
            changed = True
        changed = self._ramp.advance(trainer.global_step) or changed
        if changed:
            self._apply()
            self._log(trainer)

    def _factor_of(self, group: dict[str, Any]) -> float:
        names = group[LAYERS_KEY]
        # A parameter shared by several analysed matrices (q, k, v of one in_proj_weight) takes
        # the mean of their factors.
        return sum(self.factors.get(n, 1.0) for n in names) / len(names)

    def _apply(self) -> None:
        for key, group in self.groups.items():
            if key not in self._base:
                continue
            self._sync(key, group)
            value = self._base[key] * self._factor_of(group)
            group[self.target] = value
            self._applied[key] = value

    def _sync(self, key: str, group: dict[str, Any]) -> None:
        """A value that is not the one last written was set by someone else (a warm-up in
        ``optimizer_step``, a scheduler outside Lightning's loop): it is the new base."""
        if key in self._applied and group[self.target] != self._applied[key]:
            self._base[key] = group[self.target]

    def _before_step(self) -> None:
        if any(
            key in self._applied and g[self.target] != self._applied[key]
            for key, g in self.groups.items()
        ):
            self._apply()

    def _wrap_scheduler_step(self, pl_module: LightningModule) -> None:
        """Schedulers step on the user's values: put the bases in, step, take the results as
        the new bases and re-apply the factors. Lightning calls ``lr_scheduler_step`` for every
        scheduler of automatic optimization; the wrapper is an instance attribute, removed at
        teardown."""
        own = pl_module.lr_scheduler_step
        self._scheduler_step = own

        def lr_scheduler_step(scheduler: Any, metric: Any) -> None:
            groups = self.groups
            for key, group in groups.items():
                if key in self._base:
                    self._sync(key, group)
                    group[self.target] = self._base[key]
            try:
                own(scheduler, metric)
            finally:
                for key, group in groups.items():
                    if key in self._base:
                        self._base[key] = self._applied[key] = group[self.target]
                self._apply()

        pl_module.__dict__["lr_scheduler_step"] = lr_scheduler_step

    def _log(self, trainer: Trainer) -> None:
        if self._monitor is None or not trainer.loggers:
            return
        tag = f"{self._monitor.tracker.prefix}/{_FACTOR_TAG[self.target]}"
        scalars = {f"{tag}/{name}": float(value) for name, value in self.factors.items()}
        step = _logging_step(trainer, after_batch=False)  # the monitor's step axis
        for logger in trainer.loggers:
            try:
                logger.log_metrics(scalars, step=step)
            except Exception as error:  # a logger's failure never stops training
                self._warn_once("logger", f"SpectralBalancer: logging failed ({error!r}).")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)
