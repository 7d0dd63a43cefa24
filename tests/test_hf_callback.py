"""SpectralTrainerCallback on a real transformers.Trainer (CPU, tiny random GPT-2 and BERT):
results read back from ``state.log_history``, TensorBoard event files and checkpoint folders."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from hf_helpers import TokenData, tiny_bert, tiny_gpt2, training_args
from lightning_helpers import TRUST_TINY
from tensorboard.backend.event_processing.event_accumulator import (
    HISTOGRAMS,
    SCALARS,
    TENSORS,
    EventAccumulator,
)
from transformers import Trainer

from spectral_monitor import SpectralTrainerCallback, analyze
from spectral_monitor.integrations.hf_callback import STATE_FILE


def spectral_logs(log_history: list[dict]) -> list[dict]:
    """The log_history entries holding the callback's scalars."""
    return [e for e in log_history if "spectral/alpha_mean" in e]


def test_importing_the_package_does_not_import_transformers() -> None:
    code = "import sys, spectral_monitor; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
    # Loaded on first use (this module's import above went through the package's __getattr__).
    assert SpectralTrainerCallback.__module__ == "spectral_monitor.integrations.hf_callback"


def test_takes_the_monitor_options() -> None:
    import inspect

    from spectral_monitor import SpectralMonitor

    assert inspect.signature(SpectralTrainerCallback) == inspect.signature(SpectralMonitor)
    assert "stop_patience: " in SpectralTrainerCallback.__doc__
    callback = SpectralTrainerCallback(7, stop_below=2.5, stop_on="alpha_min", prefix="p")
    assert callback.tracker.every_n_steps == 7 and callback.tracker.prefix == "p"
    assert callback.tracker.stop_rule is not None and callback.tracker.stop_rule.threshold == 2.5
    with pytest.raises(TypeError):
        SpectralTrainerCallback(stop_belo=2.0)
    with pytest.raises(ValueError, match="every_n_steps"):
        SpectralTrainerCallback(every_n_steps=0)


def test_gpt2_scalars_reach_log_history_and_hf_tensorboard_folder(tmp_path) -> None:
    """Step 0 is the initial weights and the last step the final ones (equal to analyze()); every
    analysis reaches log_history once, stamped with its step, and HF's TensorBoard run folder
    (one event file, beside HF's own loss) gets the scalars, histograms, verdicts and layout."""
    model = tiny_gpt2()
    initial = copy.deepcopy(model)
    callback = SpectralTrainerCallback(every_n_steps=5, **TRUST_TINY)
    args = training_args(tmp_path, max_steps=12, report_to=["tensorboard"])
    trainer = Trainer(model=model, args=args, train_dataset=TokenData(), callbacks=[callback])
    trainer.train()

    steps = [0, 5, 10, 12]
    assert callback.history.steps == steps
    means = dict(zip(steps, callback.history.aggregates["alpha_mean"], strict=True))
    assert means[0] == pytest.approx(analyze(initial, **TRUST_TINY).alpha_mean, rel=1e-6)
    assert means[12] == pytest.approx(analyze(model, **TRUST_TINY).alpha_mean, rel=1e-6)

    logged = spectral_logs(trainer.state.log_history)
    assert [e["step"] for e in logged] == steps
    assert {e["step"]: e["spectral/alpha_mean"] for e in logged} == pytest.approx(means)
    assert all(0 <= e["epoch"] <= 1.5 for e in logged)
    assert "spectral/alpha/transformer.h.0.attn.c_attn" in logged[0]
    # HF's own loss log is still there, at its own steps.
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [5, 10]

    runs = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    assert len(runs) == 1 and len(list(next(iter(runs)).iterdir())) == 1
    events = EventAccumulator(str(runs.pop()), size_guidance={SCALARS: 0, HISTOGRAMS: 0})
    events.Reload()
    tags = events.Tags()
    assert "train/loss" in tags["scalars"]
    alpha_mean = events.Scalars("train/spectral/alpha_mean")
    assert [e.step for e in alpha_mean] == steps
    assert [e.value for e in alpha_mean] == pytest.approx([means[s] for s in steps], rel=1e-6)
    histogram = "train/spectral/esd_log10/transformer.h.1.mlp.c_fc"
    assert [e.step for e in events.Histograms(histogram)] == steps
    assert "train/spectral/verdicts/text_summary" in tags["tensors"]
    assert "custom_scalars__config__" in tags["tensors"]
    assert "train/spectral/alpha_heatmap" in tags["images"]


def test_training_is_the_same_with_and_without_the_callback(tmp_path) -> None:
    """The callback only reads the weights: same losses and final weights, bit for bit."""
    runs = []
    for name, callbacks in (("without", []), ("with", [SpectralTrainerCallback(every_n_steps=2)])):
        model = tiny_gpt2()
        args = training_args(tmp_path / name, max_steps=4, logging_steps=1)
        trainer = Trainer(model=model, args=args, train_dataset=TokenData(), callbacks=callbacks)
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert len(losses_a) == 4 and losses_a == losses_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_bert_without_tensorboard_logs_scalars_and_says_what_is_not_sent(tmp_path) -> None:
    model = tiny_bert()
    callback = SpectralTrainerCallback(every_n_steps=4, **TRUST_TINY)
    args = training_args(tmp_path, max_steps=6)
    trainer = Trainer(
        model=model, args=args, train_dataset=TokenData(causal=False), callbacks=[callback]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert any("TensorBoard is not among report_to" in str(w.message) for w in caught)
    assert callback.history.steps == [0, 4, 6]
    logged = spectral_logs(trainer.state.log_history)
    assert [e["step"] for e in logged] == [0, 4, 6]
    assert "spectral/alpha/bert.encoder.layer.0.attention.self.query" in logged[-1]
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_stop_rule_stops_the_trainer(tmp_path) -> None:
    """alpha_mean is below 100 at every analysis: with patience 2 the rule fires at the second
    analysis (step 3, sync mode), the Trainer stops there, and TensorBoard gets the reason."""
    callback = SpectralTrainerCallback(
        every_n_steps=3, **TRUST_TINY, mode="sync",
        stop_below=100.0, stop_on="alpha_mean", stop_patience=2, start_step=0,
    )  # fmt: skip
    args = training_args(tmp_path, max_steps=30, report_to=["tensorboard"])
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(), callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == callback.stopped_step == 3
    assert callback.stop_reason is not None and "alpha_mean" in callback.stop_reason
    assert callback.history.steps == [0, 3]
    run = next(tmp_path.rglob("events.out.tfevents.*")).parent
    events = EventAccumulator(str(run), size_guidance={TENSORS: 0})
    events.Reload()
    assert "train/spectral/stop_reason/text_summary" in events.Tags()["tensors"]
    assert "train/spectral/stop_threshold" in events.Tags()["scalars"]


def train_gpt2(
    out: Path, resume: str | bool | None = None
) -> tuple[Trainer, SpectralTrainerCallback]:
    callback = SpectralTrainerCallback(every_n_steps=4, **TRUST_TINY)
    args = training_args(out, max_steps=10, save_strategy="steps", save_steps=5)
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback


@pytest.mark.slow
def test_resume_from_checkpoint_continues_the_history(tmp_path) -> None:
    """Runs resumed from checkpoint-5 (by its path, and by ``True`` in a folder where it is the
    last) continue the history saved with it: every analysed step once, in the callback and in
    log_history, with the values of the uninterrupted run."""
    _, full_callback = train_gpt2(tmp_path / "full")
    assert full_callback.history.steps == [0, 4, 8, 10]
    source = tmp_path / "full" / "checkpoint-5"
    saved = json.loads((source / STATE_FILE).read_text())
    assert saved["global_step"] == 5
    assert saved["tracker"]["history"]["aggregates"]["step"] == [0, 4]
    # The checkpoint's log_history already holds the analysis at 4 (taken in before the save).
    state = json.loads((source / "trainer_state.json").read_text())
    assert [e["step"] for e in spectral_logs(state["log_history"])] == [0, 4]

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copytree(source, alone / "checkpoint-5")
    for out, resume in ((tmp_path / "by_path", str(source)), (alone, True)):
        resumed, callback = train_gpt2(out, resume)
        assert callback.history.steps == [0, 4, 8, 10]
        assert [e["step"] for e in spectral_logs(resumed.state.log_history)] == [0, 4, 8, 10]
        assert callback.history.aggregates["alpha_mean"] == pytest.approx(
            full_callback.history.aggregates["alpha_mean"], rel=1e-5
        )


DDP_SCRIPT = Path(__file__).resolve().parent / "scripts" / "hf_ddp_run.py"


def run_hf_ddp(out: Path, *extra: str) -> list[dict]:
    """tests/scripts/hf_ddp_run.py on 2 CPU processes started by torchrun (gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        str(DDP_SCRIPT), str(out), *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_ddp_ranks_share_the_work_agree_stop_together_and_rank_zero_writes(tmp_path) -> None:
    """Two torchrun processes, a rule that fires at its second analysis: each rank analyses its
    share of the layers, both get the same whole history and log_history, the ranks take an
    analysis in when they start the next one, so both stop at step 10 (not 5); the last analysis
    equals analyze() of the final weights, and HF's TensorBoard folder holds one event file."""
    import torch

    ranks = run_hf_ddp(tmp_path, "--stop-below", "100")
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world_size"] == 2
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 10
    assert ranks[0]["stopped_step"] == ranks[1]["stopped_step"] == 10
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert h0["aggregates"]["step"] == [0, 5, 10]
    assert h0 == h1
    assert ranks[0]["logged_steps"] == ranks[1]["logged_steps"] == [0, 5, 10]
    model = tiny_gpt2()
    model.load_state_dict(torch.load(tmp_path / "final.pt"))
    expected = analyze(model, **TRUST_TINY)
    weight_bytes = sum(4 * la.shape[0] * la.shape[1] for la in expected.layers)
    assert min(r["snapshot_bytes"] for r in ranks) > 0
    assert sum(r["snapshot_bytes"] for r in ranks) == weight_bytes
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 0
    assert h0["aggregates"]["alpha_mean"][-1] == pytest.approx(expected.alpha_mean, rel=1e-6)
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 1


@pytest.mark.slow
def test_the_guide_example_runs_as_printed(tmp_path) -> None:
    """The Python block of docs/guide/huggingface.md, run as a user would paste it."""
    guide = Path(__file__).resolve().parents[1] / "docs" / "guide" / "huggingface.md"
    code = guide.read_text().split("```python\n")[1].split("```")[0]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "analysed steps: [0, 10, 20, 30, 40]" in done.stdout
    assert list((tmp_path / "hf_run" / "runs").rglob("events.out.tfevents.*"))
    assert (tmp_path / "hf_run" / "checkpoint-40" / "spectral_monitor_state.json").is_file()
