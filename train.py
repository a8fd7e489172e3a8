"""
Pre-train a small GPT with MEAP (Mask-Enhanced Autoregressive Prediction, Zhuang et al. 2025) or
with plain next-token prediction (NTP). The two differ in one line: MEAP replaces a random share
of the *input* tokens by [MASK] before the forward pass; targets and loss stay the same.

    python train.py --mask_ratio 0.15                # MEAP, the paper's pre-training ratio
    python train.py --mask_ratio 0 --out_dir out-ntp # NTP, everything else identical
    python train.py config/NAME.py --max_iters 5000  # a config file, then flags
    python train.py --init_from resume               # continue the run in out_dir exactly
    python train.py --overwrite true                 # replace the finished run in out_dir (else refused)
    python train.py config/sft_qa.py                 # fine-tune config/sft_base.py's model, MEAP-SFT
    torchrun --standalone --nproc_per_node 8 train.py  # DDP over 8 GPUs (gloo on CPU)

The default trains on a synthetic retrieval mixture generated on the fly (see tasks.py). Every
setting below is a global; `python train.py --help` lists them with their comments.

The MEAP line is in get_batch(), just above the training loop at the bottom: `meap_inputs(...)`
from mask.py (batches.py builds every clean batch and draws the mask positions' random stream).

Fine-tuning (--sft, from a checkpoint given to --init_from) trains on a fixed set of (prompt,
answer) examples of the synthetic multi-document QA, with the loss on the answer only. MEAP-SFT
duplicates each example and masks mask_ratio of the answer tokens in the copy (mask.py), and takes
half as many examples per step, so both objectives see the same tokens per step (paper §3.2).
"""

import dataclasses
import json
import math
import os
import shlex
import sys
import time

import runtime  # before torch: Ctrl-C while the libraries load is one line too
import configurator
runtime.exit_on_ctrl_c("nothing was trained", at_once=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

import batches  # noqa: E402
import checkpoint  # noqa: E402
import random_streams  # noqa: E402
import tasks  # noqa: E402
import tokenizer  # noqa: E402
from runtime import die  # noqa: E402
from mask import check_options, meap_inputs, num_masked  # noqa: E402
from model import GPT, GPTConfig, num_params_of  # noqa: E402

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"  # ckpt.pt and metrics.jsonl are written here
init_from = "scratch"  # 'scratch'; 'resume' out_dir/ckpt.pt with its settings; or a checkpoint (folder) to fine-tune
overwrite = False  # let a new run replace the run already in out_dir (refused otherwise, to keep it safe)
eval_interval = 250  # iterations between evaluations and checkpoints
log_interval = 50  # iterations between progress lines
eval_iters = 10  # batches for the clean val loss
eval_examples = 500  # held-out examples per task for retrieval accuracy
# data
dataset = "synthetic"  # 'synthetic' (generated on the fly), or NAME for data/NAME/{train,val}.bin
task = "mix"  # synthetic task: 'mqar', 'needle' or 'mix' (half of every batch each)
n_pairs = 4  # mqar: key-value pairs per sequence, then queries to the end
n_needles = 4  # needle: needles per haystack, one asked about and the rest distractors
mqar_offset = 0  # mqar: up to this many filler words before the pairs (0: the pairs start at position 1)
batch_size = 32  # sequences per micro-step, per process
block_size = 64  # tokens per sequence
gradient_accumulation_steps = 1  # micro-steps per optimizer step, summed over all processes
# model
n_layer = 2  # transformer blocks
n_head = 4  # query heads; head size = n_embd / n_head
n_kv_head = 0  # key/value heads; 0 = n_head (multi-head attention), fewer = grouped-query attention
n_embd = 128  # model width
init = "nanomeap"  # weight init: 'nanomeap' (tuned for small widths) or 'official' (the MEAP code's, lit-gpt)
emb_common = 0.0  # std of a random vector added to every token embedding at init (1.0 helps text learn to copy)
# MEAP (paper §3.1): mask_ratio is the switch that separates MEAP from NTP; the rest are variants
mask_ratio = 0.15  # share of input positions replaced by [MASK]; 0 = plain next-token prediction
mask_mode = "per_sequence"  # 'per_sequence', or 'shared': one set of columns per step (official code)
mask_queries = True  # uniform over all positions, as the paper; False spares the retrieval queries
corruption = "mask"  # 'mask' ([MASK], MEAP); 'random': random real tokens there (a control)
# fine-tuning (paper §3.2): needs --init_from CHECKPOINT; trains on the synthetic multi-document QA
sft = "none"  # 'none' = pre-training; 'ntp' (NTP-SFT), 'concat' (the paper's MEAP-SFT), 'separate' (official code's)
sft_examples = 2000  # size of the fixed fine-tuning set; the run makes epochs over it
sft_min_answer = 50  # the paper's: answers shorter than this get plain NTP-SFT (set it below answer_len here)
sft_static = False  # draw each example's masked positions once (the official code), not at every step
n_docs = 6  # qa: documents per prompt, one of them (the gold one) holding the answer
answer_len = 4  # qa: answer tokens
qa_tokens = 64  # qa: tokens per example, prompt and answer; 'concat' needs block_size >= 2 * qa_tokens - 1
# optimizer: AdamW, linear warm-up, cosine decay to min_lr (the paper: 4e-4 -> 4e-5, 10% warm-up)
learning_rate = 3e-3  # peak; small models take a larger one than the paper's 4e-4
max_iters = 2000  # optimizer steps
weight_decay = 0.05  # the paper's
beta1 = 0.9  # the paper's
beta2 = 0.95  # the paper's
grad_clip = 1.0  # clip the gradient norm at this; 0 = off
warmup_iters = 200  # ~10% of max_iters, as the paper
lr_decay_iters = -1  # length of the cosine; -1 = max_iters
min_lr = 3e-4  # ~learning_rate / 10, as the paper
# system
device = "auto"  # 'auto' (cuda, then mps, then cpu), or cpu, cuda, cuda:1, mps
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float16 on older GPUs, float32 elsewhere) or a name
compile = False  # torch.compile the model: faster on recent GPUs after a warm-up, rarely on CPU
seed = 1337  # seeds the weights, the data order and the masks
# -----------------------------------------------------------------------------
config_keys = list(configurator.defaults_of(globals()))  # the settings above
try:
    overrides = configurator.apply(sys.argv[1:], globals())  # config files and flags, left to right
except configurator.ConfigError as e:
    die(e)

# -----------------------------------------------------------------------------
# the checkpoint this run starts from: resumed (all its settings) or fine-tuned (its data and model)
resume = init_from == "resume"
try:
    ckpt, start_path = checkpoint.start_from(init_from, out_dir)
    if ckpt is not None:
        globals().update(checkpoint.settings_from(ckpt, start_path, resume, overrides, config_keys))
except ValueError as e:
    die(e)
n_kv_head = n_kv_head or n_head  # resolved here, so that the checkpoint's settings name the count
config = {k: globals()[k] for k in config_keys}
finetune = sft != "none"
ckpt_path, metrics_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "metrics.jsonl")

# -----------------------------------------------------------------------------
# every check, before anything is read or written: a mistake is one line naming the fix
ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun?
world_size = int(os.environ["WORLD_SIZE"]) if ddp else 1  # processes
try:
    if finetune and init_from == "scratch":
        raise ValueError("--sft fine-tunes a trained model: give its checkpoint, --init_from out-base (or ckpt.pt)")
    configurator.check_ranges(config)  # sizes >= 1, rates and betas in range
    if gradient_accumulation_steps % world_size:
        raise ValueError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be a multiple of the "
                         f"number of processes ({world_size})")
    precision = runtime.precision(device, dtype)  # the device, dtype, autocast and loss scaler
    shape = GPTConfig(block_size=block_size, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, n_embd=n_embd,
                      vocab_size=64, init=init, emb_common=emb_common)  # the model's shape, checked
    # a floor on the memory, before the data are read (64: the least vocabulary): 10**10 tokens fail here
    runtime.check_memory(num_params_of(shape), batch_size * block_size, 64, precision.device)
    if finetune:
        batches.check_sft(config)  # first: fine-tuning needs a synthetic checkpoint, whatever data/ holds
    else:
        check_options(mask_ratio, mode=mask_mode, spares=not mask_queries, corruption=corruption)  # MEAP's
    mask_token_id, meta = batches.vocabulary(dataset, block_size, task, n_pairs, n_needles, mqar_offset)
    tokenizer_id = tokenizer.identity(meta, mask_token_id)  # saved with every checkpoint
    if ckpt is not None:  # the ids must mean what they meant when the checkpoint was trained
        checkpoint.check_tokenizer(ckpt, start_path, tokenizer_id, "the synthetic tasks have" if dataset ==
                                   "synthetic" else f"{os.path.join('data', dataset)} now has")
    model_config = dataclasses.replace(shape, vocab_size=mask_token_id + 1)  # [MASK] is the last id
    row_len = batches.SFTBatches.row_length(sft, qa_tokens) if finetune else block_size  # the longest row
    runtime.check_memory(num_params_of(model_config), batch_size * row_len, model_config.padded_vocab_size,
                         precision.device)
except ValueError as e:  # (ConfigError is one)
    die(e)

# -----------------------------------------------------------------------------
# devices and processes
device, device_type, dtype, ctx, scaler = (precision.device, precision.device_type, precision.dtype,
                                           precision.autocast, precision.scaler)
rank = 0  # this process among the world_size
if ddp:
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    rank = dist.get_rank()
    if device_type == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    gradient_accumulation_steps //= world_size  # per process
master = rank == 0  # the process that evaluates, logs and saves

# -----------------------------------------------------------------------------
# data. Every batch is a pure function of (seed, rank, iteration, micro-step) (batches.py): a
# resumed run sees exactly the data, and the masks, of the uninterrupted one, and NTP and MEAP runs
# of a seed see the same data.
if finetune:  # a fixed set of QA examples; MEAP-SFT duplicates each and masks the answer in the copy
    sft_data = batches.SFTBatches(sft, seed, sft_examples, qa_tokens, n_docs, answer_len, mask_ratio, mask_token_id,
                                  sft_min_answer, sft_static, batch_size, gradient_accumulation_steps, rank, world_size)
else:
    data = batches.Batches(dataset, block_size, batch_size, seed, task, n_pairs, n_needles, mqar_offset, mask_mode,
                           rank, world_size)
row_tokens = sft_data.row_tokens if finetune else block_size  # tokens of one example per row, for tok/s
tokens_per_iter = int(gradient_accumulation_steps * world_size * batch_size * row_tokens)

# -----------------------------------------------------------------------------
# model and optimizer
torch.manual_seed(seed)
model_args = dataclasses.asdict(model_config)  # saved with every checkpoint: what builds the model again
raw_model = GPT(model_config).to(device)
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
iter_num = 0
if ckpt is not None:  # resume: weights, optimizer, loss scaler, random state; fine-tune: the weights
    try:
        iter_num = checkpoint.restore(ckpt, start_path, raw_model, *((optimizer, scaler) if resume else ()))
    except ValueError as e:
        die(e)
saved_iter = iter_num  # the step of the last checkpoint in out_dir (0: none yet)
ckpt = None  # free the memory
model = torch.compile(raw_model) if compile else raw_model
if ddp:
    model = DDP(model, device_ids=[torch.device(device).index] if device_type == "cuda" else None)


def get_lr(it):
    decay_iters = max_iters if lr_decay_iters < 0 else lr_decay_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


@torch.no_grad()
def evaluate():
    """Clean-input val loss, and for synthetic data the retrieval accuracy (tasks.evaluate)."""
    raw_model.eval()
    held_out = [random_streams.VAL_SEED, random_streams.EVAL]  # the same examples at every evaluation
    with ctx:
        losses = []
        for k in range(eval_iters):
            x, y = runtime.to_device(device, *(sft_data.val(k) if finetune else data.clean("val", k)[:2]))
            losses.append(raw_model(x, y)[1].item())
        out = {"val_loss": float(np.mean(losses))}
        if finetune:
            out.update(tasks.evaluate_qa(raw_model, qa_tokens - 1, n_docs, answer_len, eval_examples, seed=held_out,
                                         device=device))
        elif dataset == "synthetic":
            out.update(tasks.evaluate(raw_model, task, block_size, n_pairs, n_needles, eval_examples, seed=held_out,
                                      device=device))
    raw_model.train()
    return out


def resume_hint():
    if not saved_iter:
        return f"no checkpoint was saved (the first comes at iter {eval_interval})"
    return (f"{ckpt_path} (iter {saved_iter}) is kept: "
            f"continue with python train.py --init_from resume --out_dir {shlex.quote(out_dir)}")


def diverged(what):
    die(f"{what} at iter {iter_num}: the run diverged; lower --learning_rate (it is {learning_rate:g}); "
        f"{resume_hint()}")


def save_checkpoint():
    global saved_iter
    state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "model_args": model_args, "iter_num": iter_num, "config": config, "meta": meta,
             "mask_token_id": mask_token_id, "tokenizer": tokenizer_id, "rng": {"torch": torch.get_rng_state()}}
    try:
        checkpoint.save_checkpoint(state, ckpt_path)  # atomic, and never non-finite weights
    except ValueError:
        diverged("the weights are not finite")
    except OSError as e:
        die(f"{e}; {resume_hint()}")
    saved_iter = iter_num


def log_metrics(row):
    try:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        die(f"cannot write {metrics_path} ({e.strerror}); {resume_hint()}")


def describe_run():
    """The start-up line: the objective, the model, the data, the throughput's terms."""
    k = num_masked(block_size, mask_ratio)
    what = (f"MEAP, mask_ratio {mask_ratio} ({k} of {block_size} inputs, {mask_mode}"
            f"{', queries spared' if not mask_queries else ''}{', random tokens' if corruption == 'random' else ''})")
    if k == 0:
        what = ("NTP (mask_ratio 0)" if mask_ratio == 0 else
                f"NTP: mask_ratio {mask_ratio} masks floor({block_size} x {mask_ratio}) = 0 inputs")
    data_name = f"synthetic '{task}'" if dataset == "synthetic" else f"data/{dataset}"
    if finetune:
        what = f"SFT '{sft}'" + (f", mask_ratio {mask_ratio}" if sft != "ntp" else "")
        if sft == "separate" and num_masked(answer_len, mask_ratio) == 1:
            what += " (1 masked answer token: that copy's loss equals the clean example's; see mask.py)"
        data_name = (f"{sft_examples} qa examples ({n_docs} documents, {answer_len}-token answers, "
                     f"{qa_tokens} tokens), from {init_from}")
    return (f"{what} | {raw_model.num_params() / 1e6:.2f}M parameters | {data_name} | "
            f"{tokens_per_iter:,} tokens/iter | {device} {dtype} | {world_size} process(es)")


# -----------------------------------------------------------------------------
# training loop
if master:  # one run per out_dir: locked, and a finished run never replaced unasked (checkpoint.open_run)
    runtime.exit_on_ctrl_c("nothing was trained")  # from here, by unwinding: the lock is released
    try:
        for note in checkpoint.open_run(out_dir, resume, overwrite, iter_num):
            print(note)
    except (ValueError, OSError) as e:
        die(e)
    print(describe_run())
    if iter_num:
        print(f"resuming from {ckpt_path} at iter {iter_num}")


def get_batch(it, micro):
    """Inputs and targets of one micro-step of training, on the device."""
    if finetune:  # MEAP-SFT (§3.2): duplicated examples, answers masked in the copy
        x, y = sft_data.batch(it, micro)
    else:
        x, y, query = data.clean("train", it, micro)
        # MEAP (§3.1): floor(T * mask_ratio) inputs per row become [MASK]; the targets y stay clean
        x, _ = meap_inputs(x, mask_ratio, mask_token_id, mode=mask_mode, exclude=None if mask_queries else query,
                           generator=data.mask_generator(it, micro), corruption=corruption, vocab_size=mask_token_id)
    return runtime.to_device(device, x, y)


runtime.ctrl_c_raises()  # the loop below says which checkpoint is kept and how to continue
try:  # Ctrl-C: stop at once, keep the last checkpoint, say how to continue
    t_start = t_last = time.time()
    it_last, dt_avg, n_lines, final = iter_num, None, 0, {}
    x, y = get_batch(iter_num, 0)
    while True:
        lr = get_lr(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if master and (iter_num % eval_interval == 0 or iter_num >= max_iters):
            final = evaluate()
            accs = " ".join(f"{k[4:]} {v:.3f}" for k, v in final.items() if k in ("acc_mqar", "acc_needle", "acc_qa"))
            print(f"eval {iter_num}: clean val loss {final['val_loss']:.4f}" + (f" | acc {accs}" if accs else ""))
            log_metrics({"iter": iter_num, **final})
            if not math.isfinite(final["val_loss"]):
                diverged(f"the clean val loss is {final['val_loss']}")
            if iter_num > 0:
                save_checkpoint()
            t_last, it_last = time.time(), iter_num  # leave the evaluation out of the step timing
        if iter_num >= max_iters:  # also when resuming a run that is already past max_iters
            break

        for micro in range(gradient_accumulation_steps):
            if ddp:  # synchronise gradients only on the last micro-step
                model.require_backward_grad_sync = micro == gradient_accumulation_steps - 1
            with ctx:
                _, loss = model(x, y)
                loss = loss / gradient_accumulation_steps
            scaler.scale(loss).backward()
            # the next micro-step's batch: on a GPU the lines above only queue work, so it is drawn,
            # masked and copied while the GPU computes this one; batches depend on (iter, micro) alone
            nxt = micro + 1
            x, y = get_batch(iter_num + nxt // gradient_accumulation_steps, nxt % gradient_accumulation_steps)
        norm = torch.zeros(())
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        # a non-finite loss or gradient norm: the run has diverged; stop before the step (fp16's loss
        # scaler skips steps with infinite gradients by design, so with it only the loss counts)
        if not math.isfinite((loss if scaler.is_enabled() else loss + norm.to(loss.device)).item()):
            diverged(f"the loss is {loss.item() * gradient_accumulation_steps:.4g}" +
                     (f" (gradient norm {norm.item():.4g})" if grad_clip > 0 else ""))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

        if master and iter_num % log_interval == 0:
            train_loss = loss.item() * gradient_accumulation_steps  # .item() waits for the GPU
            now = time.time()
            dt = (now - t_last) / (iter_num + 1 - it_last)  # seconds per iteration since the last line
            t_last, it_last = now, iter_num + 1
            n_lines += 1  # the first window holds the start-up (CUDA init, compilation): restart the average
            dt_avg = dt if n_lines <= 2 else 0.7 * dt_avg + 0.3 * dt
            mfu = None if dtype == "float32" else runtime.mfu(raw_model.flops_per_token(row_len), tokens_per_iter / dt,
                                                              device)
            eta = (max_iters - iter_num - 1) * dt_avg
            print(f"iter {iter_num}/{max_iters} | loss {train_loss:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms/iter | "
                  f"{tokens_per_iter / dt / 1000:.1f}k tok/s" + (f" | mfu {mfu * 100:.1f}%" if mfu else "") +
                  f" | eta {int(eta // 60)}m{int(eta % 60):02d}s")
            log_metrics({"iter": iter_num, "loss": train_loss, "lr": lr, "ms_per_iter": dt * 1000})
        iter_num += 1
except KeyboardInterrupt:
    die(f"interrupted at iter {iter_num}; {resume_hint()}", 130)
runtime.work_done()  # trained and saved: Ctrl-C now would only cut the last lines short

if ddp:  # every process should end with the same weights; check, then say so
    flat = torch.cat([p.detach().float().flatten() for p in raw_model.parameters()])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    if master:
        print(f"ddp: largest weight difference between the {world_size} processes: {(hi - lo).max().item():.3g}")
    # Tear down in order, while Python is still fully alive: the DDP wrapper holds a reference to the
    # process group, so drop it first; the barrier keeps one process from closing its connections while
    # another still uses them. Left to interpreter exit, gloo can abort ("terminate called ...").
    del model
    dist.barrier()
    dist.destroy_process_group()
if master:
    line = f"final: clean val loss {final['val_loss']:.4f}"
    if "acc" in final:
        parts = ", ".join(f"{k[4:]} {final[k]:.3f}" for k in ("acc_mqar", "acc_needle", "acc_qa") if k in final)
        line += f" | retrieval accuracy {final['acc']:.3f} ({parts})"
    wall = time.time() - t_start
    print(line + f" | {int(wall // 60)}m{int(wall % 60):02d}s | checkpoint {ckpt_path}")
