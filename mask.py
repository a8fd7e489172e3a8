"""
MEAP input corruption (Zhuang et al. 2025, §3.1), as small pure functions on token tensors.

Pre-training with MEAP changes one thing: before the forward pass, a random floor(T * ratio) of
the T *input* positions are replaced by a [MASK] token id. The targets stay the clean next tokens
and the loss stays ordinary next-token cross-entropy at every position, so the model must predict
the next token, including the ones hidden in its own input, from a context with holes in it. No
bidirectional attention, no extra loss term, no extra compute. Evaluation uses clean inputs.

MEAP in your own training loop (this file needs only torch; the example runs as a test):

    >>> import torch, torch.nn as nn, torch.nn.functional as F
    >>> from mask import meap_inputs
    >>> vocab_size = 100                      # your tokenizer's ids are 0..99
    >>> mask_id = vocab_size                  # 1. [MASK] is the first free id: a new token...
    >>> model = nn.Sequential(nn.Embedding(vocab_size + 1, 32), nn.Linear(32, vocab_size + 1))  # 2. ...one more row
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    >>> batches = torch.Generator().manual_seed(0)  # your data's random stream
    >>> masks = torch.Generator().manual_seed(1)    # 3. MEAP's own: an NTP and a MEAP run see the same batches
    >>> for step in range(3):
    ...     tokens = torch.randint(vocab_size, (8, 33), generator=batches)
    ...     x, y = tokens[:, :-1], tokens[:, 1:]  # (B, T) inputs and their clean next tokens
    ...     x_in, _ = meap_inputs(x, 0.15, mask_id, generator=masks)  # 4. the MEAP line; y stays clean
    ...     logits = model(x_in)                  # 5. the model reads x_in, (B, T, vocab_size + 1)
    ...     loss = F.cross_entropy(logits.view(-1, vocab_size + 1), y.reshape(-1))
    ...     opt.zero_grad(); loss.backward(); opt.step()
    >>> (x_in == mask_id).sum(dim=1).tolist()  # floor(32 * 0.15) = 4 in every row, never the last input
    [4, 4, 4, 4, 4, 4, 4, 4]

Forget step 2 and the embedding fails on the id it has no row for; reuse a real id for [MASK] and
meap_inputs says so. Ratio 0 is plain next-token prediction (NTP): the same loop, inputs untouched.

As in the official code, the last input position is never masked, and the count is exact: every
sequence gets exactly floor(T * ratio) masked positions, drawn without replacement, uniformly over
positions 0..T-2. (The official code counts max(1, int(T * ratio)); the two agree whenever
T * ratio >= 1, and where it is below 1 we mask nothing rather than one token, with a warning.)

Two ways to draw the positions:
- "per_sequence" (default): each sequence in the batch gets its own positions. The most varied
  corruption per step, and what the paper's description implies.
- "shared": the official code's scheme, exactly: one set of columns per optimizer step, the same
  for every row, micro-step and process, with no exclusions. train.py seeds it with
  shared_seed(step), as that code does (51 patterns in all).

Options for experiments, off by default (the paper's MEAP is uniform and uses [MASK]):
- exclude: positions that must never be masked (per_sequence only), e.g. the retrieval queries.
- corruption="random": the same positions get uniformly random real tokens instead of [MASK], a
  control that tells "a dedicated [MASK] token" from "any corruption of the input".

Fine-tuning's layouts (§3.2) come after the pre-training functions, at the end of the file.
"""

import math
import warnings
from typing import NamedTuple

import torch

MODES = ("per_sequence", "shared")
CORRUPTIONS = ("mask", "random")


class MEAPInputs(NamedTuple):
    """What meap_inputs returns: unpack it, `x_in, mask = meap_inputs(...)`."""
    inputs: torch.Tensor  # the ids the model reads, [MASK] at the masked positions
    mask: torch.Tensor    # bool, True where an input was replaced


def meap_inputs(idx, ratio, mask_token_id, *, mode="per_sequence", exclude=None, generator=None,
                corruption="mask", vocab_size=None):
    """MEAP's training input for the clean input ids idx, (B, T) or one sequence (T,), and the
    mask used: (inputs, mask), each of idx's shape. A numpy array or list is taken as a torch tensor.
    Ratio 0 returns idx itself and draws no random numbers: plain next-token prediction.
    generator: a torch.Generator for the positions; without one the global RNG is used, and the
    draws then shift your data's stream (an NTP and a MEAP run see different batches).
    corruption "random" puts random real ids (below vocab_size) where "mask" puts [MASK].
    The targets are not an argument on purpose: MEAP never changes them."""
    ratio = _ratio(ratio)
    check_mode(mode)
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    idx = _token_ids(idx)
    mask_token_id = _mask_id(mask_token_id, idx.dtype)
    one = idx.dim() == 1  # a single sequence: work on it as a batch of one
    ids = idx[None] if one else idx  # (B, T)
    B, T = ids.shape
    k = num_masked(T, ratio)
    if k == 0 and ratio > 0 and T > 0:
        warnings.warn(f"mask ratio {ratio} masks floor({T} * {ratio}) = 0 of {T} inputs: this is plain "
                      f"next-token prediction; raise the ratio to {math.ceil(100 / T) / 100} or more for MEAP",
                      stacklevel=2)
    if k == 0 or ids.numel() == 0:
        return MEAPInputs(idx, torch.zeros(idx.shape, dtype=torch.bool))
    if corruption == "mask" and ids.device.type == "cpu" and bool((ids == mask_token_id).any()):
        # (not checked on a GPU, where reading the answer would wait for the device)
        raise ValueError(f"the [MASK] id {mask_token_id} is a real token of the input; use the first free id "
                         f"(your vocabulary size) and give the embedding one more row for it")
    mask = sample_mask(B, T, ratio, mode=mode, exclude=exclude, generator=generator)
    if corruption == "random":
        if vocab_size is None:
            raise ValueError("corruption 'random' needs vocab_size, the number of real token ids")
        out = apply_random(ids, mask, vocab_size, generator)
    else:
        out = apply_mask(ids, mask, mask_token_id)
    return MEAPInputs(out[0], mask[0]) if one else MEAPInputs(out, mask)


def sample_mask(batch_size, seq_len, ratio, *, mode="per_sequence", exclude=None, generator=None, last=False):
    """Boolean (batch_size, seq_len) tensor, True where the input is to be replaced by [MASK]:
    exactly floor(seq_len * ratio) positions per row, uniformly among 0..seq_len-2.

    exclude: optional bool tensor (batch_size, seq_len) or (seq_len,), True at positions that must
    never be masked (per_sequence only: the official shared scheme has no exclusions).
    generator: a torch.Generator, for reproducibility. last: let the last position be masked too
    (the official SFT code does; in pre-training the last input never is).
    """
    k = num_masked(seq_len, ratio)
    check_mode(mode)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, e.g. torch.Generator().manual_seed(0), "
                         f"got {type(generator).__name__}")
    if exclude is not None and tuple(torch.as_tensor(exclude).shape) not in ((seq_len,), (batch_size, seq_len)):
        raise ValueError(f"exclude must be a bool tensor of shape ({seq_len},) or ({batch_size}, {seq_len}), "
                         f"got {tuple(torch.as_tensor(exclude).shape)}")
    if mode == "shared" and exclude is not None:
        raise ValueError("shared mode masks the same columns in every row, as the official code, "
                         "and cannot exclude positions; use per_sequence to spare some")
    rows = batch_size if mode == "per_sequence" else 1
    allowed = torch.ones(rows, seq_len, dtype=torch.bool)
    allowed[:, -1] = last  # the last input is never masked in pre-training
    if exclude is not None:
        allowed &= ~torch.as_tensor(exclude, dtype=torch.bool).cpu().expand(batch_size, seq_len)
    if k == 0:
        return torch.zeros(batch_size, seq_len, dtype=torch.bool)
    if int(allowed.sum(dim=1).min()) < k:
        raise ValueError(f"cannot mask {k} of {seq_len} positions: too many excluded")
    # k distinct positions per row, uniformly among the allowed ones: the k smallest random keys
    keys = torch.rand(rows, seq_len, generator=generator)
    keys[~allowed] = 2.0  # larger than any uniform draw, so never among the k smallest
    picked = keys.topk(k, dim=1, largest=False).indices  # (rows, k)
    mask = torch.zeros(rows, seq_len, dtype=torch.bool).scatter_(1, picked, True)
    return mask.expand(batch_size, seq_len).clone()


def apply_mask(idx, mask, mask_token_id):
    """Copy of the input ids idx (B, T) with [MASK] wherever mask (B, T) is True."""
    return torch.where(mask.to(idx.device), torch.full_like(idx, mask_token_id), idx)


def apply_random(idx, mask, vocab_size, generator=None):
    """Copy of idx (B, T) with a uniformly random id in 0..vocab_size-1 (the real tokens, [MASK]
    not among them) wherever mask is True. The control for "is it the [MASK] token itself?"."""
    noise = torch.randint(vocab_size, idx.shape, generator=generator).to(idx.device)
    return torch.where(mask.to(idx.device), noise, idx)


def num_masked(seq_len, ratio):
    """How many of seq_len input positions MEAP masks: floor(seq_len * ratio)."""
    return math.floor(seq_len * _ratio(ratio))


def _ratio(ratio):
    """ratio as a float in [0, 1): Python, numpy and one-element torch numbers alike; else ValueError."""
    try:
        r = None if isinstance(ratio, (str, bytes, bool)) else float(ratio)
    except (TypeError, ValueError, RuntimeError):
        r = None
    if r is None or not 0 <= r < 1:
        raise ValueError(f"mask ratio must be in [0, 1) (0 = plain next-token prediction), got {ratio!r}")
    return r


def _token_ids(idx):
    """idx as an integer torch tensor of shape (B, T) or (T,); else ValueError saying what it got."""
    try:
        t = torch.as_tensor(idx)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"the input must be token ids, a (B, T) or (T,) tensor, got {type(idx).__name__}") from None
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.dim() not in (1, 2):
        raise ValueError(f"the input must be integer token ids of shape (B, T) or (T,), got {t.dtype} "
                         f"{tuple(t.shape)}")
    return t


def _mask_id(mask_token_id, dtype):
    """The [MASK] id as an int that the input's dtype can hold; else ValueError naming the fix."""
    try:
        ok = not isinstance(mask_token_id, (bool, float)) and int(mask_token_id) == mask_token_id >= 0
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise ValueError(f"the [MASK] id must be a non-negative integer, the first free id (your vocabulary "
                         f"size), got {mask_token_id!r}")
    if int(mask_token_id) > torch.iinfo(dtype).max:
        raise ValueError(f"the [MASK] id {int(mask_token_id)} does not fit the input's {dtype}: give the ids as "
                         f"int64 (x.long())")
    return int(mask_token_id)


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mask mode must be one of {MODES}, got {mode!r}")


def check_options(ratio, *, mode="per_sequence", spares=False, corruption="mask"):
    """MEAP's options, checked before a run starts (meap_inputs checks them again at every call):
    ValueError naming the train.py flag at fault. spares: some positions are to be excluded."""
    try:
        _ratio(ratio)
    except ValueError as e:
        raise ValueError(f"--mask_ratio: {e}") from None
    if mode not in MODES:
        raise ValueError(f"--mask_mode: mask mode must be one of {MODES}, got {mode!r}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"--corruption: corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    if mode == "shared" and spares:
        raise ValueError("--mask_mode: shared mode masks the same columns in every row, as the official code, "
                         "and cannot exclude positions; use per_sequence to spare some")


def shared_seed(step):
    """The official code's seed for the shared columns of optimizer step `step`."""
    return 50 + step % 51


# -----------------------------------------------------------------------------
# Fine-tuning (paper §3.2) masks differently: each (prompt, answer) example is duplicated and ~10%
# of the answer tokens are masked in the copy. sft_meap_concat() is the paper's layout (one
# sequence, the loss on both answers), sft_meap_separate() the official code's (the masked copy as
# an example of its own, with targets only at the masked tokens), sft_ntp() the plain baseline.
# An SFT example is a prompt and an answer, two 1-D tensors of token ids.
# These turn one into (x, y) pairs for next-token training: x the input ids, y the target at each
# position, IGNORE where the loss skips it. The prompt is never a target.
# Positions: pass a generator seeded by the example's index alone for static positions (drawn once,
# as the official code does at preprocessing), or by the index and the step for dynamic ones.

IGNORE = -1  # a target that the loss skips (model.py: cross_entropy(..., ignore_index=-1))
MIN_ANSWER = 50  # the paper: answers shorter than this are fine-tuned with plain NTP


def _pair(inputs, clean, keep):
    """x = inputs[:-1]; y = clean[1:], IGNORE wherever keep[1:] is False."""
    return inputs[:-1], torch.where(keep[1:], clean[1:], torch.full_like(clean[1:], IGNORE))


def sft_ntp(prompt, answer):
    """NTP-SFT: the sequence prompt + answer, with the loss on the answer tokens only."""
    seq = torch.cat([prompt, answer])
    keep = torch.cat([torch.zeros(len(prompt), dtype=torch.bool), torch.ones(len(answer), dtype=torch.bool)])
    return _pair(seq, seq, keep)


def sft_meap_concat(prompt, answer, ratio, mask_token_id, min_answer=MIN_ANSWER, generator=None):
    """The paper's MEAP-SFT: one sequence [prompt, answer, prompt, answer'], where the copy answer'
    has floor(len(answer) * ratio) tokens replaced by [MASK] (never its last token, which is no
    model input). The targets are the clean answer tokens of both copies, masked ones included.
    About twice the tokens of NTP-SFT per example, so the paper trains half the epochs. An answer
    shorter than min_answer gets sft_ntp()."""
    if len(answer) < min_answer:
        return sft_ntp(prompt, answer)
    m = sample_mask(1, len(answer), ratio, generator=generator)[0]  # (len(answer),)
    copy = apply_mask(answer, m, mask_token_id)
    no, yes = torch.zeros(len(prompt), dtype=torch.bool), torch.ones(len(answer), dtype=torch.bool)
    return _pair(torch.cat([prompt, answer, prompt, copy]), torch.cat([prompt, answer, prompt, answer]),
                 torch.cat([no, yes, no, yes]))


def sft_meap_separate(prompt, answer, ratio, mask_token_id, min_answer=MIN_ANSWER, generator=None):
    """The official code's MEAP-SFT: the plain NTP-SFT example, plus a separate copy with [MASK] in
    its answer whose only targets are the masked tokens (their clean ids). Returns a list of (x, y)
    pairs: one when the answer is shorter than min_answer, else two. As in that code, any answer
    token can be masked, the last one included.

    What causal attention implies here: the target of a masked token sits one position earlier,
    which cannot see that token's own [MASK]. Only the [MASK]s *before* it change what the model
    sees. With a single masked token the copy's loss is exactly the clean example's loss at that
    token, so the mask acts only from two masked tokens on (answers of 20+ tokens at ratio 0.10)."""
    examples = [sft_ntp(prompt, answer)]
    if len(answer) >= min_answer:
        m = sample_mask(1, len(answer), ratio, generator=generator, last=True)[0]
        copy = apply_mask(answer, m, mask_token_id)
        keep = torch.cat([torch.zeros(len(prompt), dtype=torch.bool), m])
        examples.append(_pair(torch.cat([prompt, copy]), torch.cat([prompt, answer]), keep))
    return examples
