"""
A LLaMA-style decoder-only Transformer in one file, read top to bottom: RMSNorm, rotary embeddings,
attention, MLP, Block, the config dataclass, then the GPT itself.

How it differs from GPT-2 (and from nanoGPT's model.py), following the models MEAP pre-trains
(Zhuang et al. 2025, §4.1: LLaMA architecture, 0.1B-1.1B parameters):
- RMSNorm instead of LayerNorm, and no bias in any layer.
- Rotary position embeddings (RoPE) on queries and keys instead of a learned position table.
- A SwiGLU MLP (hidden width ~8/3 of the model width) instead of a GELU MLP of 4x.
- Separate (untied) input embedding and output head.
- Optional grouped-query attention: n_kv_head key/value heads shared by n_head query heads.
- Two attention paths: the fast one (PyTorch's scaled_dot_product_attention) and an explicit
  softmax that returns every layer's and head's attention weights, for the paper's attention
  analysis (§5); both give the same logits.
- A KV cache for generate().
MEAP itself needs nothing in here: [MASK] is an ordinary vocabulary id with its own learned
embedding, attention stays causal, and the loss stays next-token cross-entropy.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned gain (no mean, no bias)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # x / sqrt(mean(x^2) + eps) * weight, in fp32 for stability under bf16 autocast (the casts
        # are free in fp32); F.rms_norm is one fused kernel on recent GPUs and the same formula on CPU
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).type_as(x)


def rope_cache(seq_len, head_dim, theta=10000.0):
    """cos and sin tables for rotary embeddings, (seq_len, 1, head_dim) each: channel pair
    (i, i + head_dim/2) turns by the angle position * theta^(-2i / head_dim); the 1 broadcasts over heads."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len).float(), inv_freq)  # (seq_len, head_dim/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1)[:, None], torch.cat([-sin, sin], dim=-1)[:, None]


def apply_rope(x, cos, sin):
    """Rotate each channel pair (x1, x2) = (x[i], x[i + head_dim/2]) of x (B, T, n_head, head_dim) to
    (x1 cos - x2 sin, x2 cos + x1 sin). Rolling by half the head swaps the halves to (x2, x1), and
    the table sin holds (-sin, sin): two products and a sum, with no slicing or concatenation."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so that generate() feeds only
    the new token each step. Holds at most max_len positions (the model's block_size)."""

    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim, device, dtype):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions already cached; advanced by GPT.forward

    def update(self, layer, k, v):
        """Store k, v (B, n_kv_head, T, head_dim) at the current position; return all cached."""
        T = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer  # index into the KV cache
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.q_proj = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.kv_proj = nn.Linear(config.n_embd, 2 * self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, kv_cache=None, atts=None):
        """x (B, T, C) -> (B, T, C). Given a list atts, takes the explicit path and appends this
        layer's attention weights (B, n_head, T, Tk) to it."""
        B, T, C = x.size()
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)  # (B, T, nh, hd)
        k, v = self.kv_proj(x).view(B, T, 2 * self.n_kv_head, self.head_dim).split(self.n_kv_head, dim=2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # before the transpose: contiguous rows
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh or nkv, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, nkv, Tk, hd), Tk = cached + T
        if self.n_kv_head != self.n_head:  # grouped-query attention: share each kv head
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, Tk, hd)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        Tk = k.size(2)
        # query i sits at absolute position Tk - T + i and may see keys 0 .. Tk - T + i
        mask = None if Tk == T else torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(Tk - T)
        if atts is not None:  # explicit path: the attention weights themselves, for analysis
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, Tk)
            if mask is None:
                mask = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril()
            att = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            atts.append(att)
            y = att @ v  # (B, nh, T, hd)
        else:  # fast path: fused kernels (flash attention on GPU)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: silu(x W_gate) * (x W_up), then W_down."""

    def __init__(self, config):
        super().__init__()
        hidden = 64 * math.ceil(8 * config.n_embd / 3 / 64)  # ~8/3 width, a multiple of 64
        self.gate_proj = nn.Linear(config.n_embd, hidden, bias=False)
        self.up_proj = nn.Linear(config.n_embd, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, config.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config, layer):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.mlp_norm = RMSNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache=None, atts=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, kv_cache, atts)
        x = x + self.mlp(self.mlp_norm(x))
        return x


INITS = ("nanomeap", "official")  # weight initialisations: ours, and the MEAP code's (see GPT._init_weights)


@dataclass
class GPTConfig:
    block_size: int = 256  # longest sequence (RoPE tables and KV cache are this long)
    vocab_size: int = 192  # token ids, [MASK] included (the model's rows: padded_vocab_size)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # 0 or n_head: plain multi-head attention; fewer: grouped-query attention
    n_embd: int = 128
    rope_theta: float = 10000.0
    init: str = "nanomeap"  # 'nanomeap' (width-aware, see _init_weights) or 'official' (the MEAP code's)
    emb_common: float = 0.0  # std of one random vector added to every token's embedding at init; 0 = none

    @property
    def padded_vocab_size(self):
        """vocab_size rounded up to a multiple of 64, which keeps the matmuls fast (nanoGPT pads
        GPT-2's 50257 to 50304): the rows of the embedding and of the output head. The ids past
        vocab_size never occur in the data, so their rows only learn to be unlikely."""
        return 64 * math.ceil(self.vocab_size / 64)

    def __post_init__(self):
        """Resolve the fields that depend on others, then check the shape: ValueError (one line)
        for a model that cannot be built."""
        # so that GPTConfig(n_head=8) means 8 key/value heads too, not grouped-query attention by accident
        self.n_kv_head = self.n_kv_head or self.n_head
        if min(self.block_size, self.vocab_size, self.n_layer, self.n_head, self.n_kv_head, self.n_embd) < 1 or \
                self.n_embd % self.n_head or self.n_head % self.n_kv_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"need positive sizes, n_embd divisible by n_head with an even head size (RoPE "
                             f"rotates pairs), and n_head by n_kv_head; got n_embd={self.n_embd}, "
                             f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, n_layer={self.n_layer}, "
                             f"block_size={self.block_size}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not 0 <= self.emb_common < 1e3:  # (also catches NaN)
            raise ValueError(f"emb_common must be in [0, 1000), got {self.emb_common}")
        if not 0 < self.rope_theta < float("inf"):
            raise ValueError(f"rope_theta must be a positive number, got {self.rope_theta}")


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config  # (GPTConfig checked the shape)
        self.tok_emb = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        cos, sin = rope_cache(config.block_size, config.n_embd // config.n_head, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # the projections that write into the residual stream
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                if config.init == "official":
                    nn.init.normal_(p, mean=0.0, std=1 / (math.sqrt(config.n_embd) * config.n_layer))
                else:  # GPT-2's scaled init
                    with torch.no_grad():
                        p.div_(math.sqrt(2 * config.n_layer))
        if config.emb_common > 0:
            # A direction shared by every token. Layer 0 sees token embeddings alone: with no bias
            # anywhere and RoPE only rotating q and k, its attention can depend on position alone
            # (a previous-token head, the first half of an induction head) only once the embeddings
            # share a component, which training builds slowly from independent random rows.
            with torch.no_grad():
                self.tok_emb.weight += config.emb_common * torch.randn(config.n_embd)

    def _init_weights(self, module):
        # 'nanomeap' (ours, tuned on NTP pilots): std 1/sqrt(3 * fan_in) for every matrix, which is
        # GPT-2's 0.02 at width 768 but larger for narrow models, where a fixed 0.02 keeps the
        # attention logits near zero and slows the forming of induction heads a lot; unit-scale
        # embeddings keep each token's identity dominant in the residual stream (RMSNorm removes
        # their scale before each layer). 'official': the MEAP code's (lit-gpt / TinyLlama) std
        # sqrt(2 / (5 d)) for embeddings and matrices alike, d = n_embd, and 1 / (sqrt(d) n_layer)
        # for the output projections (set in __init__).
        official = self.config.init == "official"
        if isinstance(module, nn.Linear):
            std = math.sqrt(2 / (5 * self.config.n_embd)) if official else (3 * module.in_features) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2 / (5 * self.config.n_embd)) if official else 1.0)

    def num_params(self, non_embedding=True):
        """Parameter count; the input embedding is a table lookup, so leave it out by default."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) token ids -> (logits (B, T, padded_vocab_size), loss): given targets (B, T), the mean
        next-token cross-entropy over targets != -1; without them, None."""
        logits = self._run(idx, kv_cache)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def attention(self, idx, kv_cache=None):
        """The explicit path, for analysis: (logits, the attention weights (n_layer, B, n_head, T, T)).
        Its logits equal forward's, which takes the fast fused path."""
        atts = []
        logits = self._run(idx, kv_cache, atts)
        return logits, torch.stack(atts)

    def _run(self, idx, kv_cache, atts=None):
        """The body of forward and attention: the logits; given a list atts, each layer's attention
        weights are appended to it."""
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]  # (T, 1, hd)
        x = self.tok_emb(idx)  # (B, T, n_embd)
        for block in self.blocks:
            x = block(x, cos, sin, kv_cache, atts)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.lm_head(self.norm(x))

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay the matrices (linear weights, embeddings); not the norm gains
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # the fused kernel (one launch for every parameter) on CUDA; PyTorch's default elsewhere
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True if device_type == "cuda" else None)

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), as in the PaLM paper, appendix B:
        6 per weight for the matmuls, plus 12 * n_layer * n_embd * seq_len for attention."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * seq_len

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, vocab_limit=None):
        """Extend idx (B, T) by max_new_tokens tokens, feeding one new token per step through a
        KV cache. temperature 0 is greedy; top_k keeps the k likeliest tokens; only ids below
        vocab_limit can be drawn (use it to keep [MASK] and the vocabulary padding out)."""
        if not temperature >= 0:  # (also catches NaN)
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None: all tokens), got {top_k}")
        cfg = self.config
        cache = None
        for _ in range(max_new_tokens):
            if cache is None or cache.pos >= cfg.block_size:
                # (re)start the cache on the last block_size - 1 tokens: RoPE positions begin at 0
                ctx = idx[:, -(cfg.block_size - 1):]
                p = next(self.parameters())
                cache = KVCache(cfg.n_layer, idx.size(0), cfg.n_kv_head, cfg.block_size,
                                cfg.n_embd // cfg.n_head, p.device, p.dtype)
            else:
                ctx = idx[:, -1:]
            logits, _ = self(ctx, kv_cache=cache)
            logits = logits[:, -1, :].float()  # (B, padded_vocab_size)
            if vocab_limit is not None:
                logits[:, vocab_limit:] = float("-inf")
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = float("-inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def num_params_of(config):
    """GPT(config)'s parameter count, without its memory or the time to build it: a model of one
    layer and one of two on the meta device, whose difference is one layer's worth. ValueError
    (one line) for sizes past what torch can count."""
    try:
        with torch.device("meta"):
            one, two = (GPT(GPTConfig(**{**config.__dict__, "n_layer": n})) for n in (1, 2))
    except (RuntimeError, OverflowError) as e:
        raise ValueError(f"this model is too large to build ({str(e).splitlines()[0][:60]}); lower --n_embd, "
                         f"--n_layer or --block_size") from None
    per_layer = two.num_params(False) - one.num_params(False)
    return one.num_params(False) + (config.n_layer - 1) * per_layer
