import dataclasses

import pytest
import torch

from model import GPT, GPTConfig, KVCache, RMSNorm, apply_rope, num_params_of, rope_cache
from runtime import gpu_peak_flops, mfu


def tiny(n_kv_head=4, block_size=32, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=64, n_layer=2, n_head=4,
                         n_kv_head=n_kv_head, n_embd=32)).eval()


def test_a_config_without_n_kv_head_is_multi_head_attention():
    assert GPTConfig(n_head=8, n_embd=64).n_kv_head == 8 and GPTConfig(n_head=8, n_kv_head=2).n_kv_head == 2
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=8, n_embd=64))
    assert model.blocks[0].attn.kv_proj.weight.shape == (2 * 8 * 8, 64)  # 8 key and 8 value heads of 8


def test_rmsnorm_is_the_reference_formula_and_keeps_the_input_dtype():
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x = torch.randn(3, 5, 48) * 3
    x[0, 0] = 1e-4  # a tiny row, where eps matters
    x64, w64 = x.double().requires_grad_(), norm.weight.double()
    ref = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * w64  # LLaMA's RMSNorm, float64
    xr = x.clone().requires_grad_()
    out = norm(xr)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(x)
    out.backward(g)
    ref.backward(g.double())
    torch.testing.assert_close(xr.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computed in fp32, returned in the input's dtype
        half = norm(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), ref.detach(), atol=0.03, rtol=0.02)


def test_rope_rotates_each_channel_pair_by_its_angle():
    """Against the formula, written with complex numbers in float64: channel pair (x[i], x[i + d/2])
    at position t is multiplied by exp(1j * t * theta^(-2i/d))."""
    T, H, D, theta = 7, 3, 8, 500.0
    x = torch.randn(2, T, H, D)
    cos, sin = rope_cache(T, D, theta)
    out = apply_rope(x, cos, sin)
    t = torch.arange(T, dtype=torch.float64)[:, None, None]  # (T, 1, 1): over heads and pairs
    freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    z = torch.complex(x[..., :D // 2].double(), x[..., D // 2:].double()) * torch.polar(torch.ones((), dtype=torch.float64), t * freq)
    torch.testing.assert_close(out.double(), torch.cat([z.real, z.imag], dim=-1), atol=1e-6, rtol=1e-6)
    # what RoPE is for: lengths are kept, and a query-key product depends on the offset alone
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(D), torch.randn(D)
    qs, ks = apply_rope(q.expand(1, T, 1, D), cos, sin)[0, :, 0], apply_rope(k.expand(1, T, 1, D), cos, sin)[0, :, 0]
    torch.testing.assert_close(qs[5] @ ks[2], qs[3] @ ks[0])  # offset 3 at two places
    assert not torch.allclose(qs[5] @ ks[2], qs[5] @ ks[3])


@pytest.mark.parametrize("explicit", [False, True])
def test_causal_changing_token_t_leaves_earlier_logits_unchanged(explicit):
    model = tiny()
    idx = torch.randint(0, 64, (2, 20))
    t = 11
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % 64
    with torch.no_grad():
        a = (model.attention if explicit else model)(idx)[0]
        b = (model.attention if explicit else model)(changed)[0]
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t:], b[:, t:])  # ...and the change is seen from t on


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_fast_and_explicit_attention_paths_give_the_same_logits(n_kv_head):
    model = tiny(n_kv_head)
    idx = torch.randint(0, 64, (3, 32))
    targets = torch.randint(0, 64, (3, 32))
    with torch.no_grad():
        fast, _ = model(idx, targets)
        slow, att = model.attention(idx)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert att.shape == (2, 3, 4, 32, 32)  # (n_layer, B, n_head, T, T)
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 3, 4, 32))
    assert att.triu(1).abs().max() == 0  # no weight on future positions


def test_loss_is_next_token_cross_entropy_ignoring_minus_one():
    model = tiny()
    idx = torch.randint(0, 64, (2, 8))
    targets = torch.randint(0, 64, (2, 8))
    targets[0, :4] = -1
    with torch.no_grad():
        logits, loss = model(idx, targets)
    keep = targets != -1
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("explicit", [False, True])
def test_kv_cache_matches_the_full_forward(explicit):
    model = tiny(n_kv_head=2)
    idx = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        full = model(idx)[0]
        cache = KVCache(2, 2, 2, 32, 8, "cpu", torch.float32)
        run = model.attention if explicit else model
        parts = [run(idx[:, :10], kv_cache=cache)[0], run(idx[:, 10:17], kv_cache=cache)[0]]  # prefill, a chunk
        parts += [run(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(17, 24)]  # one token at a time
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 24


def test_greedy_generate_with_cache_equals_recomputing_everything():
    model = tiny(block_size=16)
    idx = torch.randint(0, 64, (2, 5))
    out = model.generate(idx, 11, temperature=0)  # fills the block exactly
    ref = idx
    with torch.no_grad():
        for _ in range(11):
            ref = torch.cat([ref, model(ref)[0][:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, ref)
    # past block_size the cache restarts on the most recent tokens
    assert model.generate(idx, 40, temperature=0).shape == (2, 45)


def test_generate_never_draws_at_or_above_vocab_limit():
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight[40:] += 5.0  # make the forbidden ids the likeliest
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), 30, temperature=1.0, top_k=10, vocab_limit=40)
    assert out[:, 1:].max() < 40


def test_too_long_input_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size"):
        tiny(block_size=8)(torch.zeros(1, 9, dtype=torch.long))


def test_optimizer_decays_matrices_only_and_covers_every_parameter():
    model = tiny()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_mfu_knows_the_gpu_and_says_nothing_on_cpu(monkeypatch):
    model = tiny()
    assert gpu_peak_flops("cpu") is None and mfu(model.flops_per_token(32), 1e6, "cpu") is None
    names = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H200": 989e12,
             "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA L4": 121e12, "NVIDIA L40": 181e12, "NVIDIA L40S": 362e12,
             "Some Future GPU": None}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert gpu_peak_flops("cuda:0") == peak
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    tokens_per_sec = 1e5
    expected = model.flops_per_token(32) * tokens_per_sec / 312e12
    assert mfu(model.flops_per_token(32), tokens_per_sec, "cuda:0") == pytest.approx(expected)


def test_config_keeps_the_vocabulary_as_given_and_its_padded_size_apart():
    cfg = GPTConfig(block_size=8, vocab_size=163, n_layer=3, n_head=2, n_embd=32)
    assert cfg.vocab_size == 163 and cfg.padded_vocab_size == 192
    model = GPT(cfg)
    assert model.tok_emb.weight.shape[0] == model.lm_head.weight.shape[0] == 192
    assert GPTConfig(**dataclasses.asdict(cfg)) == cfg  # what a checkpoint saves builds it again
    assert num_params_of(cfg) == model.num_params(False)  # counted without building it
