"""
What a script needs from the shell and the machine (a leaf: imports nothing of the project, and
torch only inside the functions that use it, so that a script installs its Ctrl-C handler before
the libraries load):

- How a script ends: die(msg) is the one line on bad input; exit_on_ctrl_c, ctrl_c_raises and
  work_done say what Ctrl-C does at each moment. Library functions raise ValueError; scripts turn
  it into one line with die.
- Where it computes: pick_device, precision (device, dtype, autocast, loss scaler), to_device.
- What the machine can do: check_memory (a floor before allocating), and the peak FLOP/s of the GPU
  in use for the model FLOPs utilisation (mfu).
"""

import os
import signal
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace


def die(msg, code=1):
    """The one way out on bad input: `error: msg`, one line on stderr, and exit code (1: raised as
    SystemExit("error: msg"), which Python prints at exit and a caller or a test can catch). Under
    torchrun every rank fails alike, so rank 0 says it, and the others wait a moment first:
    torchrun stops every rank as soon as one has exited."""
    if int(os.environ.get("RANK", 0)) != 0:
        time.sleep(5)
        sys.exit(code)
    if code == 1:
        raise SystemExit(f"error: {msg}")
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def exit_on_ctrl_c(what, at_once=False):
    """From now on Ctrl-C ends the script with one line, `error: interrupted; what`, and exit code
    130. The exit unwinds like an exception, so a file half-written at that moment is removed (see
    atomic_files.write_atomically) and what was there before is left as it was. at_once: exit on the
    spot instead (os._exit), for a script that has written nothing yet: scripts call it so before
    they import torch (this module does not), as an exception raised inside a C extension's import
    can be swallowed there, and the script would go on."""
    def stop(signum, frame):
        if not at_once:
            die(f"interrupted; {what}", 130)
        print(f"error: interrupted; {what}", file=sys.stderr, flush=True)
        os._exit(130)
    signal.signal(signal.SIGINT, stop)


def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt again (Python's default), for code that handles it itself."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def work_done():
    """Ctrl-C ignored from now on: the work is written, and a Ctrl-C during Python's exit (a second
    or so with torch loaded) would only turn a success into a silent exit code 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pick_device(name):
    """The device a script runs on: 'auto' picks cuda, then mps, then cpu; an explicit one must
    exist here. ValueError (one line) otherwise."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r}: nanoMEAP runs on cpu, cuda or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}, but CUDA is not available here; use --device cpu")
    if kind == "cuda" and (torch.device(name).index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}, but MPS is not available here; use --device cpu")
    return name


def precision(device, dtype):
    """How a script computes on a device: the device (checked, 'auto' resolved), its type, the dtype
    ('auto': bfloat16 on CUDA, float16 on GPUs without bf16, float32 elsewhere), the autocast
    context for the forward pass (none in float32), and a gradient scaler, active only in float16
    (bf16 and fp32 have fp32's range). ValueError (one line) on a bad device or dtype."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    device = pick_device(device)
    device_type = torch.device(device).type
    if dtype == "auto":
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    ptdtype = getattr(torch, dtype)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convolutions where a GPU has them
    torch.backends.cudnn.allow_tf32 = True
    return SimpleNamespace(
        device=device, device_type=device_type, dtype=dtype, ptdtype=ptdtype,
        autocast=nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype),
        scaler=torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16))


def to_device(device, *tensors):
    """The tensors on device; on CUDA copied from pinned memory without waiting, so that the copy
    overlaps with the computation already queued."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    if torch.device(device).type == "cuda":
        return [t.pin_memory().to(device, non_blocking=True) for t in tensors]
    return [t.to(device) for t in tensors]


def check_memory(n_params, tokens, vocab_size, device):
    """ValueError unless the device has the memory that training a model of n_params parameters on
    `tokens` tokens per micro-step over vocab_size logits needs at the very least: float32 weights,
    gradients and AdamW's two moments (16 bytes a parameter), and the logits with their gradient.
    A floor, not an estimate: what passes may still run out, what fails cannot run."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    need = 16 * n_params + 8 * tokens * vocab_size
    kind = torch.device(device).type
    if kind == "cuda":
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    elif kind == "cpu" and hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:  # mps shares the machine's memory; nothing to read it from portably
        return
    if need > total:
        raise ValueError(f"this model ({n_params / 1e6:,.1f}M parameters) and batch need at least {need / 2**30:,.1f} "
                         f"GB on {device}, which has {total / 2**30:,.1f} GB; lower --n_embd, --n_layer, "
                         f"--block_size or --batch_size")


# Dense (no sparsity) bf16/fp16 tensor-core peak, FLOP/s, from the vendors' data sheets. The first
# name contained in torch.cuda.get_device_name() wins, so specific names come before general ones.
GPU_PEAK_FLOPS = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
    ("V100", 125e12), ("T4", 65e12),
]


def peak_flops_of(name):
    """Peak FLOP/s of a GPU by its name (as torch.cuda.get_device_name gives it), or None."""
    return next((flops for key, flops in GPU_PEAK_FLOPS if key in name), None)


def gpu_peak_flops(device):
    """Peak FLOP/s of the CUDA device, or None (not CUDA, or not in the table above)."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    device = torch.device(device)
    return peak_flops_of(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def mfu(flops_per_token, tokens_per_sec, device):
    """Model FLOPs utilisation (flops_per_token: model.GPT.flops_per_token) against the dense bf16
    peak of the GPU in use; None when that peak is unknown (CPU, MPS, an unlisted GPU), rather than
    a number that misleads."""
    peak = gpu_peak_flops(device)
    return None if peak is None else flops_per_token * tokens_per_sec / peak
