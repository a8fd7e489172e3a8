import math
import os

import numpy as np
import pytest
import torch

from mask import apply_mask, meap_inputs, num_masked, sample_mask

MASK = 99


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("T,ratio", [(128, 0.15), (100, 0.29), (64, 0.05), (7, 0.5), (1000, 0.2), (10, 0.05)])
def test_exact_count_per_row_and_last_position_never_masked(T, ratio):
    m = sample_mask(16, T, ratio, generator=gen())
    assert (m.sum(dim=1) == math.floor(T * ratio)).all()
    assert not m[:, -1].any()


def test_per_sequence_rows_differ_and_shared_rows_share_columns():
    per = sample_mask(8, 64, 0.15, mode="per_sequence", generator=gen())
    assert len({tuple(r.tolist()) for r in per}) == 8
    shared = sample_mask(8, 64, 0.15, mode="shared", generator=gen())
    assert (shared == shared[0]).all() and shared[0].sum() == 9


def test_excluded_positions_are_never_masked():
    exclude = torch.zeros(4, 32, dtype=torch.bool)
    exclude[0, :20] = True
    exclude[1, 5] = exclude[2, 7] = True
    for s in range(50):
        m = sample_mask(4, 32, 0.3, exclude=exclude, generator=gen(s))
        assert not (m & exclude).any() and (m.sum(1) == 9).all()
    col = sample_mask(3, 10, 0.3, exclude=torch.arange(10) < 4, generator=gen())  # one row for all
    assert not col[:, :4].any()
    # the official shared scheme has no exclusions: asking for one is an error, not a silent change
    with pytest.raises(ValueError, match="cannot exclude"):
        sample_mask(4, 32, 0.3, mode="shared", exclude=exclude)


def test_shared_columns_cover_every_position_but_the_last():
    hit = torch.zeros(32, dtype=torch.bool)
    for s in range(200):
        m = sample_mask(4, 32, 0.2, mode="shared", generator=gen(s))
        assert (m == m[0]).all() and m[0].sum() == 6
        hit |= m[0]
    assert hit[:-1].all() and not hit[-1]


def test_last_position_maskable_on_request():
    counts = sample_mask(5000, 4, 0.5, last=True, generator=gen()).sum(0).float()  # 2 of 4, any of them
    assert ((counts - 2500).abs() / 2500).max() < 0.06


def test_random_corruption_puts_real_tokens_at_the_same_positions():
    x = torch.randint(0, 50, (8, 40))
    xm, m = meap_inputs(x, 0.25, MASK, generator=gen(3))
    xr, mr = meap_inputs(x, 0.25, MASK, generator=gen(3), corruption="random", vocab_size=50)
    assert torch.equal(m, mr) and torch.equal(xr[~m], x[~m])
    assert (xr < 50).all() and not (xr == MASK).any() and (xr[m] != x[m]).any()
    with pytest.raises(ValueError, match="needs vocab_size"):
        meap_inputs(x, 0.25, MASK, corruption="random")
    with pytest.raises(ValueError, match="corruption must be one of"):
        meap_inputs(x, 0.25, MASK, corruption="noise")


def test_too_many_exclusions_is_an_error():
    with pytest.raises(ValueError, match="too many excluded"):
        sample_mask(2, 10, 0.5, exclude=torch.arange(10) < 6)


def test_positions_are_uniform_over_the_allowed_ones():
    counts = sample_mask(20000, 10, 0.3, generator=gen()).sum(0).float()
    assert counts[-1] == 0
    expected = 20000 * 3 / 9  # 3 of the 9 allowed positions per row
    assert ((counts[:-1] - expected).abs() / expected).max() < 0.03


def test_reproducible_under_a_generator():
    assert torch.equal(sample_mask(4, 50, 0.15, generator=gen(7)), sample_mask(4, 50, 0.15, generator=gen(7)))
    assert not torch.equal(sample_mask(4, 50, 0.15, generator=gen(7)), sample_mask(4, 50, 0.15, generator=gen(8)))


def test_ratio_zero_is_an_exact_no_op_that_draws_nothing():
    x = torch.randint(0, 50, (4, 32))
    g = gen()
    state = g.get_state()
    out, m = meap_inputs(x, 0, MASK, generator=g)
    assert out is x and not m.any()
    assert torch.equal(g.get_state(), state)
    with pytest.warns(UserWarning, match=r"masks floor\(32 \* 0.01\) = 0 of 32 inputs"):
        assert meap_inputs(x, 0.01, MASK)[0] is x  # nothing to mask either, but that is said


def test_meap_inputs_puts_mask_at_the_positions_and_leaves_the_rest_and_the_input_alone():
    x = torch.randint(0, 50, (4, 40))
    before = x.clone()
    out, m = meap_inputs(x, 0.15, MASK, generator=gen())
    assert (out[m] == MASK).all() and torch.equal(out[~m], x[~m])
    assert torch.equal(x, before)  # a new tensor: the clean sequence (and so the targets) unchanged
    assert torch.equal(apply_mask(x, m, MASK), out)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.1", None])
def test_bad_ratio_raises_a_clear_value_error(ratio):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        num_masked(10, ratio)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        meap_inputs(torch.zeros(1, 10, dtype=torch.long), ratio, MASK)


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="per_sequence"):
        meap_inputs(torch.zeros(1, 10, dtype=torch.long), 0.2, MASK, mode="columns")


# --- mask.py in a student's own training loop (the frictions of copying it into coursework) ---


def test_the_example_at_the_top_of_mask_py_runs():
    import doctest

    import mask
    result = doctest.testmod(mask)
    assert result.attempted >= 10 and result.failed == 0


def test_the_result_unpacks_into_inputs_and_mask_and_says_so():
    x = torch.randint(0, 50, (2, 20))
    out = meap_inputs(x, 0.15, MASK, generator=gen())
    x_in, m = out
    assert x_in is out.inputs and m is out.mask and "inputs=" in repr(out) and "mask=" in repr(out)


def test_options_after_the_ratio_and_the_id_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        meap_inputs(torch.zeros(1, 10, dtype=torch.long), 0.2, MASK, gen())  # a generator, not a mode
    with pytest.raises(TypeError, match="positional"):
        sample_mask(1, 10, 0.2, "shared")


@pytest.mark.parametrize("ratio", [np.float32(0.15), np.float64(0.15), torch.tensor(0.15), torch.tensor([0.15]),
                                   np.array(0.15)])
def test_numpy_and_torch_numbers_are_ratios(ratio):
    x_in, m = meap_inputs(torch.randint(0, 50, (3, 40)), ratio, MASK, generator=gen())
    assert (m.sum(1) == 6).all() and (x_in[m] == MASK).all() and num_masked(40, ratio) == 6


def test_one_sequence_a_numpy_array_or_a_list_work_and_anything_else_is_one_clear_line():
    seq = torch.randint(0, 50, (40,))
    x_in, m = meap_inputs(seq, 0.15, MASK, generator=gen())
    assert x_in.shape == m.shape == (40,) and m.sum() == 6 and torch.equal(x_in[~m], seq[~m])
    arr = np.random.default_rng(0).integers(0, 50, (2, 40))
    x_np, m_np = meap_inputs(arr, 0.15, MASK, generator=gen())
    assert isinstance(x_np, torch.Tensor) and torch.equal(x_np[~m_np], torch.from_numpy(arr)[~m_np])
    assert meap_inputs(list(range(20)), 0.1, MASK)[1].sum() == 2
    for bad, said in [(torch.rand(2, 10), "integer token ids"), (torch.zeros(2, 3, 10, dtype=torch.long), r"\(2, 3, 10\)"),
                      ("hello", "token ids"), (None, "token ids")]:
        with pytest.raises(ValueError, match=said):
            meap_inputs(bad, 0.15, MASK)


@pytest.mark.parametrize("call,said", [
    (lambda x: meap_inputs(x, 0.15, None), r"\[MASK\] id must be a non-negative integer"),
    (lambda x: meap_inputs(x, 0.15, -1), r"\[MASK\] id must be a non-negative integer"),
    (lambda x: meap_inputs(x, 0.15, 99.5), r"\[MASK\] id must be a non-negative integer"),
    (lambda x: meap_inputs(x.to(torch.uint8), 0.15, 300), r"does not fit the input's torch.uint8: .*x.long\(\)"),
    (lambda x: meap_inputs(x, 0.15, MASK, generator=5), "generator must be a torch.Generator"),
    (lambda x: meap_inputs(x, 0.15, MASK, exclude=torch.zeros(3, dtype=torch.bool)), r"exclude must be .*got \(3,\)"),
])
def test_a_wrong_id_generator_or_exclusion_is_one_clear_line(call, said):
    with pytest.raises(ValueError, match=said):
        call(torch.randint(0, 50, (2, 40)))


def test_an_empty_batch_or_sequence_comes_back_unmasked_without_a_word():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape in [(0, 10), (2, 0)]:
            x_in, m = meap_inputs(torch.zeros(shape, dtype=torch.long), 0.15, MASK)
            assert x_in.shape == m.shape == shape


@pytest.mark.parametrize("T", [2, 5, 6])
def test_a_nonzero_ratio_that_masks_nothing_says_so(T):
    x = torch.randint(0, 50, (2, T))
    with pytest.warns(UserWarning, match=f"= 0 of {T} inputs: this is plain next-token prediction"):
        x_in, m = meap_inputs(x, 0.15, MASK)
    assert torch.equal(x_in, x) and not m.any()


def test_a_mask_id_that_is_a_real_token_is_refused():
    x = torch.arange(20)[None]  # ids 0..19
    with pytest.raises(ValueError, match=r"\[MASK\] id 7 is a real token.*first free id"):
        meap_inputs(x, 0.15, 7)
    assert meap_inputs(x, 0.15, 20, generator=gen())[1].sum() == 3  # the first free id is right


def test_with_its_own_generator_meap_sees_the_batches_ntp_sees_and_without_one_it_does_not():
    def batches(ratio, own_stream):
        torch.manual_seed(0)  # the student's global seed, which their batches come from
        masks, seen = torch.Generator().manual_seed(1), []
        for _ in range(3):
            x = torch.randint(0, 50, (4, 32))
            seen.append(x)
            meap_inputs(x, ratio, MASK, generator=masks if own_stream else None)
        return seen

    assert all(torch.equal(a, b) for a, b in zip(batches(0, True), batches(0.15, True)))
    assert not all(torch.equal(a, b) for a, b in zip(batches(0, False), batches(0.15, False)))


STUDENT_LOOP = """
import torch, torch.nn as nn, torch.nn.functional as F
import mask
from mask import meap_inputs

V, T, D = 16, 24, 32  # a counting language: each token is the one before it plus 1 (mod 16)
MASK_ID = V           # the first free id, and one more embedding row for it


class TinyGPT(nn.Module):  # the student's own model: one causal attention layer and an MLP
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V + 1, D), nn.Embedding(T, D)
        self.qkv, self.head = nn.Linear(D, 3 * D), nn.Linear(D, V + 1)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = h + F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(h + self.mlp(h))


def train(ratio):
    torch.manual_seed(0)
    model, data, masks = TinyGPT(), torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(120):
        tokens = (torch.randint(V, (16, 1), generator=data) + torch.arange(T + 1)) % V
        x, y = tokens[:, :-1], tokens[:, 1:]
        first = x if first is None else first
        x_in, _ = meap_inputs(x, ratio, MASK_ID, generator=masks)
        loss = F.cross_entropy(model(x_in).reshape(-1, V + 1), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tokens = (torch.arange(V)[:, None] + torch.arange(T + 1)) % V  # every start, clean inputs
    with torch.no_grad():
        acc = (model(tokens[:, :-1]).argmax(-1) == tokens[:, 1:]).float().mean().item()
    return acc, int(x.sum()), int(first.sum())


ntp, meap = train(0.0), train(0.15)
print(mask.__file__)
print("accuracy", ntp[0], meap[0], "batches", ntp[1:], meap[1:])
"""


def test_a_students_loop_becomes_meap_with_mask_py_copied_alone(tmp_path):
    import shutil
    import subprocess
    import sys

    from helpers import ROOT

    shutil.copy(os.path.join(ROOT, "mask.py"), tmp_path / "mask.py")
    (tmp_path / "student.py").write_text(STUDENT_LOOP)
    # -E -s: no PYTHONPATH, no user site: only the folder with the two files and the installed packages
    out = subprocess.run([sys.executable, "-E", "-s", "student.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    where, line = out.stdout.split("\n")[:2]
    assert os.path.dirname(where) == str(tmp_path)  # the copy, not the repository's
    words = line.split()
    acc_ntp, acc_meap = float(words[1]), float(words[2])
    assert acc_ntp > 0.9 and acc_meap > 0.9  # chance is 1/16
    assert line.split("batches ")[1].split(") (")[0] + ")" == "(" + line.split(") (")[1]  # the same batches


# --- fine-tuning transforms (paper §3.2) ---

from mask import IGNORE, sft_meap_concat, sft_meap_separate, sft_ntp  # noqa: E402

PROMPT, ANSWER = torch.tensor([1, 2, 3]), torch.arange(10, 20)  # 3 prompt tokens, 10 answer tokens


def test_sft_ntp_targets_only_the_answer():
    x, y = sft_ntp(torch.tensor([1, 2, 3]), torch.tensor([7, 8]))
    assert x.tolist() == [1, 2, 3, 7] and y.tolist() == [IGNORE, IGNORE, 7, 8]


def test_sft_meap_concat_layout():
    x, y = sft_meap_concat(PROMPT, ANSWER, 0.2, MASK, min_answer=5, generator=gen(0))
    P, A = 3, 10
    assert len(x) == len(y) == 2 * (P + A) - 1
    # the first copy is the clean example; the second copy's prompt is clean, its answer has exactly
    # floor(10 * 0.2) = 2 masks, never on its last token
    assert x[:P + A].tolist() == PROMPT.tolist() + ANSWER.tolist()
    assert x[P + A:2 * P + A].tolist() == PROMPT.tolist()
    copy = x[2 * P + A:]  # the copy's answer, minus its last token (no input)
    assert (copy == MASK).sum() == 2 and (x == MASK).sum() == 2
    # targets: both answers in clean ids, masked ones included; no prompt token is a target
    clean = torch.cat([PROMPT, ANSWER, PROMPT, ANSWER])
    expected = [int(clean[t + 1]) if (P <= t + 1 < P + A or t + 1 >= 2 * P + A) else IGNORE for t in range(len(x))]
    assert y.tolist() == expected and MASK not in y.tolist()
    # the position before each [MASK] is asked for the hidden token
    for t in (x == MASK).nonzero().flatten().tolist():
        assert y[t - 1] == clean[t]


def test_sft_threshold_and_separate_variant():
    # an answer shorter than min_answer: plain NTP-SFT, in both variants
    short = sft_meap_concat(PROMPT, ANSWER, 0.2, MASK, min_answer=11)
    assert all(torch.equal(a, b) for a, b in zip(short, sft_ntp(PROMPT, ANSWER)))
    assert len(sft_meap_separate(PROMPT, ANSWER, 0.2, MASK, min_answer=11)) == 1
    # at the threshold: the official code's two examples
    (x0, y0), (x1, y1) = sft_meap_separate(PROMPT, ANSWER, 0.3, MASK, min_answer=10, generator=gen(1))
    assert torch.equal(x0, sft_ntp(PROMPT, ANSWER)[0]) and torch.equal(y0, sft_ntp(PROMPT, ANSWER)[1])
    masked = (x1 == MASK).nonzero().flatten()
    assert len(masked) == 3 and x1[:3].tolist() == PROMPT.tolist()
    clean = torch.cat([PROMPT, ANSWER])
    # targets only where the next input is masked, and then the clean token
    assert (y1 != IGNORE).nonzero().flatten().tolist() == (masked - 1).tolist()
    assert y1[masked - 1].tolist() == clean[masked].tolist()


def test_separate_layout_masks_any_answer_token_and_one_mask_is_inert():
    """As the official code, the last answer token can be masked (it is then a target whose input
    was never shown). And causal attention means a masked token's own [MASK] sits after its target
    position: with one mask, the copy asks exactly what the clean example asks at that token."""
    last = 0
    for s in range(200):
        (_, _), (x1, y1) = sft_meap_separate(PROMPT, ANSWER, 0.1, MASK, min_answer=1, generator=gen(s))
        assert (y1 != IGNORE).sum() == 1  # floor(10 * 0.1) = 1 target
        last += int(y1[-1] != IGNORE)
        t = int((y1 != IGNORE).nonzero())
        assert (x1[:t + 1] == torch.cat([PROMPT, ANSWER])[:t + 1]).all()  # no [MASK] before the target
    assert 5 < last < 40  # about 1 in 10


def test_sft_positions_follow_the_generator():
    # static positions: the same seed (the example's index) gives the same masks every epoch
    a = sft_meap_concat(PROMPT, ANSWER, 0.3, MASK, min_answer=1, generator=gen(5))[0]
    b = sft_meap_concat(PROMPT, ANSWER, 0.3, MASK, min_answer=1, generator=gen(5))[0]
    assert torch.equal(a, b)
    # dynamic positions: seeds that differ per step give different masks
    draws = {tuple(sft_meap_concat(PROMPT, ANSWER, 0.3, MASK, min_answer=1, generator=gen(s))[0].tolist())
             for s in range(20)}
    assert len(draws) > 5
    with pytest.raises(ValueError, match="mask ratio must be in"):
        sft_meap_concat(PROMPT, ANSWER, 1.0, MASK, min_answer=1)
