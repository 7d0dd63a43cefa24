"""Which torch devices this machine has, so that an option naming a device is checked where it
is given (a Trainer's first analysis must not be the place where ``device="cuda"`` on a laptop
fails)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["available_devices", "check_device"]


def _backend_count(kind: str) -> int:
    """How many devices of ``kind`` (``"cuda"``, ``"xpu"``, ``"mps"``...) torch can use here."""
    if kind == "cuda":
        # Lightning's count reads NVML, so it leaves CUDA uninitialised (fork strategies need it).
        from lightning.fabric.accelerators.cuda import num_cuda_devices

        return int(num_cuda_devices())
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        return int(backend is not None and backend.is_available())
    module = getattr(torch, kind, None)
    is_available = getattr(module, "is_available", None)
    if not callable(is_available) or not is_available():
        return 0
    count = getattr(module, "device_count", None)
    return int(count()) if callable(count) else 1


def available_devices() -> list[str]:
    """``"cpu"`` and every accelerator torch can use here (``"cuda:0"``, ``"mps"``...)."""
    out = ["cpu"]
    for kind in ("cuda", "xpu", "mps"):
        count = _backend_count(kind)
        out += [kind] if kind == "mps" and count else [f"{kind}:{i}" for i in range(count)]
    return out


def check_device(name: str, value: Any) -> torch.device | None:
    """``value`` as a ``torch.device`` that exists on this machine, or None for None.

    Raises:
        ValueError: not a device, the ``meta`` device (it holds no values), or a device this
            machine does not have; the message names ``name`` and lists what is available.
    """
    if value is None:
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{name} must be a torch device, got {value!r}") from error
    if device.type == "cpu":
        return device
    if device.type == "meta":
        raise ValueError(f"{name}={value!r}: the meta device holds no values to analyse")
    if device.type in ("cuda", "xpu", "mps"):
        count = _backend_count(device.type)
        index = 0 if device.index is None else device.index
        if index >= count:
            have = ", ".join(available_devices())
            raise ValueError(
                f"{name}={value!r} is not available on this machine (torch sees "
                f"{count} {device.type} device{'s' if count != 1 else ''}); available: {have}. "
                f"Leave {name}=None to analyse where the weights are."
            )
    return device
