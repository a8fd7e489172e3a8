"""
Every batch train.py trains on, each a pure function of the run's settings and of (iteration,
micro-step, process rank): a resumed run sees exactly the data and the masks of the uninterrupted
one, the NTP and MEAP runs of a seed see the same data, and the tests check every batch without
training.

    mask_token_id, meta = vocabulary("synthetic", block_size=64)   # the data checked; [MASK]'s id
    data = Batches("synthetic", block_size=64, batch_size=32, seed=1337)
    x, y, query = data.clean("train", it, micro)   # clean inputs, next-token targets, query positions
    g = data.mask_generator(it, micro)             # MEAP's positions at this step (mask.meap_inputs)
    sft = SFTBatches("concat", ...)                # fine-tuning (paper §3.2): x, y = sft.batch(it, micro)

Pre-training batches come from the synthetic tasks (tasks.py) or from a prepared text
(data/NAME/{train,val}.bin). The masking itself is mask.py's: train.py calls mask.meap_inputs with
this module's generator, so that the MEAP line stays visible there.
"""

import functools
import math
import os
import shlex

import numpy as np
import torch

from mask import IGNORE, num_masked, sft_meap_concat, sft_meap_separate, sft_ntp, shared_seed
from random_streams import DATA, MASKS, SFT_MASKS, SFT_ORDER, SFT_SET, VAL_SEED, stream, torch_generator
from tasks import MASK_ID, make_batch, qa, qa_examples
from tokenizer import read_meta


# -----------------------------------------------------------------------------
# the data, checked before a run starts

def vocabulary(dataset, block_size, task="mix", n_pairs=4, n_needles=4, mqar_offset=0):
    """(mask_token_id, meta) of a run's data, after checking that the data fit the settings:
    ValueError (one line) naming the fix. mask_token_id is also the number of real token ids
    ([MASK] comes right after them); meta is what sample.py needs to decode. dataset: 'synthetic'
    (the task must fit block_size) or NAME for data/NAME/{train,val}.bin and meta.pkl."""
    if dataset == "synthetic":
        make_batch(task, np.random.default_rng(0), 2, block_size, n_pairs, n_needles, mqar_offset)  # fits
        return MASK_ID, {"kind": "synthetic"}
    d = os.path.join("data", dataset)  # an absolute path also works
    for split in ("train", "val"):
        if not os.path.exists(os.path.join(d, f"{split}.bin")):
            script = os.path.join(d, "prepare.py")
            how = (f"python {shlex.quote(script)}" if os.path.isfile(script) else
                   f"a data/*/prepare.py script with --out_dir {shlex.quote(d)}")
            raise ValueError(f"{d}/{split}.bin not found; prepare it with {how}")
    meta = read_meta(d)  # GPT-2's where there is no meta.pkl, as nanoGPT
    for split in ("train", "val"):  # long enough, and ids that fit the vocabulary (first 10M tokens)
        data = np.memmap(os.path.join(d, f"{split}.bin"), dtype=np.uint16, mode="r")
        if len(data) < block_size + 2:
            raise ValueError(f"{d}/{split}.bin holds {len(data)} tokens, fewer than block_size + 2 = {block_size + 2}")
        top = int(data[:10_000_000].max())
        if top >= meta["vocab_size"]:
            raise ValueError(f"{d}/{split}.bin holds token id {top}, but the vocabulary has {meta['vocab_size']} "
                             f"ids; fix vocab_size in {d}/meta.pkl")
    return meta["vocab_size"], meta  # [MASK] is the id right after the tokenizer's vocabulary


# -----------------------------------------------------------------------------
# pre-training

class Batches:
    """The pre-training batches of one run on `dataset` (see vocabulary(), which checks it first)."""

    def __init__(self, dataset, block_size, batch_size, seed, task="mix", n_pairs=4, n_needles=4, mqar_offset=0,
                 mask_mode="per_sequence", rank=0, world_size=1):
        self.dataset, self.block_size, self.batch_size, self.seed = dataset, block_size, batch_size, seed
        self.task, self.n_pairs, self.n_needles, self.mqar_offset = task, n_pairs, n_needles, mqar_offset
        self.mask_mode, self.rank, self.world_size = mask_mode, rank, world_size

    def clean(self, split, it, micro=0):
        """(x, y, query) for one micro-step of 'train', or batch number `it` of held-out 'val':
        x the clean inputs and y the next tokens (B, T); query (B, T) bool marks the positions
        whose next token is a retrieval answer (x there is the query key; all False for text)."""
        B, T = self.batch_size, self.block_size
        rng = stream(self.seed, DATA, self.rank, it, micro) if split == "train" else stream(VAL_SEED, DATA, it)
        if self.dataset == "synthetic":
            b = make_batch(self.task, rng, B, T, self.n_pairs, self.n_needles, self.mqar_offset)
            return b.x, b.y, b.query
        path = os.path.join("data", self.dataset, f"{split}.bin")
        data = np.memmap(path, dtype=np.uint16, mode="r")  # a fresh map every batch: no memory leak
        ix = rng.integers(len(data) - T - 1, size=B)
        seq = torch.from_numpy(data[ix[:, None] + np.arange(T + 1)].astype(np.int64))  # (B, T+1)
        return seq[:, :-1], seq[:, 1:], torch.zeros(B, T, dtype=torch.bool)

    def mask_generator(self, it, micro=0):
        """The torch.Generator of MEAP's positions at (it, micro) on this process. shared: the
        official code's one seed per optimizer step, the same for every micro-step and process."""
        if self.mask_mode == "shared":
            return torch.Generator().manual_seed(shared_seed(it))
        return torch_generator(stream(self.seed, MASKS, self.rank, it, micro))


# -----------------------------------------------------------------------------
# fine-tuning (paper §3.2)

SFT_LAYOUTS = ("ntp", "concat", "separate")


def check_sft(c):
    """Fine-tuning's settings in c (train.py's, a dict): ValueError (one line) naming the fix."""
    layout, ratio, m = c["sft"], c["mask_ratio"], c["answer_len"]
    if layout not in SFT_LAYOUTS:
        raise ValueError(f"--sft must be none, ntp, concat or separate, got {layout!r}")
    if c["dataset"] != "synthetic":  # the dataset comes with the checkpoint
        raise ValueError(f"--sft fine-tunes on the synthetic multi-document QA, but {c['init_from']} was trained "
                         f"on data/{c['dataset']}; start from a checkpoint of the synthetic tasks")
    if layout == "ntp" and ratio > 0:
        raise ValueError("--sft ntp masks nothing: pass --mask_ratio 0 (or --sft concat / separate for MEAP-SFT)")
    if layout != "ntp" and c["batch_size"] % 2:
        raise ValueError(f"--sft {layout} takes batch_size / 2 examples per step (each twice): "
                         f"--batch_size must be even")
    if layout != "ntp" and m < c["sft_min_answer"]:  # every qa answer has answer_len tokens
        raise ValueError(f"--sft {layout}: the {m}-token answers are under sft_min_answer {c['sft_min_answer']}, "
                         f"so MEAP-SFT would be NTP-SFT on half the examples; lower --sft_min_answer (the "
                         f"paper's 50 is for text answers)")
    try:
        k = num_masked(m, ratio)
    except ValueError as e:
        raise ValueError(f"--mask_ratio: {e}") from None
    if layout != "ntp" and ratio > 0 and k == 0:
        raise ValueError(f"--mask_ratio {ratio} masks floor({m} x {ratio}) = 0 of the {m} answer tokens; raise "
                         f"it to {math.ceil(100 / m) / 100} or more (or 0: duplication alone)")
    need = 2 * c["qa_tokens"] - 1 if layout == "concat" else c["qa_tokens"] - 1
    if need > c["block_size"]:
        raise ValueError(f"--sft {layout} needs block_size >= {need} for qa_tokens {c['qa_tokens']}; "
                         f"lower --qa_tokens")
    try:
        qa(np.random.default_rng(0), 1, c["qa_tokens"] - 1, c["n_docs"], 0, m)
    except ValueError as e:
        raise ValueError(f"{e}; raise --qa_tokens or lower --n_docs / --answer_len") from None
    if c["sft_examples"] < 1:
        raise ValueError(f"--sft_examples must be at least 1, got {c['sft_examples']}")


def collate(pairs):
    """(x, y) pairs of 1-D tensors -> (B, T) tensors, right-padded (x with 0, y with IGNORE, which
    the loss skips; padding after a row's end cannot change it under causal attention)."""
    T = max(len(x) for x, _ in pairs)
    x = torch.zeros(len(pairs), T, dtype=torch.long)
    y = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for i, (xi, yi) in enumerate(pairs):
        x[i, :len(xi)], y[i, :len(yi)] = xi, yi
    return x, y


class SFTBatches:
    """The fine-tuning batches of one run (check_sft first): a fixed set of n_examples synthetic QA
    examples (tasks.qa_examples, the same for every layout of a seed), visited in a fresh order every
    epoch, in the layout of --sft: ntp (one row per example), concat (one row of two copies per
    example), separate (two rows per example). MEAP-SFT takes half the examples per step, each twice,
    so both objectives see the same tokens per step (§3.2). row_len: the longest row; row_tokens: the
    tokens of one example a row holds, on average (a concat row holds its example twice)."""

    def __init__(self, layout, seed, n_examples, qa_tokens, n_docs, answer_len, mask_ratio, mask_token_id,
                 min_answer, static, batch_size, accumulation=1, rank=0, world_size=1):
        self.layout, self.seed, self.n_examples, self.mask_ratio = layout, seed, n_examples, mask_ratio
        self.qa_tokens, self.n_docs, self.answer_len, self.batch_size = qa_tokens, n_docs, answer_len, batch_size
        self.mask_token_id, self.min_answer, self.static = mask_token_id, min_answer, static
        self.accumulation, self.rank, self.world_size = accumulation, rank, world_size
        self.examples = qa_examples(stream(seed, SFT_SET), n_examples, qa_tokens - 1, n_docs, answer_len)
        self.per_step = batch_size if layout == "ntp" else batch_size // 2  # examples per micro-step
        self.row_len = self.row_length(layout, qa_tokens)
        self.row_tokens = self.row_len / 2 if layout == "concat" else self.row_len

    @staticmethod
    def row_length(layout, qa_tokens):
        """The longest row of a layout: an example is qa_tokens - 1 inputs; concat holds two copies."""
        return 2 * qa_tokens - 1 if layout == "concat" else qa_tokens - 1

    @functools.lru_cache(maxsize=2)
    def epoch_order(self, epoch):
        """The order in which epoch `epoch` visits the fine-tuning set: a permutation of its indices."""
        return stream(self.seed, SFT_ORDER, epoch).permutation(self.n_examples)

    def indices(self, it, micro=0):
        """Indices into the fine-tuning set of the examples of one micro-step on this process:
        consecutive places in the stream of epochs, so every example comes once per epoch."""
        n, N = self.per_step, self.n_examples
        first = ((it * self.world_size + self.rank) * self.accumulation + micro) * n
        return [int(self.epoch_order(k // N)[k % N]) for k in range(first, first + n)]

    def batch(self, it, micro=0):
        """One micro-step of fine-tuning, (x, y) right-padded, in the run's layout."""
        rows = []
        for i in self.indices(it, micro):
            prompt, answer = self.examples[i]
            if self.layout == "ntp":
                rows.append(sft_ntp(prompt, answer))
                continue
            # static: an example's masked positions depend on the example alone (drawn once, as the
            # official code does at preprocessing); dynamic: on the example and the step
            ids = (i,) if self.static else (i, it, micro, self.rank)
            g = torch_generator(stream(self.seed, SFT_MASKS, *ids))
            if self.layout == "concat":
                rows.append(sft_meap_concat(prompt, answer, self.mask_ratio, self.mask_token_id, self.min_answer, g))
            else:
                rows += sft_meap_separate(prompt, answer, self.mask_ratio, self.mask_token_id, self.min_answer, g)
        return collate(rows)

    def val(self, k):
        """Held-out batch k of fine-tuning questions in the NTP-SFT layout (the answer's loss alone),
        whatever layout the run trains with, so that every layout's val loss means the same."""
        held_out = qa_examples(stream(VAL_SEED, SFT_SET, k), self.batch_size, self.qa_tokens - 1, self.n_docs,
                               self.answer_len)
        return collate([sft_ntp(p, a) for p, a in held_out])
