"""
Every batch train.py trains and evaluates on, as a pure function of its settings and of
(iteration, micro-step, process rank). So a resumed run sees exactly the data and the masks of the
uninterrupted one, the NTP and MEAP runs of a seed see the same data, and the tests can check each
batch without training anything.

    batches = Batches(config, mask_token_id)       # config: train.py's settings, as a dict
    x, y, query = batches.clean("train", it, micro)  # clean inputs, next-token targets, query positions
    x = batches.meap(x, query, it, micro)            # MEAP (paper §3.1): [MASK]s in the inputs only
    x, y = batches.sft(it, micro)                    # fine-tuning (§3.2), in the layout of --sft

Random streams: each use draws from its own np.random.default_rng([seed, STREAM, ids...]), so
changing one use never shifts the draws of another. Held-out data uses the seed VAL_SEED, which no
training run has (train.py's seeds are below 2**31).
"""

import functools
import os

import numpy as np
import torch

import tasks
from mask import IGNORE, meap_inputs, sft_meap_concat, sft_meap_separate, sft_ntp, shared_seed

VAL_SEED = 2**31
DATA, MASKS, SFT_SET, SFT_ORDER, SFT_MASKS, EVAL = range(6)  # stream ids of train.py
SUITE, QA_TEST, PROBE = 7, 9, 11  # with VAL_SEED: compare.py's suite, compare_sft.py's questions, attention.py's probe
PROMPTS = 2**31  # with --seed: sample.py's held-out prompts


def stream(seed, kind, *ids):
    """The numpy Generator of one random stream, a pure function of its arguments."""
    return np.random.default_rng([seed, kind, *ids])


def torch_generator(rng):
    """A torch.Generator seeded by the next draw of a numpy Generator."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def collate(pairs):
    """(x, y) pairs of 1-D tensors -> (B, T) tensors, right-padded (x with 0, y with IGNORE, which
    the loss skips; padding after a row's end cannot change it under causal attention)."""
    T = max(len(x) for x, _ in pairs)
    x = torch.zeros(len(pairs), T, dtype=torch.long)
    y = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for i, (xi, yi) in enumerate(pairs):
        x[i, :len(xi)], y[i, :len(yi)] = xi, yi
    return x, y


class Batches:
    """The batches of one run. cfg: train.py's settings (a dict); mask_token_id: the id of [MASK],
    which is also the number of real token ids (the tokenizers put [MASK] right after them)."""

    def __init__(self, cfg, mask_token_id, rank=0, world_size=1):
        self.cfg, self.mask_token_id, self.rank, self.world_size = dict(cfg), mask_token_id, rank, world_size
        c = self.cfg
        if c["dataset"] != "synthetic":
            self.data_dir = os.path.join("data", c["dataset"])  # an absolute path also works
        if c["sft"] != "none":  # a fixed fine-tuning set, the same for every layout of a seed
            self.sft_set = tasks.qa_examples(stream(c["seed"], SFT_SET), c["sft_examples"], c["qa_tokens"] - 1,
                                             c["n_docs"], c["answer_len"])
            # equal tokens per step: MEAP-SFT takes half the examples, each twice (§3.2)
            self.sft_per_step = c["batch_size"] if c["sft"] == "ntp" else c["batch_size"] // 2

    # -- pre-training -----------------------------------------------------------------------------

    def clean(self, split, it, micro=0):
        """(x, y, query) for one micro-step of 'train', or batch number `it` of held-out 'val':
        x the clean inputs and y the next tokens (B, T); query (B, T) bool marks the positions
        whose next token is a retrieval answer (x there is the query key; all False for text)."""
        c = self.cfg
        rng = stream(c["seed"], DATA, self.rank, it, micro) if split == "train" else stream(VAL_SEED, DATA, it)
        if c["dataset"] == "synthetic":
            b = tasks.get_batch(c["task"], rng, c["batch_size"], c["block_size"], c["n_pairs"], c["n_needles"],
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

    def meap(self, x, query, it, micro=0):
        """MEAP's training input (§3.1): x (B, T) with floor(T * mask_ratio) positions per row
        replaced by [MASK] (or by random real tokens, with corruption 'random'), uniformly over
        0..T-2, or sparing the query positions when mask_queries is off. Ratio 0 returns x itself."""
        c = self.cfg
        x, _ = meap_inputs(x, c["mask_ratio"], self.mask_token_id, c["mask_mode"],
                           exclude=None if c["mask_queries"] else query, generator=self.mask_generator(it, micro),
                           corruption=c["corruption"], vocab_size=self.mask_token_id)
        return x

    # -- fine-tuning --------------------------------------------------------------------------------

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
        held_out = tasks.qa_examples(stream(VAL_SEED, SFT_SET, k), c["batch_size"], c["qa_tokens"] - 1, c["n_docs"],
                                     c["answer_len"])
        return collate([sft_ntp(p, a) for p, a in held_out])
