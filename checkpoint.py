"""
Checkpoints and the folders runs live in, kept safe for the user (train.py, sample.py, export.py,
the prepare scripts and the experiments all go through here):

- save_checkpoint(ckpt, path): atomic (a kill leaves the old file or the new one, never half of
  one), and never non-finite weights (ValueError); a failed write (a full disk, a read-only
  folder) removes its partial file and raises OSError saying what happened and where.
- load_checkpoint(path): a train.py checkpoint (a ckpt.pt, or the folder holding one), or
  ValueError with one line saying what is wrong (is_hf_export: a Hugging Face folder instead).
- load_model(path): the model of a checkpoint, in eval mode, with its settings (settings(ckpt):
  each of its type) and its step; model_of(ckpt) builds it from a checkpoint already loaded, every
  weight checked against its model_args; check_whole(ckpt) also checks the weights are finite and
  the tokenizer's meta and [MASK] id fit.
- truncate_log(path, before): a resumed run's metrics.jsonl, cut back to its checkpoint.
- claim(folder): one run per folder. Creates the
  folder, locks it for this process (released at exit; a second run is refused while the first
  lives, and a lock left by a killed run is taken over with a note), and removes the temporaries
  that killed processes left in it.
The lock is an fcntl lock on folder/.nanomeap-lock (Linux, macOS), which holds the owner's pid:
the kernel drops the lock when its process dies, however it dies, so a lock file is stale exactly
when nobody holds it, and a clean exit removes the file. Without fcntl (Windows) folders are not
locked. Atomic writes, temporaries and the names reserved for them are atomic_files.py's.
"""

import atexit
import dataclasses
import json
import os
import shlex

import torch

from atomic_files import LOCK, check_writable, clear_stale_temps, reserved, write_atomically, write_failed
from model import GPT, GPTConfig

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def all_finite(state_dict):
    return all(torch.isfinite(t).all() for t in state_dict.values() if torch.is_floating_point(t))


def save_checkpoint(ckpt, path):
    """Write ckpt (a dict with the model's state_dict under "model") to path, atomically."""
    if not all_finite(ckpt["model"]):
        raise ValueError(f"refusing to save non-finite weights to {path}")
    try:
        write_atomically(path, lambda tmp: torch.save(ckpt, tmp))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise OSError(write_failed(path, e)) from None


def load_checkpoint(path):
    """The checkpoint dict train.py saved at path (a ckpt.pt, or the folder holding it); ValueError
    (one line) if it is missing or unreadable."""
    if not str(path).strip():
        raise ValueError("no checkpoint path given (it is empty)")
    if os.path.isdir(path):
        hint = hf_export_hint(path, "the folder")
        if hint:
            raise ValueError(hint)
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {path}")
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings and dicts, nothing to execute
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated by a full disk or a copy cut short, not a torch file, ...
        raise ValueError(f"cannot read {path} as a train.py checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:80] if str(e) else 'no details'}); it may be truncated") from None
    if not isinstance(ckpt, dict) or not {"model", "model_args", "config"} <= ckpt.keys():
        raise ValueError(f"{path} is not a train.py checkpoint (it lacks model, model_args or config)")
    return ckpt


def is_hf_export(folder):
    """Whether folder holds a Hugging Face model (export.py's, or any), not a train.py run."""
    return os.path.isfile(os.path.join(folder, "config.json")) and not os.path.exists(os.path.join(folder, "ckpt.pt"))


def hf_export_hint(folder, flag):
    """The one line for a flag that names a Hugging Face folder (export.py's) where a train.py run
    is expected, or None if folder is not one."""
    if not is_hf_export(folder):
        return None
    return (f"{flag} {folder} is a Hugging Face folder, not a train.py run: bring it back first with python export.py "
            f"--from {shlex.quote(folder)} --to NEW_FOLDER, then give NEW_FOLDER")


def model_config(ckpt):
    """The GPTConfig of a loaded checkpoint's model_args; ValueError (one line) if this model.py
    cannot build it. A field of GPTConfig that the checkpoint predates takes its default, and a
    vocab_size saved padded (checkpoints before GPTConfig kept the two apart) is the real one again:
    the id after [MASK]."""
    args = dict(ckpt["model_args"]) if isinstance(ckpt.get("model_args"), dict) else ckpt.get("model_args")
    try:
        cfg = GPTConfig(**args)
        mask_id = ckpt.get("mask_token_id")  # the last real id
        if type(mask_id) is int and 0 <= mask_id < cfg.vocab_size - 1 and \
                dataclasses.replace(cfg, vocab_size=mask_id + 1).padded_vocab_size == cfg.vocab_size:
            cfg = dataclasses.replace(cfg, vocab_size=mask_id + 1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"its model_args do not describe a model this model.py builds ({e})") from None
    return cfg


def model_of(ckpt, device="cpu"):
    """The GPT of a loaded checkpoint, in eval mode on device; ValueError (one line) if its weights
    do not fit this model.py or its own model_args. A field of GPTConfig that the checkpoint
    predates takes its default."""
    model = GPT(model_config(ckpt))
    sd, want = ckpt["model"], model.state_dict()
    if not isinstance(sd, dict):
        raise ValueError("its weights are not a state_dict")
    missing, extra = [k for k in want if k not in sd], [k for k in sd if k not in want]
    shapes = [k for k in want if k in sd and (not torch.is_tensor(sd[k]) or sd[k].shape != want[k].shape)]
    if missing or extra or shapes:
        cfg = model.config
        parts = [f"{len(v)} {what} ({', '.join(v[:2])}{', ...' if len(v) > 2 else ''})"
                 for what, v in (("missing", missing), ("not in the model", extra), ("of another shape", shapes)) if v]
        raise ValueError(f"its weights do not fit its model_args ({cfg.n_layer} layers, n_embd {cfg.n_embd}, "
                         f"vocab_size {cfg.vocab_size}): {'; '.join(parts)}")
    model.load_state_dict(sd)
    return model.eval().to(device)


def check_whole(ckpt, where):
    """ValueError (one line, naming where) unless ckpt, a loaded checkpoint, is whole: the model its
    model_args describe with every weight in its shape (model_of), all finite, settings of their
    types, the tokenizer's meta, and a [MASK] id inside the vocabulary, right after the tokenizer's
    ids. Returns the model.
    What export.py and sample.py check before they use a checkpoint."""
    for key in ("meta", "mask_token_id"):
        if key not in ckpt:
            raise ValueError(f"{where} lacks {key!r}: not a whole train.py checkpoint")
    try:
        model = model_of(ckpt)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not all_finite(ckpt["model"]):
        raise ValueError(f"{where} holds non-finite weights (a diverged run?)")
    meta, mask_id, vocab = ckpt["meta"], ckpt["mask_token_id"], model.config.vocab_size
    try:
        settings(ckpt)  # each setting of its type
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    ranks = meta.get("bpe_ranks", {}) if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or "kind" not in meta or not isinstance(ranks, dict) or not all(
            isinstance(t, bytes) and t and type(r) is int for t, r in ranks.items()):
        raise ValueError(f"{where}: its meta (the tokenizer) is not train.py's: {str(meta)[:60]}")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < vocab:
        raise ValueError(f"{where}: its [MASK] id {mask_id!r} is not inside its vocabulary of {vocab} ids")
    if "vocab_size" in meta and meta["vocab_size"] != mask_id:
        raise ValueError(f"{where}: its [MASK] id {mask_id} is not the id after its tokenizer's "
                         f"{meta['vocab_size']} ids")
    return model


def settings(ckpt):
    """The train.py settings a loaded checkpoint was trained with, each of its default's type (the
    default where the checkpoint predates a setting); ValueError (one line) if one is not (an edited
    checkpoint)."""
    from configurator import ConfigError, convert, read_settings
    defaults = read_settings(os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"))
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise ValueError("its settings (config) are not a dict: not a train.py checkpoint")
    try:
        return {**defaults, **{k: convert(k, v, defaults[k]) if k in defaults else v for k, v in saved.items()}}
    except ConfigError as e:
        raise ValueError(f"its saved setting {e} (an edited checkpoint?)") from None


def load_model(path, device="cpu"):
    """(model, settings, step) of a checkpoint (a ckpt.pt or its folder): the model in eval mode,
    the train.py settings it was trained with (settings()), and its iteration. ValueError (one
    line) if not."""
    ckpt = load_checkpoint(path)
    try:
        return model_of(ckpt, device), settings(ckpt), int(ckpt.get("iter_num", 0))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


# -----------------------------------------------------------------------------
# a train.py run that starts from a checkpoint: resumed exactly, or fine-tuned

MODEL = ("block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "init", "emb_common")  # fixed by the weights


def start_from(init_from, out_dir):
    """(ckpt, path) of the checkpoint a run starts from: (None, None) for 'scratch'; out_dir's for
    'resume', with all it takes to continue exactly; else the checkpoint (a ckpt.pt or its folder) to
    fine-tune, which must not be out_dir's own. ValueError (one line) naming the fix."""
    q = shlex.quote
    for flag, value in (("out_dir", out_dir), ("init_from", init_from)):
        if not value.strip():
            raise ValueError(f"--{flag} is empty; give a folder")
    if init_from == "scratch":
        return None, None
    if init_from == "resume":
        path = os.path.join(out_dir, "ckpt.pt")
        if not os.path.exists(path):
            raise ValueError(hf_export_hint(out_dir, "--out_dir") or f"--init_from resume: no checkpoint at "
                             f"{path} (check --out_dir, or start with --init_from scratch)")
    else:
        path = init_from if init_from.endswith(".pt") else os.path.join(init_from, "ckpt.pt")
        if not os.path.exists(path):
            raise ValueError(hf_export_hint(init_from, "--init_from") or f"--init_from {init_from}: no checkpoint "
                             f"there (give a ckpt.pt, its folder, 'scratch' or 'resume')")
        if os.path.realpath(os.path.dirname(path)) == os.path.realpath(out_dir):
            raise ValueError(f"--out_dir {out_dir} holds the checkpoint this run starts from; give the fine-tuned "
                             f"model its own --out_dir")
    try:
        ckpt = load_checkpoint(path)
    except ValueError as e:
        raise ValueError(f"{e}; use a new --out_dir" if init_from == "resume" else e) from None
    lacks = [k for k in ("optimizer", "scaler", "rng") if k not in ckpt]
    if type(ckpt.get("iter_num")) is not int or ckpt["iter_num"] < 0:
        lacks.append("a step count (iter_num >= 0)")
    if init_from == "resume" and lacks:
        raise ValueError(f"{path} lacks {', '.join(lacks)}: it cannot continue exactly; fine-tune from it "
                         f"(--init_from {q(out_dir)} with a new --out_dir) or start a new run")
    return ckpt, path


def settings_from(ckpt, path, resume, overrides, keys):
    """The train.py settings a run takes from the checkpoint it starts from. Resuming takes all of
    them (a flag given now, in overrides, wins, except against the model's shape); fine-tuning takes
    the data and the model (and a flag that disagrees is refused). A setting the checkpoint predates
    had its default when it was trained; one it holds that train.py no longer has (not in keys) is
    left out. ValueError (one line) naming the fix."""
    try:
        saved = settings(ckpt)  # each of its type; defaults for those it predates
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if resume:
        taken = [k for k in keys if k not in overrides and k not in ("init_from", "out_dir", "overwrite")]
        whose, hint = "the checkpoint's", "drop the flag to resume, or use a new --out_dir"
    else:
        taken = ["dataset", *MODEL]
        whose, hint = f"{path}'s", "drop the flag"
    for k in (MODEL if resume else taken):
        if k in overrides and overrides[k] != saved[k]:
            raise ValueError(f"--{k} {overrides[k]} does not match {whose} {saved[k]}; {hint}")
    return {k: saved[k] for k in taken}


def check_tokenizer(ckpt, path, tokenizer_id, data_now):
    """ValueError (one line) unless the checkpoint was trained with the tokenizer tokenizer_id
    (tokenizer.identity), which data_now (words: 'data/NAME now has') has: the ids must mean what
    they meant when it was trained."""
    from tokenizer import describe, of_checkpoint
    try:
        trained_with = of_checkpoint(ckpt)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if trained_with != tokenizer_id:
        raise ValueError(f"{path} was trained with the tokenizer {describe(trained_with)}, but {data_now} "
                         f"{describe(tokenizer_id)} (prepared again since?); train on the data it was trained with, "
                         f"or start a new run in a new --out_dir")


def restore(ckpt, path, model, optimizer=None, scaler=None):
    """Load a checkpoint into a run's model, and, to resume (optimizer given), its optimizer, loss
    scaler and random state; returns its step. ValueError (one line) if the checkpoint's model is not
    this run's."""
    fix = "; use a new --out_dir" if optimizer is not None else ""
    try:
        trained = model_config(ckpt)
    except ValueError as e:
        raise ValueError(f"{path}: {e}{fix}") from None
    if trained != model.config:
        now = dataclasses.asdict(model.config)
        raise ValueError(f"{path} was trained with " + ", ".join(f"{k} {v} (this run: {now[k]})" for k, v in
                                                                 dataclasses.asdict(trained).items() if v != now[k]) + fix)
    try:
        model.load_state_dict(ckpt["model"])
        if optimizer is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng"]["torch"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} does not fit this model ({str(e).splitlines()[0]}){fix}") from None
    return int(ckpt["iter_num"]) if optimizer is not None else 0


def truncate_log(path, before):
    """Keep the rows of the JSON-lines log at path (train.py's metrics.jsonl) whose "iter" is below
    before, and drop the rest: a resumed run writes them again. Returns how many half-written last
    lines (a run killed mid-write) were dropped. ValueError (one line) if path holds anything but
    train.py's rows: it is then someone else's file, and left as it is."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not train.py's log; move it away, or use another --out_dir")
    kept, torn = [], 0
    if os.path.exists(path):
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines(keepends=True)
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
            except ValueError:
                if i == len(lines) - 1 and not line.endswith("\n"):  # cut short by a kill: ours, half-written
                    torn += 1
                    continue
                row = None
            if not isinstance(row, dict) or type(row.get("iter")) is not int:
                raise ValueError(f"{path} holds lines that are not train.py's (line {i + 1}); move it away, "
                                 f"or use another --out_dir")
            if row["iter"] < before:
                kept.append(line)
    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(kept)
    write_atomically(path, write)
    return torn


def open_run(out_dir, resume, overwrite, iter_num):
    """Make out_dir this train.py run's folder: claimed (one run per folder), refused if it holds a
    Hugging Face export or, unless overwrite, a run that this one does not resume; its metrics.jsonl
    cut back to iter_num (a new run: emptied). Returns the lines to print (notes); ValueError or
    OSError (one line) naming the fix."""
    if is_hf_export(out_dir):
        raise ValueError(f"--out_dir {out_dir} holds a Hugging Face model (config.json), not a train.py run; "
                         f"use another folder")
    try:
        notes = [claim(out_dir)]
    except (ValueError, OSError) as e:
        raise type(e)(f"--out_dir: {e}") from None
    ckpt_path, metrics_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "metrics.jsonl")
    if not resume and os.path.exists(ckpt_path) and not overwrite:
        raise ValueError(f"{out_dir} already holds a run ({ckpt_path}); continue it with --init_from resume, "
                         f"use another --out_dir, or replace it with --overwrite true")
    replacing = not resume and not os.path.exists(ckpt_path) and os.path.isfile(metrics_path)
    # rows past the checkpoint go (all of them for a new run); a file that is not train.py's log stays
    torn = truncate_log(metrics_path, iter_num if resume else 0)
    if torn or replacing:
        notes.append(f"{metrics_path}: " + ("replaced the log of a run that saved no checkpoint" if replacing
                                            else "dropped a half-written line"))
    return [n for n in notes if n]


_held = {}  # folder -> the open lock file of a folder this process has claimed


def claim(folder):
    """Create folder if needed and lock it for this process until it exits. Returns a note (str)
    when a killed run's lock was taken over, else None. ValueError if another live run holds the
    folder; OSError (one line) if the folder cannot be created or written."""
    folder = os.path.abspath(folder)
    if folder in _held:
        return None
    reserved(folder)
    check_writable(folder)
    lock_path = os.path.join(folder, LOCK)
    while True:
        try:  # never through a symbolic link: the lock is this folder's own file
            f = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644), "r+")
        except OSError as e:
            if os.path.islink(lock_path):
                raise ValueError(f"{lock_path} is a symbolic link, not a nanoMEAP lock; move it away") from None
            raise OSError(f"cannot write to {folder} ({e.strerror})") from None
        if fcntl is None:
            break
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip()
            f.close()
            raise ValueError(f"{folder} is in use by another run (pid {owner or '?'}); wait for it to end, "
                             f"or use another folder") from None
        try:  # the owner may have released (and removed) the file between our open and our lock
            if os.fstat(f.fileno()).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    owner = f.read().strip()
    if owner and not owner.isdigit():
        f.close()
        raise ValueError(f"{lock_path} is not a nanoMEAP lock (it holds other text); move it away")
    note = None
    if owner and fcntl is not None:  # nobody holds the lock, yet a pid is written: its run was killed
        note = f"{lock_path}: the run of pid {owner} ended without releasing it (killed?); taking it over"
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _held[folder] = f
    atexit.register(release, folder)
    clear_stale_temps(folder)  # half-written by a killed run or export: never read (and it never raises)
    return note


def release(folder=None):
    """Unlock a folder claimed by this process (None: all of them). claim registers it for exit."""
    for held in [os.path.abspath(folder)] if folder else list(_held):
        f = _held.pop(held, None)
        if f is not None:
            try:
                os.remove(os.path.join(held, LOCK))  # while still locked: no one else's file
            except OSError:
                pass  # the folder was removed under us: nothing left to release
            f.close()
