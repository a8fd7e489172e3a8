"""The batches train.py trains on (batches.py, with mask.meap_inputs), specified: where MEAP puts [MASK] and where it must
not, exact counts, fresh masks at every step, micro-step and process, the official shared scheme,
the random-token control, text batches, and the fine-tuning layouts. Then train.py itself: its
first logged loss is the loss on these batches, each micro-step's batch in order, gradient
accumulation, the learning-rate schedule."""

import json
import math
import os

import numpy as np
import pytest
import torch

import configurator
import tasks
from batches import Batches, SFTBatches, vocabulary
from helpers import ROOT, TINY, run_inprocess, run_script
from mask import meap_inputs
from model import GPT, GPTConfig

DEFAULTS = configurator.read_settings(os.path.join(ROOT, "train.py"))
MASK = tasks.MASK_ID


def batches(rank=0, world_size=1, **settings):
    """train.py's pre-training batches for its settings, as train.py builds them; with the settings
    (cfg) and the [MASK] id that its MEAP line reads beside them."""
    c = dict(DEFAULTS, **settings)
    b = Batches(c["dataset"], c["block_size"], c["batch_size"], c["seed"], c["task"], c["n_pairs"], c["n_needles"],
                c["mqar_offset"], c["mask_mode"], rank, world_size)
    b.cfg = c
    b.mask_token_id, _ = vocabulary(c["dataset"], c["block_size"], c["task"], c["n_pairs"], c["n_needles"],
                                    c["mqar_offset"])
    return b


def meap(b, x, query, it=0, micro=0):
    """train.py's MEAP line, for the run whose Batches is b."""
    c = b.cfg
    return meap_inputs(x, c["mask_ratio"], b.mask_token_id, mode=c["mask_mode"], exclude=None if c["mask_queries"] else query,
                       generator=b.mask_generator(it, micro), corruption=c["corruption"], vocab_size=b.mask_token_id)[0]


def meap_batch(b, it=0, micro=0):
    """The clean batch and MEAP's input for it, as train.py's loop builds them."""
    x, y, query = b.clean("train", it, micro)
    return x, y, query, meap(b, x, query, it, micro)


def test_defaults_are_the_papers_masking():
    assert DEFAULTS["mask_queries"] is True and DEFAULTS["mask_mode"] == "per_sequence"
    assert DEFAULTS["corruption"] == "mask" and DEFAULTS["mask_ratio"] == 0.15


def test_mask_id_is_no_real_token():
    # [MASK] is the last id of the task vocabulary and never appears in generated data
    assert MASK == tasks.VOCAB_SIZE - 1 and tasks.ITOS[MASK] == "[MASK]" and tasks.ITOS.count("[MASK]") == 1
    assert MASK not in set(tasks.STOI[w] for w in tasks.ITOS[:-1])
    b = batches(task="mix", mqar_offset=4)
    for it in range(20):
        x, y, _ = b.clean("train", it)
        assert not (x == MASK).any() and not (y == MASK).any()


@pytest.mark.parametrize("ratio", [0.05, 0.15, 0.3])
def test_mask_only_in_x_exactly_floor_t_r_per_row_and_y_clean(ratio):
    b = batches(mask_ratio=ratio)
    x, y, _, xm = meap_batch(b, it=5)
    T = x.shape[1]
    is_mask = xm == MASK
    assert (is_mask.sum(1) == math.floor(T * ratio)).all()  # exact count in every row
    assert torch.equal(xm[~is_mask], x[~is_mask])  # every other input untouched
    assert not is_mask[:, -1].any()  # the last input never
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is the clean next token, [MASK] nowhere in it
    assert not (y == MASK).any()


def test_uniform_by_default_spared_queries_on_request():
    """Uniform (the paper): a query position is masked as often as any other; mask_queries=False:
    never."""
    T, r, hits, seen = DEFAULTS["block_size"], DEFAULTS["mask_ratio"], 0, 0
    b = batches()
    for it in range(40):
        _, _, query, xm = meap_batch(b, it)
        hits += int((xm == MASK)[query].sum())
        seen += int(query.sum())
    expected = math.floor(T * r) / (T - 1)  # each of positions 0..T-2 equally likely
    assert abs(hits / seen - expected) < 0.02, (hits / seen, expected)
    spared = batches(mask_queries=False)
    for it in range(40):
        _, _, query, xm = meap_batch(spared, it)
        assert not (xm == MASK)[query].any()
        assert ((xm == MASK).sum(1) == math.floor(T * r)).all()  # the same count, elsewhere


def test_masks_differ_across_iteration_micro_step_and_rank_and_repeat_exactly():
    def mask_at(it, micro, rank):
        b = batches(rank=rank, world_size=2)
        return meap_batch(b, it, micro)[3] == MASK

    base = mask_at(3, 0, 0)
    assert torch.equal(base, mask_at(3, 0, 0))  # a pure function of (seed, it, micro, rank)
    for other in (mask_at(4, 0, 0), mask_at(3, 1, 0), mask_at(3, 0, 1)):
        assert not torch.equal(base, other)
    assert not torch.equal(batches(seed=1).mask_generator(3).get_state(), batches(seed=2).mask_generator(3).get_state())


def test_ratio_zero_is_plain_next_token_prediction():
    b = batches(mask_ratio=0.0)
    x, _, _, xm = meap_batch(b, 7)
    assert xm is x


def test_shared_mode_is_the_official_scheme():
    """One set of floor(T r) columns per optimizer step: the same in every row, micro-step and
    process, queries not spared; 51 patterns, seeded 50 + step % 51."""
    T, k = DEFAULTS["block_size"], math.floor(DEFAULTS["block_size"] * DEFAULTS["mask_ratio"])
    cols = {}
    for rank in (0, 1):
        for micro in (0, 1):
            b = batches(rank=rank, world_size=2, mask_mode="shared", gradient_accumulation_steps=2)
            m = meap_batch(b, 10, micro)[3] == MASK
            assert (m == m[0]).all() and m[0].sum() == k and not m[0, -1]
            cols[(rank, micro)] = m[0]
    assert all(torch.equal(c, cols[(0, 0)]) for c in cols.values())
    b = batches(mask_mode="shared")
    assert not torch.equal(meap_batch(b, 11)[3] == MASK, meap_batch(b, 10)[3][:1] == MASK)
    assert torch.equal(meap_batch(b, 10 + 51)[3][0] == MASK, cols[(0, 0)])  # the official 51 patterns
    hit = torch.zeros(T, dtype=torch.bool)
    for it in range(51):
        x, _, query, xm = meap_batch(b, it)
        hit |= (xm == MASK)[0]
    assert hit[:-1].all()  # every column but the last is masked at some step: no exclusions


def test_random_corruption_same_positions_real_tokens():
    x, _, _, xm = meap_batch(batches(mask_ratio=0.3), 2)
    _, _, _, xr = meap_batch(batches(mask_ratio=0.3, corruption="random"), 2)
    where = xm == MASK
    assert not (xr == MASK).any() and (xr < MASK).all()
    assert torch.equal(xr[~where], x[~where])  # the same positions are corrupted ...
    assert (xr[where] != x[where]).float().mean() > 0.9  # ... with other, random tokens


def test_text_batch_y_is_x_shifted_by_one(tmp_path):
    data = np.arange(5000, dtype=np.uint16) % 50
    for split in ("train", "val"):
        data.tofile(tmp_path / f"{split}.bin")
    b = batches(dataset=str(tmp_path), block_size=16, batch_size=8)
    x, y, query = b.clean("train", 0)
    assert x.shape == y.shape == (8, 16) and not query.any()
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], (x[:, -1] + 1) % 50)
    assert torch.equal(b.clean("val", 0)[0], b.clean("val", 0)[0])  # held out: the same every time


def test_ranks_and_steps_see_different_data():
    x0 = batches(rank=0, world_size=2).clean("train", 0)[0]
    assert not torch.equal(x0, batches(rank=1, world_size=2).clean("train", 0)[0])
    assert not torch.equal(x0, batches(rank=0, world_size=2).clean("train", 1)[0])
    assert not torch.equal(x0, batches().clean("val", 0)[0])


# --- fine-tuning batches -------------------------------------------------------------------------

SFT = dict(n_docs=2, answer_len=20, qa_tokens=72, sft_examples=12, sft_min_answer=1, batch_size=4, block_size=160)


def sft_batches(layout, ratio=0.1, rank=0, world_size=1, **kw):
    """train.py's fine-tuning batches for these settings, as train.py builds them (gradient_accumulation_steps:
    for all processes together, as the flag; each process takes its share)."""
    c = dict(DEFAULTS, **{**SFT, **kw}, sft=layout, mask_ratio=ratio)
    return SFTBatches(layout, c["seed"], c["sft_examples"], c["qa_tokens"], c["n_docs"], c["answer_len"], ratio, MASK,
                      c["sft_min_answer"], c["sft_static"], c["batch_size"], c["gradient_accumulation_steps"] // world_size,
                      rank, world_size)


def test_meap_sft_takes_half_the_examples_per_step_with_floor_m_r_masks():
    ntp, concat, separate = sft_batches("ntp", 0.0), sft_batches("concat"), sft_batches("separate")
    assert len(ntp.indices(0)) == 4 and len(concat.indices(0)) == len(separate.indices(0)) == 2
    x, y = ntp.batch(0)
    assert x.shape == (4, 71) and not (x == MASK).any() and ((y != -1).sum(1) == 20).all()
    x, y = concat.batch(0)  # one row per example: [prompt, answer, prompt, masked answer]
    assert x.shape == (2, 143) and ((x == MASK).sum(1) == 2).all() and ((y != -1).sum(1) == 40).all()
    x, y = separate.batch(0)  # two rows per example: the clean one, then its masked copy
    assert x.shape[0] == 4 and ((x == MASK).sum(1).tolist() in ([0, 2, 0, 2], [0, 2, 0, 1], [0, 1, 0, 2],
                                                                  [0, 1, 0, 1]))
    assert ((y != -1).sum(1)[1::2] == 2).all()  # the copy's targets: its 2 masked tokens alone


def test_separate_layout_can_mask_the_last_answer_token():
    b, last = sft_batches("separate", 0.5), 0
    for it in range(6):
        _, y = b.batch(it)
        last += int((y[1::2, -1] != -1).sum())  # the copy's last target is the last answer token
    assert last > 0


def test_sft_positions_static_or_dynamic():
    static, dynamic = sft_batches("concat", sft_static=True), sft_batches("concat")
    # example i at step 0 and again at step 6 (one epoch later, 12 examples / 2 per step)
    def masks(b, it):
        return {i: tuple(row.tolist()) for i, row in zip(b.indices(it), (b.batch(it)[0] == MASK))}
    first = {**masks(static, 0), **masks(static, 1)}
    later = {}
    for it in range(6, 12):
        later.update(masks(static, it))
    assert all(later[i] == first[i] for i in first)  # static: the same positions every epoch
    first = {**masks(dynamic, 0), **masks(dynamic, 1)}
    later = {}
    for it in range(6, 12):
        later.update(masks(dynamic, it))
    assert any(later[i] != first[i] for i in first)


@pytest.mark.parametrize("layout", ["ntp", "concat"])
def test_every_example_once_per_epoch(layout):
    b = sft_batches(layout, 0.0 if layout == "ntp" else 0.1)
    per = len(b.indices(0))
    steps = SFT["sft_examples"] // per
    for epoch in range(3):
        seen = [i for it in range(epoch * steps, (epoch + 1) * steps) for i in b.indices(it)]
        assert sorted(seen) == list(range(SFT["sft_examples"]))
    assert b.indices(0) != b.indices(steps)  # a fresh order every epoch


def test_under_ddp_every_example_once_per_epoch_across_processes_and_micro_steps():
    """2 processes with 2 micro-steps each (--gradient_accumulation_steps 4): one step takes 4 x 2
    examples, each process its own, and an epoch of 16 visits every example once."""
    b = {rank: sft_batches("concat", rank=rank, world_size=2, gradient_accumulation_steps=4, sft_examples=16)
         for rank in (0, 1)}
    for epoch in range(2):
        seen = [i for it in (2 * epoch, 2 * epoch + 1) for rank in (0, 1) for micro in (0, 1)
                for i in b[rank].indices(it, micro)]
        assert sorted(seen) == list(range(16))


# --- train.py on these batches ---------------------------------------------------------------------

def metrics(out_dir):
    with open(out_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_train_py_loss_is_the_loss_on_meap_inputs_and_the_lr_schedule(tmp_path):
    """train.py's first logged loss is the model's loss on MEAP's input against the clean
    targets (not on clean inputs, not on masked targets); its logged learning rate warms up
    linearly, peaks, and decays by a cosine to min_lr."""
    args = [*TINY, "--mask_ratio", "0.3", "--max_iters", "12", "--warmup_iters", "4", "--lr_decay_iters", "10",
            "--learning_rate", "1e-3", "--min_lr", "1e-4", "--eval_interval", "12"]
    run_script("train.py", *args, "--out_dir", str(tmp_path))
    rows = metrics(tmp_path)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    cfg = ckpt["config"]
    torch.manual_seed(cfg["seed"])  # train.py's initial weights
    model = GPT(GPTConfig(**ckpt["model_args"]))
    x, y, query, xm = meap_batch(batches(**cfg), 0)
    with torch.no_grad():
        masked_targets = meap(batches(**cfg), y, query, 0)
        on_meap, clean, on_targets = (model(a, b)[1].item() for a, b in ((xm, y), (x, y), (xm, masked_targets)))
    logged = next(r["loss"] for r in rows if r["iter"] == 0 and "loss" in r)
    assert logged == pytest.approx(on_meap, abs=1e-5)
    assert abs(logged - clean) > 1e-3 and abs(logged - on_targets) > 1e-3

    lr = {r["iter"]: r["lr"] for r in rows if "lr" in r}
    assert lr[0] == pytest.approx(1e-3 / 5) and lr[3] == pytest.approx(1e-3 * 4 / 5)  # warm-up
    assert lr[4] == pytest.approx(1e-3)  # the peak
    assert all(lr[i] > lr[i + 1] for i in range(4, 10))  # cosine decay
    assert lr[7] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 3 / 6)) * 9e-4)
    assert lr[10] == lr[11] == pytest.approx(1e-4)  # the floor


def test_every_micro_step_trains_on_its_own_batch(tmp_path, monkeypatch):
    """train.py draws each batch one micro-step ahead (to overlap with the GPU); the model still
    sees, at iteration i and micro-step m, exactly MEAP's input of (i, m), in order."""
    seen, forward = [], GPT.forward

    def spy(self, idx, targets=None, kv_cache=None):
        if self.training:
            seen.append((idx.clone(), targets.clone()))
        return forward(self, idx, targets, kv_cache)

    monkeypatch.setattr(GPT, "forward", spy)
    code, _, err = run_inprocess("train.py", *TINY, "--mask_ratio", "0.3", "--max_iters", "3",
                                 "--gradient_accumulation_steps", "2", "--eval_interval", "3", "--out_dir", str(tmp_path))
    assert code == 0, err
    b = batches(**torch.load(tmp_path / "ckpt.pt", weights_only=False)["config"])
    want = [meap_batch(b, it, micro) for it in range(3) for micro in range(2)]
    assert len(seen) == len(want)
    assert all(torch.equal(x, w[3]) and torch.equal(y, w[1]) for (x, y), w in zip(seen, want))


@pytest.mark.slow
def test_gradient_accumulation_equals_the_larger_batch(tiny_ckpt, tmp_path):
    """Two micro-steps of 2 examples give the weights of steps of 4 (fine-tuning visits the same
    examples in both, and every answer has the same number of tokens)."""
    common = ["--init_from", str(tiny_ckpt), "--sft", "ntp", "--mask_ratio", "0", "--n_docs", "2", "--answer_len",
              "2", "--qa_tokens", "16", "--sft_examples", "12", "--max_iters", "2", "--warmup_iters", "0", "--eval_interval", "2",
              "--eval_iters", "1", "--eval_examples", "4", "--device", "cpu"]
    run_script("train.py", *common, "--batch_size", "2", "--gradient_accumulation_steps", "2",
               "--out_dir", str(tmp_path / "accum"))
    run_script("train.py", *common, "--batch_size", "4", "--out_dir", str(tmp_path / "big"))
    a = torch.load(tmp_path / "accum" / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "big" / "ckpt.pt", weights_only=False)["model"]
    base = torch.load(tiny_ckpt / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(not torch.allclose(a[k], base[k], atol=1e-4) for k in a)  # and the step did move them
