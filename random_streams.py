"""
The named random streams (a leaf: numpy and torch only). Every random draw of the project comes from
a stream of its own, np.random.default_rng([seed, STREAM, ids...]), so changing one use never
shifts the draws of another, and a draw is a pure function of where it is used (a resumed run
redraws exactly). Held-out data uses the seed VAL_SEED, which no training run has (train.py's seeds
are below 2**31).

Stream ids: 0-5 train.py's (below); 7 compare.py's SUITE, 9 compare_sft.py's QA_TEST, 11
attention.py's PROBE, 13 probes.py's TEXT_PROBES; PROMPTS, with --seed, sample.py's held-out prompts.
"""

import numpy as np
import torch

VAL_SEED = 2**31
DATA, MASKS, SFT_SET, SFT_ORDER, SFT_MASKS, EVAL = range(6)  # train.py's streams
PROMPTS = 2**31  # with --seed: sample.py's held-out prompts


def stream(seed, kind, *ids):
    """The numpy Generator of one random stream, a pure function of its arguments."""
    return np.random.default_rng([seed, kind, *ids])


def torch_generator(rng):
    """A torch.Generator seeded by the next draw of a numpy Generator."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))
