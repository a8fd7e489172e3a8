"""
The synthetic check before the text pilots (../results.md): does model.py's GPT learn induction on
repeated random tokens at all? Each row is random ids with one span of lo..hi of them shown twice;
train with plain next-token prediction, and every `--every` steps score greedy accuracy on the 1st
and the 2nd copy of a 32-token span in 200 held-out rows, the mean attention of each layer-0 head on
the previous token ("prev"), and of each last-layer head on the induction target ("ind").
--skip P adds a rule to the training rows (token i+2 = a fixed permutation of token i, with
probability P) so that a previous-token head pays off on its own; --shared S is the model's
emb_common (one random vector of std S added to every embedding); --embstd scales the embeddings.

    python results/copying-pilots/synthetic/induct.py --T 64 --V 128 --lo 8 --hi 32 --steps 2000 --lr 1e-3 --out X.json
    python results/copying-pilots/synthetic/induct.py --table     # the table of README.md from the *.json here

A scratch script kept with its data (one seed per run, 1 CPU thread each); the runs' settings are
in their JSON files.
"""
import argparse, glob, json, math, os, sys, time
import numpy as np, torch
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", ".."))
from model import GPT, GPTConfig
ap = argparse.ArgumentParser()
ap.add_argument("--T", type=int, default=256); ap.add_argument("--V", type=int, default=2048)
ap.add_argument("--layers", type=int, default=2); ap.add_argument("--width", type=int, default=128)
ap.add_argument("--heads", type=int, default=4); ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--steps", type=int, default=3000); ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--init", default="nanomeap"); ap.add_argument("--lo", type=int, default=16); ap.add_argument("--hi", type=int, default=128)
ap.add_argument("--every", type=int, default=250); ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--warmup", type=int, default=100); ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--zipf", type=float, default=0.0)
ap.add_argument("--table", action="store_true"); ap.add_argument("--out", default=None); ap.add_argument("--skip", type=float, default=0.0); ap.add_argument("--shared", type=float, default=0.0); ap.add_argument("--embstd", type=float, default=0.0)
a = ap.parse_args()
if a.table:
    print("| run | context | vocab | layers x width, heads | lr | init | emb_common | skip rule | steps | 1st / 2nd copy at the end | best 2nd copy | layer-0 previous-token share (best head) |")
    print("|---" * 12 + "|")
    for f in sorted(glob.glob(os.path.join(HERE, "*.json"))):
        d = json.load(open(f)); r = d["args"]; end = d["log"][-1]
        prev = f"{max(end['prev']):.2f}" if "prev" in end else "-"
        print(f"| {os.path.basename(f)[:-5]} | {r['T']} | {r['V']} | {r['layers']} x {r['width']}, {r['heads']} | {r['lr']:g} | "
              f"{r['init']}{' (embeddings x %g)' % r['embstd'] if r.get('embstd') else ''} | {r.get('shared', 0):g} | "
              f"{r.get('skip', 0):g} | {end['step']} | {end['first']:.3f} / {end['second']:.3f} | "
              f"{max(row['second'] for row in d['log']):.3f} | {prev} |")
    sys.exit()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
if a.zipf > 0:
    p = 1.0 / np.arange(1, a.V + 1) ** a.zipf; p /= p.sum()
else:
    p = None
PERM = np.random.default_rng(99).permutation(a.V)
def rows(rng, B, T, lo, hi, L=None, train=True):
    x = rng.choice(a.V, size=(B, T + 1), p=p)
    if a.skip and train:
        use = rng.random((B, T + 1)) < a.skip
        for i in range(2, T + 1):
            x[:, i] = np.where(use[:, i], PERM[x[:, i - 2]], x[:, i])
    info = []
    for b in range(B):
        n = L or int(rng.integers(lo, min(hi, (T + 1) // 2) + 1))
        s = int(rng.integers(0, T + 1 - 2 * n + 1)); q = int(rng.integers(s + n, T + 1 - n + 1))
        x[b, q:q + n] = x[b, s:s + n]; info.append((s, q, n))
    return torch.from_numpy(x), info
model = GPT(GPTConfig(block_size=a.T, vocab_size=64 * math.ceil((a.V + 1) / 64), n_layer=a.layers, n_head=a.heads, n_embd=a.width, init=a.init))
if a.shared or a.embstd:
    with torch.no_grad():
        if a.embstd: model.tok_emb.weight.mul_(a.embstd)
        if a.shared: model.tok_emb.weight.add_(a.shared * torch.randn(1, a.width))
opt = model.configure_optimizers(0.05, a.lr, (0.9, 0.95), "cpu")
rng = np.random.default_rng(a.seed); erng = np.random.default_rng(10**6)
ev, einfo = rows(erng, 200, a.T, 0, 0, L=min(32, a.T // 2), train=False)
def evaluate():
    model.eval()
    with torch.no_grad():
        lg = model(ev[:, :-1])[0]
    pred = lg.argmax(-1); y = ev[:, 1:]
    f = s = 0
    for b, (st, q, n) in enumerate(einfo):
        f += (pred[b, st + 1:st + n - 1] == y[b, st + 1:st + n - 1]).float().mean().item()  # predicts tokens st+2.. (needs st+1 seen)
        s += (pred[b, q + 1:q + n - 1] == y[b, q + 1:q + n - 1]).float().mean().item()
    model.train(); return f / len(einfo), s / len(einfo)
def diag():
    model.eval()
    with torch.no_grad():
        _, att = model.attention(ev[:50, :-1])  # (L, B, H, T, T)
    model.train()
    T = att.size(-1); i = torch.arange(1, T)
    prev = att[0][:, :, i, i - 1].mean((0, 2))  # per head of layer 0
    ind = []
    for h in range(att.size(2)):
        v = 0
        for b, (st, q, n) in enumerate(einfo[:50]):
            j = torch.arange(1, n - 1)
            v += att[-1][b, h, q + j, st + j + 1].mean().item()
        ind.append(round(v / 50, 2))
    return [round(x, 2) for x in prev.tolist()], ind
t0 = time.time(); log = []
for it in range(a.steps + 1):
    if it % a.every == 0:
        f, s = evaluate(); pt, ind = diag(); log.append(dict(step=it, first=f, second=s, prev=pt, ind=ind, t=time.time() - t0))
        print(f"step {it} first {f:.3f} second {s:.3f} prev {pt} ind {ind} loss {loss.item() if it else float('nan'):.3f} {time.time()-t0:.0f}s", flush=True)
    if it == a.steps: break
    lr = a.lr * min(1, (it + 1) / a.warmup)
    lr = lr if it < a.warmup else a.lr * 0.1 + 0.45 * a.lr * (1 + math.cos(math.pi * (it - a.warmup) / (a.steps - a.warmup)))
    for g in opt.param_groups: g["lr"] = lr
    x, _ = rows(rng, a.batch, a.T, a.lo, a.hi)
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
if a.out: json.dump(dict(args=vars(a), log=log), open(a.out, "w"))
