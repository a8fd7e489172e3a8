import math
import os
import shutil

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import tasks
from experiments import attention
from helpers import run_script
from model import GPT, GPTConfig

# one layer, one sequence, one head, three positions: hand-built rows that sum to 1 over keys 0..i
CLEAN = torch.tensor([[1.0, 0.0, 0.0],
                      [0.5, 0.5, 0.0],
                      [0.2, 0.4, 0.4]])[None, None, None]  # (1, 1, 1, 3, 3)
MASKED = torch.tensor([[1.0, 0.0, 0.0],
                       [0.8, 0.2, 0.0],
                       [0.5, 0.1, 0.4]])[None, None, None]
MASK = torch.tensor([[False, True, False]])  # position 1 holds [MASK] in the copy


def test_masked_score_change_by_hand():
    # masked key 1 is seen by rows 1 and 2: 0.5 and 0.4 clean (mean 0.45), 0.2 and 0.1 masked (0.15)
    assert attention.masked_score_change(CLEAN, MASKED, MASK) == pytest.approx(0.15 / 0.45 - 1)
    assert attention.masked_score_change(CLEAN, CLEAN, MASK) == 0.0


def test_unmasked_variance_change_by_hand():
    # only row 2 sees two unmasked keys (0 and 2): clean [0.2, 0.4] has variance 0.01, masked
    # [0.5, 0.4] 0.0025; rows 0 and 1 see one unmasked key and are left out
    v = attention.row_variance(CLEAN, (~MASK)[None, :, None, None, :] & attention.visible(3))
    assert torch.isnan(v[..., :2]).all() and v[..., 2].item() == pytest.approx(0.01)
    assert attention.unmasked_variance_change(CLEAN, MASKED, MASK) == pytest.approx(0.0025 / 0.01 - 1)


def test_drop_masked_renormalises_and_is_the_limit_of_ignoring_mask():
    dropped = attention.drop_masked(CLEAN, MASK)[0, 0, 0]
    assert torch.allclose(dropped, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1 / 3, 0.0, 2 / 3]]))
    # a model that gives [MASK] nothing: the score falls by 100%, and the variance rises by exactly the
    # renormalisation: row 2 becomes [1/3, 2/3], variance (1/6)^2
    assert attention.masked_score_change(CLEAN, dropped[None, None, None], MASK) == -1.0
    assert attention.unmasked_variance_change(CLEAN, dropped[None, None, None], MASK) == \
        pytest.approx((1 / 36) / 0.01 - 1)
    # a row whose only visible key is masked has nothing left to renormalise
    assert torch.isnan(attention.drop_masked(CLEAN, torch.tensor([[True, False, False]]))[0, 0, 0, 0]).all()


def test_entropy_and_effective_keys_by_hand():
    T = 4
    uniform = attention.visible(T).float() / torch.arange(1, T + 1)[:, None]  # row i: 1/(i+1) on keys 0..i
    one_hot = torch.eye(T)  # row i: all weight on key i
    att = torch.stack([uniform, one_hot])[:, None, None]  # (2 layers, 1, 1, T, T)
    h = attention.entropy(att)
    assert torch.isnan(h[..., 0]).all()  # one visible key: no spread to measure
    assert torch.allclose(h[0, 0, 0, 1:], torch.ones(T - 1)) and torch.allclose(h[1, 0, 0, 1:], torch.zeros(T - 1))
    assert attention.entropy(att, normalise=False)[0, 0, 0, 3].item() == pytest.approx(math.log(4))
    assert torch.allclose(attention.effective_keys(att)[0, 0, 0], torch.arange(1.0, T + 1))
    assert torch.allclose(attention.effective_keys(att)[1, 0, 0], torch.ones(T))


def test_asked_span_finds_the_needle():
    x = torch.tensor([tasks.encode("| K1 5 K2 7 ba ? K2"), tasks.encode("| K2 7 K1 5 be ? K1")])
    answer = torch.zeros_like(x, dtype=torch.bool)
    answer[:, 7] = True
    q, span = attention.asked_span(x, answer)
    assert q.tolist() == [7, 7]
    assert span[0].nonzero().flatten().tolist() == [3, 4] and span[1].nonzero().flatten().tolist() == [3, 4]
    # on generated needles it agrees with the brute-force answer: the token after the span is y's answer
    b = tasks.needle(np.random.default_rng(0), 50, 40, 3)
    q, span = attention.asked_span(b.x, b.query)
    value_pos = span.int().argmax(1) + 1
    assert torch.equal(b.x[torch.arange(50), value_pos], b.y[torch.arange(50), q])
    with pytest.raises(ValueError, match="needs a query position"):
        attention.asked_span(x, torch.zeros_like(answer))
    with pytest.raises(ValueError, match="never occurs before it"):
        attention.asked_span(torch.tensor([tasks.encode("| K1 5 K3 7 ba ? K2")]), answer[:1])


def test_span_share_hit_and_retrieval_head_by_hand():
    T = 5
    att = attention.visible(T).float() / torch.arange(1, T + 1)[:, None]  # uniform rows
    att = att.expand(2, 1, 3, T, T).clone()  # (2 layers, 1 sequence, 3 heads, T, T)
    att[1, 0, 2, 4] = torch.tensor([0.1, 0.0, 0.7, 0.2, 0.0])  # layer 1, head 2 looks at the span
    q, span = torch.tensor([4]), torch.tensor([[False, False, True, True, False]])
    share = attention.span_share(att, q, span)
    assert share.shape == (2, 1, 3)
    assert share[1, 0, 2].item() == pytest.approx(0.9) and share[0, 0, 0].item() == pytest.approx(0.4)
    hit = attention.hit_at_1(att, q, span)
    assert hit[1, 0, 2] and not hit[0, 0, 0]  # uniform: argmax is key 0, outside the span
    assert attention.retrieval_head(share) == (1, 2)


def test_attention_maps_of_a_real_model_are_causal_rows_that_match_the_fast_path():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32))
    x = torch.randint(0, 64, (3, 16))
    logits, att = attention.attention_maps(model, x)
    assert att.shape == (2, 3, 2, 16, 16)
    assert torch.allclose(att.sum(-1), torch.ones(2, 3, 2, 16), atol=1e-5)
    assert (att[..., ~attention.visible(16)] == 0).all()
    assert torch.allclose(logits, model(x)[0], atol=1e-5)


def test_probe_of_an_untrained_model_reads_as_untrained():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=192, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    res = attention.probe(model, {"block_size": 32, "n_pairs": 2, "n_needles": 2}, n_examples=40)
    for k in ("needle_share", "needle_hit", "kv_share_in", "kv_share_out", "entropy"):
        assert 0 <= res[k] <= 1, (k, res[k])
    # near-uniform attention: the 2-token needle gets about 2 / (visible keys) and entropy is near 1
    assert res["needle_share"] < 0.2 and res["entropy"] > 0.9
    assert {f"kv_share_p{i}" for i in range(4)} <= set(res)


def test_plot_helpers_draw():
    fig = Figure()
    ax1, ax2, ax3 = fig.subplots(1, 3)
    tokens = tasks.decode(tasks.encode("| K1 5 ba ? K1")).split()
    attention.plot_heatmap(ax1, CLEAN[0, 0, 0], tokens[:3], rows=[2], cols=[1])
    attention.plot_row(ax2, CLEAN[0, 0, 0, 2], tokens, highlight=MASK[0])
    attention.plot_bars(ax3, {"NTP": 0.5, "MEAP": 0.7}, {"NTP": 0.1, "MEAP": 0.1})
    assert len(ax2.patches) == 3 and len(ax3.patches) == 2
    assert [t.get_text() for t in ax3.get_xticklabels()] == ["NTP", "MEAP"]


@pytest.mark.slow
def test_cli_reports_a_grid_and_errors_in_one_line(tiny_grid, tmp_path):
    for args, msg in [(["--grid", str(tmp_path)], "no checkpoints in"),
                      (["--mask_ratio", "1.5"], "--examples must be at least 1 and --mask_ratio in (0, 0.5]"),
                      (["--mask_ratio", "0.99"], "--examples must be at least 1 and --mask_ratio in (0, 0.5]"),
                      (["--examples", "0"], "--examples must be at least 1"),
                      (["--seeds", "1"], "unrecognized arguments: --seeds 1")]:
        p = run_script("experiments/attention.py", *args, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith(f"error: {msg}"), p.stderr
    out = str(shutil.copytree(tiny_grid[0], tmp_path / "grid"))  # the tiny grid, seeds 1 and 2
    p = run_script("experiments/attention.py", "--grid", out, "--examples", "8")
    md = open(os.path.join(out, "attention.md")).read()
    assert md.startswith(f"`python -m experiments.attention --grid {out} --examples 8`")
    assert "| 0.00 (NTP) |" in md and "| 0.15 |" in md and "| untrained |" in md and "MEAP - NTP" in md
