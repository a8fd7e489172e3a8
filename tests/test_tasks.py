import numpy as np
import pytest
import torch

import tasks
from helpers import oracle_answers, oracle_model


@pytest.mark.parametrize("task", tasks.TASKS)
@pytest.mark.parametrize("T", [32, 64, 129])
def test_generators_answers_agree_with_a_brute_force_oracle(task, T):
    b = tasks.make_batch(task, np.random.default_rng(T), 16, T, n_pairs=4, n_needles=3)
    assert b.x.shape == b.y.shape == b.query.shape == (16, T)
    assert torch.equal(b.x[:, 1:], b.y[:, :-1])  # y is x shifted by one
    assert (b.x[:, 0] == tasks.BOS).all() and (b.x < tasks.MASK_ID).all() and (b.x >= 0).all()
    ans = oracle_answers(b.x, b.query)
    assert torch.equal(ans[b.query], b.y[b.query])
    assert (b.query.sum(1) > 0).all()


@pytest.mark.parametrize("T,n_queries", [(64, 28), (63, 27)])
def test_mqar_layout(T, n_queries):
    b = tasks.mqar(np.random.default_rng(0), 8, T, n_pairs=4)
    ctx = b.x[:, 1:9:2]  # the 4 keys of the pairs, distinct in every row
    assert all(len(set(r.tolist())) == 4 for r in ctx)
    assert (b.query.sum(1) == n_queries).all()  # queries fill the rest of the sequence
    queried = b.x[b.query].view(8, n_queries)
    assert all(set(q.tolist()) <= set(c.tolist()) for q, c in zip(queried, ctx))
    assert (b.query.nonzero()[:, 1].view(8, -1)[:, -1] == T - 1).all()  # the last input is a query
    if T % 2:  # an odd length leaves one filler word between the pairs and the queries
        assert np.isin(b.x[:, 9].numpy(), tasks.FILLER).all()


def test_mqar_offset_moves_the_pairs_and_keeps_the_queries_in_place():
    """The positional-shortcut control: 0..offset filler words before the pairs, per sequence."""
    T, D, off = 64, 4, 8
    b = tasks.mqar(np.random.default_rng(1), 200, T, D, offset=off)
    assert torch.equal(oracle_answers(b.x, b.query)[b.query], b.y[b.query])
    first_key = np.isin(b.x.numpy(), tasks.KEYS).argmax(axis=1)  # where each row's first pair starts
    assert first_key.min() == 1 and first_key.max() == 1 + off and len(set(first_key)) == off + 1
    assert (b.query.sum(1) == (T - 2 * D - off) // 2).all()
    assert (b.query.nonzero()[:, 1].view(200, -1)[:, 0] == b.query.nonzero()[0, 1]).all()  # queries start together
    for row, k in zip(b.x, first_key):  # filler only, before the pairs and between them and the queries
        q0 = int(b.query[0].nonzero()[0])
        rest = np.r_[1:k, k + 2 * D:q0]
        assert np.isin(row[rest].numpy(), tasks.FILLER).all()
    assert torch.equal(tasks.mqar(np.random.default_rng(2), 4, T, D, offset=0).query,
                       tasks.mqar(np.random.default_rng(2), 4, T, D).query)
    with pytest.raises(ValueError, match="offset of 60"):
        tasks.mqar(np.random.default_rng(0), 2, T, D, offset=60)


@pytest.mark.parametrize("T,n,q", [(32, 3, 1), (48, 4, 2), (64, 8, 8), (23, 4, 4)])
def test_multi_query_needles_agree_with_the_oracle(T, n, q):
    b = tasks.needle(np.random.default_rng(T), 16, T, n, depth=0.5, n_queries=q)
    assert b.x.shape == (16, T) and (b.query.sum(1) == q).all()
    assert torch.equal(oracle_answers(b.x, b.query)[b.query], b.y[b.query])
    asked = b.x[b.query].view(16, q)  # q distinct needles asked about, each after a '?'
    assert all(len(set(r.tolist())) == q for r in asked)
    assert (b.x[:, T + 1 - 3 * q::3] == tasks.QUERY).all()  # '? key value' x q closes the sequence
    assert (b.x != -1).all() and (b.x < tasks.MASK_ID).all()


@pytest.mark.parametrize("position", [0, 3, 7])
def test_kv_asks_about_the_pair_at_the_requested_position(position):
    T, n = 40, 8
    b = tasks.kv(np.random.default_rng(position), 16, T, n, position)
    assert (b.query.sum(1) == 1).all() and b.query[:, -1].all()
    assert torch.equal(b.x[:, -1], b.x[:, 1 + 2 * position])  # the asked key is pair `position`
    assert torch.equal(b.y[:, -1], b.x[:, 2 + 2 * position])  # and the answer its value
    assert torch.equal(oracle_answers(b.x, b.query)[b.query], b.y[b.query])
    assert np.isin(b.x[:, 1 + 2 * n:-2].numpy(), tasks.FILLER).all()  # filler between pairs and '?'
    with pytest.raises(ValueError, match="position in 0..7"):
        tasks.kv(np.random.default_rng(0), 2, T, n, 8)


def test_accuracy_counts_every_answer_over_uneven_batches():
    calls = []

    def make(b):
        calls.append(b)
        return tasks.needle(np.random.default_rng(len(calls)), b, 32, 3, n_queries=2)

    assert tasks.accuracy(oracle_model, make, 25, batch_size=10) == 1.0
    assert calls == [10, 10, 5]


@pytest.mark.parametrize("depth", tasks.DEPTHS)
def test_needle_lands_at_the_requested_depth(depth):
    T, n = 100, 4
    b = tasks.needle(np.random.default_rng(1), 32, T, n, depth=depth)
    F = T - 2 * n - 3  # filler words in the haystack
    key = b.x[:, -1]
    for row in range(32):
        pos = (b.x[row] == key[row]).nonzero()[0].item()  # the needle's key in the haystack
        fill_before = sum(1 for tok in b.x[row, 1:pos].tolist() if tok in tasks.FILLER)
        assert fill_before == round(depth * F)
    assert torch.allclose(b.depth, torch.full((32,), round(depth * F) / F, dtype=torch.float64))
    # n needles with distinct keys in every haystack, then '? key'
    keys_in_hay = [(np.isin(r[:-2], tasks.KEYS)).sum() for r in b.x.numpy()]
    assert keys_in_hay == [n] * 32 and (b.x[:, -2] == tasks.QUERY).all()


def test_filler_follows_the_fixed_bigram_language():
    words = tasks.filler(np.random.default_rng(0), 200, 500)
    ring = {int(w): i for i, w in enumerate(tasks.FILLER[tasks.RING])}  # word id -> ring position
    pos = np.vectorize(ring.get)(words)
    steps = (pos[:, 1:] - pos[:, :-1]) % len(ring)
    allowed = set(int(s) % len(ring) for s in tasks.STEPS)
    assert set(np.unique(steps).tolist()) == allowed
    freq = {s % len(ring): (steps == s % len(ring)).mean() for s in tasks.STEPS}
    for s, p in zip(tasks.STEPS, tasks.STEP_PROBS):
        assert abs(freq[s % len(ring)] - p) < 0.01
    assert tasks.FILLER_ENTROPY == pytest.approx(1.208, abs=1e-3)


def test_generation_is_deterministic_by_seed():
    a = tasks.make_batch("mix", np.random.default_rng(5), 8, 64)
    b = tasks.make_batch("mix", np.random.default_rng(5), 8, 64)
    c = tasks.make_batch("mix", np.random.default_rng(6), 8, 64)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


def test_evaluate_scores_an_oracle_1_and_guessing_about_chance():
    res = tasks.evaluate(oracle_model, "mix", 48, n_pairs=4, n_needles=3, n_examples=100)
    assert res["acc"] == res["acc_mqar"] == res["acc_needle"] == 1.0
    assert all(res[f"acc_needle_d{d:.2f}"] == 1.0 for d in tasks.DEPTHS)

    g = torch.Generator().manual_seed(0)

    def guesser(x):  # a random value token everywhere: chance is 1/64
        logits = torch.zeros(*x.shape, tasks.VOCAB_SIZE)
        pick = torch.from_numpy(tasks.VALUES)[torch.randint(64, x.shape, generator=g)]
        return logits.scatter_(2, pick[..., None], 1.0), None

    res = tasks.evaluate(guesser, "mix", 48, n_pairs=4, n_needles=3, n_examples=2000)
    assert 0.005 < res["acc_mqar"] < 0.03 and 0.005 < res["acc_needle"] < 0.035


def test_evaluate_of_an_untrained_model_is_near_chance():
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=192, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    res = tasks.evaluate(model, "mix", 64, n_examples=200)
    assert res["acc"] < 0.05


def test_errors_are_clear():
    with pytest.raises(ValueError, match="seq_len >= 18"):
        tasks.mqar(np.random.default_rng(0), 2, 17, n_pairs=8)
    with pytest.raises(ValueError, match="needles and 1 queries"):
        tasks.needle(np.random.default_rng(0), 2, 10, n_needles=4)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make_batch("nope", np.random.default_rng(0), 2, 64)
    with pytest.raises(ValueError, match="not in the task vocabulary"):
        tasks.encode("| K3 hello")
    assert tasks.decode(tasks.encode("| K3 7 ba ? K3")) == "| K3 7 ba ? K3"


@pytest.mark.parametrize("T,K,m,gold", [(64, 5, 4, 0), (64, 5, 4, 4), (63, 3, 2, 1), (128, 10, 4, 6), (20, 2, 2, 1)])
def test_multidoc_qa_agrees_with_an_oracle(T, K, m, gold):
    b = tasks.qa(np.random.default_rng(T + gold), 12, T, K, gold, m)
    assert b.x.shape == (12, T) and torch.equal(b.x[:, 1:], b.y[:, :-1])
    assert (b.query.sum(1) == m).all() and b.query[:, T - m:].all()
    for x, y in zip(b.x, b.y):
        seq = torch.cat([x, y[-1:]]).tolist()
        starts = [i for i, t in enumerate(seq) if t == tasks.BOS]
        assert len(starts) == K and starts[0] == 0  # K documents, each opened by '|'
        docs = [seq[s:e] for s, e in zip(starts, starts[1:] + [seq.index(tasks.QUERY)])]
        facts = [[t for t in doc if t in tasks.KEYS] for doc in docs]
        assert all(len(f) == 1 for f in facts)  # one fact per document
        asked = seq[-m - 1]
        assert seq[-m - 2] == tasks.QUERY and facts[gold] == [asked]  # the question is about the gold document
        k = seq.index(asked)  # brute force: the values after the key's first occurrence
        assert seq[-m:] == seq[k + 1:k + 1 + m]
    assert (b.depth == gold / max(K - 1, 1)).all()


def test_multidoc_qa_errors_name_the_fix():
    with pytest.raises(ValueError, match="need seq_len >= 65"):
        tasks.qa(np.random.default_rng(0), 2, 40, 10, 0, 4)
    with pytest.raises(ValueError, match="gold in 0..4"):
        tasks.qa(np.random.default_rng(0), 2, 64, 5, 5, 4)
