"""Choosing the compute device and precision; nothing else in dn names a device."""

from __future__ import annotations

import contextlib

import torch

from dn_cli.errors import DnError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def select_device(spec: str = "auto", option: str = "--device") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; explicit choices must exist. ``option``:
    what the user gave it as, for the messages."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise DnError(f"unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DnError(f"{option} {spec}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DnError(f"{option} {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DnError(f"{option} mps: Apple MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DnError(f"unsupported device {spec!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain float32.

    ``auto`` is fp16 on CUDA (bf16 where fp16 is not faster is left to the user) and fp32
    elsewhere, where reduced precision is rarely faster.
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DnError("--precision bf16: this GPU does not support bfloat16")
    return dtype


def exact_fp32(device: torch.device, dtype: torch.dtype | None) -> None:
    """On CUDA, fp32 means fp32: cuDNN's default TF32 convolutions (10-bit mantissas) are turned off,
    so a GPU gives the CPU's results; reduced precision leaves the defaults alone."""
    if device.type == "cuda" and dtype is None:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for the model's forward (DN statistics opt out, see dense_norm)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
