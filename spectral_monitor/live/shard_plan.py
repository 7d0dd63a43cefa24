"""``ShardPlan``: who snapshots and analyses which layers, and how the parts come back together.

One object owns the every-rank rules of an analysis, so that the tracker only schedules:

- the layer order (the selection of :mod:`spectral_monitor.weights.layers`, the same on every rank);
- each rank's share (:func:`~spectral_monitor.live.distributed.assign_layers`, by cost);
- the snapshot, in which every rank gathers every sharded weight (a collective) and keeps its own;
- whether a busy worker may skip a snapshot (only when no collective is involved);
- the gather of the ranks' parts and their merge into the one report every rank takes in.

Unsharded (one process, or no ``gather``) the plan is trivial: every layer is this rank's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from spectral_monitor.analysis.config import AnalysisConfig
from spectral_monitor.analysis.snapshot import LayerSnapshot, select, take_snapshot
from spectral_monitor.live.distributed import Gather, assign_layers, merge_reports
from spectral_monitor.live.worker import AnalysisResult
from spectral_monitor.weights.sharded_weights import needs_collectives

__all__ = ["ShardPlan"]


@dataclass
class ShardPlan:
    """How analyses are split across ranks.

    Attributes:
        rank: this process's rank (0 when not sharded).
        world_size: the number of ranks sharing each analysis (1: not sharded).
        gather: collects one object from every rank, in rank order (None: not sharded).
    """

    rank: int = 0
    world_size: int = 1
    gather: Gather | None = None
    _pending: list[str] | None = field(default=None, repr=False)  # layer order in flight

    @classmethod
    def create(cls, rank: int, world_size: int, gather: Gather | None) -> ShardPlan:
        """A plan over ``world_size`` ranks; a single rank or no ``gather`` means no split."""
        if gather is None or world_size <= 1:
            return cls()
        return cls(rank, world_size, gather)

    @property
    def sharded(self) -> bool:
        """Whether each analysis is split across ranks (then submit and gather are
        collectives that every rank reaches at the same points)."""
        return self.gather is not None

    def may_skip(self, model: nn.Module, root: nn.Module | None = None) -> bool:
        """Whether a rank whose worker is busy may skip a snapshot (back-pressure). Not while
        sharded, and not when reading the weights whole is a collective (DTensor, FSDP): a
        rank that skipped would leave the others waiting in the gather."""
        return not self.sharded and not needs_collectives(model, root)

    def snapshot(
        self,
        model: nn.Module,
        config: AnalysisConfig,
        max_bytes: int | None = None,
        root: nn.Module | None = None,
    ) -> list[LayerSnapshot]:
        """This rank's share of a new analysis, copied (see
        :func:`~spectral_monitor.analysis.snapshot.take_snapshot`); remembers the layer order for
        :meth:`merge`."""
        only = None
        if self.sharded:
            only = assign_layers(model, config, self.world_size)[self.rank]
            self._pending = [spec.name for spec in select(model, config).specs]
        return take_snapshot(
            model, config, copy=True, max_bytes=max_bytes, only=only, root=root, catch=True
        )

    def merge(self, mine: list[AnalysisResult]) -> list[AnalysisResult]:
        """The whole analysis from this rank's finished part (a collective while sharded:
        every rank calls it at the same point). A failure on any rank is the result."""
        if not self.sharded:
            return mine
        assert self.gather is not None
        if self._pending is None:  # nothing submitted since the last gather, on any rank
            return []
        order, self._pending = self._pending, None
        part = mine[0] if mine else AnalysisResult(-1, None, "no result on this rank")
        parts: list[AnalysisResult] = self.gather(part)
        failed = [p for p in parts if p.report is None]
        if failed:
            return [failed[0]]
        reports = [p.report for p in parts if p.report is not None]
        return [AnalysisResult(part.step, merge_reports(reports, order))]

    def drop(self) -> None:
        """Forget the analysis in flight without gathering it (a failing run, where the other
        ranks may never arrive)."""
        self._pending = None
