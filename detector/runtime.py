"""Where a run executes: device, threads, seeds and torch.distributed (specs/training.md §3).

Shared by ``detector/train.py`` and ``detector/evaluate.py``; every helper is a no-op or an
identity in a single process.
"""
import contextlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist


def select_device(name="auto"):
    """``torch.device`` of a config's ``device``: "auto" takes this process's GPU (torchrun's
    ``LOCAL_RANK``) when CUDA is available, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def set_threads(threads):
    """torch's intra-op threads: ``threads`` if > 0, else every core of the machine."""
    torch.set_num_threads(threads if threads > 0 else max(1, os.cpu_count() or 1))


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_distributed(device):
    """Initialise torch.distributed under torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def teardown_distributed():
    """Destroy the process group, if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_mean(tensor):
    """Mean of ``tensor`` over processes (identity in a single process)."""
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / world_size()


def all_reduce_min(tensor):
    """Minimum of ``tensor`` over processes (identity in a single process)."""
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def wrap_model(model, device):
    """``model`` in DistributedDataParallel when several processes run, else itself."""
    if world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(model):
    """The module inside the ``torch.compile`` and DistributedDataParallel wrappers (or
    ``model`` itself)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


#: ``solver.amp`` choices: "off" (float32), "bf16" (the forward pass under autocast to
#: bfloat16; CPU and CUDA) and "fp16" (autocast to float16 with a gradient scaler; CUDA).
AMP_MODES = ("off", "bf16", "fp16")


def check_amp(amp, device):
    """Raise a one-line ValueError when ``solver.amp`` cannot run on ``device``."""
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"solver.amp=fp16: float16 training needs a CUDA device (with its gradient scaler), "
                         f"this run is on {device.type}; use solver.amp=bf16 there")


def autocast(device, amp):
    """The context of a forward pass under ``solver.amp`` (a no-op for "off")."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def gradient_scaler(device, amp):
    """The loss scaler of float16 training (``torch.amp.GradScaler``), or None."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def prepare_model(model, channels_last=False, compile_model=False):
    """``solver.channels_last`` (NHWC weights; the images follow in ``engine.train_step``) and
    ``solver.compile`` (``torch.compile`` of the forward pass) applied to a wrapped model."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    return model
