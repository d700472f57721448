"""Where a run executes: device, threads, seeds and torch.distributed (specs/training.md §3).

Shared by ``detector/train.py`` and ``detector/evaluate.py``; every helper is a no-op or an
identity in a single process.
"""
import contextlib
import ctypes
import logging
import os
import platform
import random

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


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


#: glibc ``mallopt`` parameters and the values ``keep_freed_memory`` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD_BYTES = 2**30  # up to 1 GiB of freed heap stays in the process


def keep_freed_memory():
    """Let glibc's allocator keep and reuse the memory a training step frees (Linux).

    By default glibc returns freed blocks of a few MiB to the system (``mmap`` threshold,
    heap trimming), so every step's activations are mapped afresh and every page of them is
    faulted in again: on the CPU demo about 3,000 page faults per step, 5-10 % of its time
    (docs/benchmarks.md). ``mallopt`` raises both thresholds for this process; memory then
    stays at the peak of a step instead of dropping between steps. Returns True when applied,
    False on other C libraries (nothing changed). Values: specs/training.md §6.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    applied = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and applied


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
    ``solver.compile`` (``torch.compile`` of the forward pass) applied to a wrapped model.

    NHWC on a CPU with more than one thread logs a warning: oneDNN's 1x1-convolution weight
    gradient can crash there in this torch build (specs/training.md §3).
    """
    if channels_last:
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        if on_cpu and torch.get_num_threads() > 1:
            logger.warning("solver.channels_last with %d threads on a CPU can crash (a segmentation fault in "
                           "oneDNN's 1x1-convolution gradient, specs/training.md §3); threads=1 avoids it",
                           torch.get_num_threads())
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    return model
