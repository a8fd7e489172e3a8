"""
Every batch train.py sees, each a pure function of the run's settings and of (iteration,
micro-step, process rank): pre-training batches of the synthetic tasks (tasks.py) or of a
prepared text (data/NAME/{train,val}.bin), the random positions of MEAP's masks, and fine-tuning
batches in the layouts of paper §3.2. Because nothing depends on what came before, a resumed run
sees exactly the data and the masks of the uninterrupted one, the NTP and MEAP runs of a seed see
the same data, and the tests check every batch without training.

The masking itself is mask.py's; train.py calls mask.meap_inputs with this module's generator, so
the MEAP line stays visible there.
"""

import functools
import math
import os
import shlex

import numpy as np
import torch

from mask import (IGNORE, meap_inputs, num_masked, sample_mask, sft_meap_concat, sft_meap_separate, sft_ntp,
                  shared_seed)
from tasks import MASK_ID, make_batch, qa, qa_examples
from random_streams import DATA, MASKS, SFT_MASKS, SFT_ORDER, SFT_SET, VAL_SEED, stream, torch_generator
from tokenizer import read_meta


# -----------------------------------------------------------------------------
# train.py's batches, each a pure function of the settings and of (iteration, micro-step, process
# rank): a resumed run sees exactly the data and the masks of the uninterrupted one, the NTP and
# MEAP runs of a seed see the same data, and the tests check every batch without training.
#
#     batches = Batches(config)                         # config: train.py's settings, as a dict
#     x, y, query = batches.clean("train", it, micro)   # clean inputs, next-token targets, query positions
#     g = batches.mask_generator(it, micro)             # MEAP's positions at this step (mask.meap_inputs)
#     x, y = batches.sft(it, micro)                     # fine-tuning (§3.2), in the layout of --sft

SFT_LAYOUTS = ("ntp", "concat", "separate")


def collate(pairs):
    """(x, y) pairs of 1-D tensors -> (B, T) tensors, right-padded (x with 0, y with IGNORE, which
    the loss skips; padding after a row's end cannot change it under causal attention)."""
    T = max(len(x) for x, _ in pairs)
    x = torch.zeros(len(pairs), T, dtype=torch.long)
    y = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for i, (xi, yi) in enumerate(pairs):
        x[i, :len(xi)], y[i, :len(yi)] = xi, yi
    return x, y


def check_meap(c, mask_token_id):
    """MEAP's settings in c (train.py's, a dict), each checked by the mask.py function that uses it:
    ValueError naming its flag. (experiments/common.py checks --set with it, as train.py does.)"""
    T = c["block_size"]
    spare = None if c["mask_queries"] else torch.zeros(T, dtype=torch.bool)
    checks = {"mask_ratio": lambda: num_masked(T, c["mask_ratio"]),
              "mask_mode": lambda: sample_mask(1, T, c["mask_ratio"], mode=c["mask_mode"], exclude=spare),
              "corruption": lambda: meap_inputs(torch.zeros(1, T, dtype=torch.long), 0.0, mask_token_id,
                                                corruption=c["corruption"], vocab_size=mask_token_id)}
    for flag, check in checks.items():
        try:
            check()
        except ValueError as e:
            raise ValueError(f"--{flag}: {e}") from None


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


class Batches:
    """The batches of one run. cfg: train.py's settings (a dict). Checks them and the data first:
    ValueError with one line naming the fix. Sets mask_token_id (the id of [MASK], which is also
    the number of real token ids: [MASK] comes right after them), vocab_size (real ids and [MASK])
    and meta (what sample.py needs to decode), and, for the MFU and tokens/s of the progress line,
    row_len (tokens per row) and row_tokens (input tokens per row, on average)."""

    def __init__(self, cfg, rank=0, world_size=1):
        self.cfg, self.rank, self.world_size = dict(cfg), rank, world_size
        c = self.cfg
        if c["sft"] != "none":
            check_sft(c)  # first: fine-tuning needs a synthetic checkpoint, whatever data/ holds
        self.row_len = self.row_tokens = c["block_size"]
        if c["dataset"] == "synthetic":
            self.mask_token_id, self.meta = MASK_ID, {"kind": "synthetic"}
            make_batch(c["task"], np.random.default_rng(0), 2, c["block_size"], c["n_pairs"], c["n_needles"],
                      c["mqar_offset"])  # the task fits in block_size
        else:
            self.data_dir = os.path.join("data", c["dataset"])  # an absolute path also works
            self.mask_token_id, self.meta = self._check_text_data()
        self.vocab_size = self.mask_token_id + 1
        if c["sft"] == "none":
            check_meap(c, self.mask_token_id)
        else:  # a fixed fine-tuning set, the same for every layout of a seed
            self.sft_set = qa_examples(stream(c["seed"], SFT_SET), c["sft_examples"], c["qa_tokens"] - 1,
                                       c["n_docs"], c["answer_len"])
            # equal tokens per step: MEAP-SFT takes half the examples, each twice (§3.2)
            self.sft_per_step = c["batch_size"] if c["sft"] == "ntp" else c["batch_size"] // 2
            self.row_len = 2 * c["qa_tokens"] - 1 if c["sft"] == "concat" else c["qa_tokens"] - 1
            self.row_tokens = self.row_len / 2 if c["sft"] == "concat" else self.row_len  # one example per row, for tok/s

    def _check_text_data(self):
        """(mask_token_id, meta) of data/NAME, after checking that its files fit the settings."""
        d, T = self.data_dir, self.cfg["block_size"]
        for split in ("train", "val"):
            if not os.path.exists(os.path.join(d, f"{split}.bin")):
                script = os.path.join(d, "prepare.py")
                how = (f"python {shlex.quote(script)}" if os.path.isfile(script) else
                       f"a data/*/prepare.py script with --out_dir {shlex.quote(d)}")
                raise ValueError(f"{d}/{split}.bin not found; prepare it with {how}")
        meta = read_meta(d)  # GPT-2's where there is no meta.pkl, as nanoGPT
        for split in ("train", "val"):  # long enough, and ids that fit the vocabulary (first 10M tokens)
            data = np.memmap(os.path.join(d, f"{split}.bin"), dtype=np.uint16, mode="r")
            if len(data) < T + 2:
                raise ValueError(f"{d}/{split}.bin holds {len(data)} tokens, fewer than block_size + 2 = {T + 2}")
            top = int(data[:10_000_000].max())
            if top >= meta["vocab_size"]:
                raise ValueError(f"{d}/{split}.bin holds token id {top}, but the vocabulary has {meta['vocab_size']} "
                                 f"ids; fix vocab_size in {d}/meta.pkl")
        return meta["vocab_size"], meta  # [MASK] is the id right after the tokenizer's vocabulary

    # -- pre-training -----------------------------------------------------------------------------

    def clean(self, split, it, micro=0):
        """(x, y, query) for one micro-step of 'train', or batch number `it` of held-out 'val':
        x the clean inputs and y the next tokens (B, T); query (B, T) bool marks the positions
        whose next token is a retrieval answer (x there is the query key; all False for text)."""
        c = self.cfg
        rng = stream(c["seed"], DATA, self.rank, it, micro) if split == "train" else stream(VAL_SEED, DATA, it)
        if c["dataset"] == "synthetic":
            b = make_batch(c["task"], rng, c["batch_size"], c["block_size"], c["n_pairs"], c["n_needles"],
                          c["mqar_offset"])
            return b.x, b.y, b.query
        data = np.memmap(os.path.join(self.data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")  # fresh map: no leak
        ix = rng.integers(len(data) - c["block_size"] - 1, size=c["batch_size"])
        seq = torch.from_numpy(data[ix[:, None] + np.arange(c["block_size"] + 1)].astype(np.int64))  # (B, T+1)
        return seq[:, :-1], seq[:, 1:], torch.zeros(c["batch_size"], c["block_size"], dtype=torch.bool)

    def mask_generator(self, it, micro=0):
        """The torch.Generator of MEAP's positions at (it, micro) on this process. shared: the
        official code's one seed per optimizer step, the same for every micro-step and process."""
        if self.cfg["mask_mode"] == "shared":
            return torch.Generator().manual_seed(shared_seed(it))
        return torch_generator(stream(self.cfg["seed"], MASKS, self.rank, it, micro))

    # -- fine-tuning (§3.2) ---------------------------------------------------------------------------

    @functools.lru_cache(maxsize=2)
    def epoch_order(self, epoch):
        """The order in which epoch `epoch` visits the fine-tuning set: a permutation of its indices."""
        return stream(self.cfg["seed"], SFT_ORDER, epoch).permutation(self.cfg["sft_examples"])

    def sft_indices(self, it, micro=0):
        """Indices into the fine-tuning set of the examples of one micro-step on this process:
        consecutive places in the stream of epochs, so every example comes once per epoch."""
        c, n = self.cfg, self.sft_per_step
        first = ((it * self.world_size + self.rank) * c["gradient_accumulation_steps"] + micro) * n
        return [int(self.epoch_order(k // c["sft_examples"])[k % c["sft_examples"]]) for k in range(first, first + n)]

    def sft(self, it, micro=0):
        """One micro-step of fine-tuning, (x, y) right-padded, in the layout of --sft: ntp (one row
        per example), concat (one row of two copies per example), separate (two rows per example)."""
        c, rows = self.cfg, []
        for i in self.sft_indices(it, micro):
            prompt, answer = self.sft_set[i]
            if c["sft"] == "ntp":
                rows.append(sft_ntp(prompt, answer))
                continue
            # static: an example's masked positions depend on the example alone (drawn once, as the
            # official code does at preprocessing); dynamic: on the example and the step
            ids = (i,) if c["sft_static"] else (i, it, micro, self.rank)
            g = torch_generator(stream(c["seed"], SFT_MASKS, *ids))
            if c["sft"] == "concat":
                rows.append(sft_meap_concat(prompt, answer, c["mask_ratio"], self.mask_token_id, c["sft_min_answer"], g))
            else:
                rows += sft_meap_separate(prompt, answer, c["mask_ratio"], self.mask_token_id, c["sft_min_answer"], g)
        return collate(rows)

    def sft_val(self, k):
        """Held-out batch k of fine-tuning questions in the NTP-SFT layout (the answer's loss alone),
        whatever layout the run trains with, so that every layout's val loss means the same."""
        c = self.cfg
        held_out = qa_examples(stream(VAL_SEED, SFT_SET, k), c["batch_size"], c["qa_tokens"] - 1, c["n_docs"],
                               c["answer_len"])
        return collate([sft_ntp(p, a) for p, a in held_out])
