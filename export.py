"""
Take a trained model to Hugging Face transformers, and bring it back.

    pip install transformers safetensors           # the one extra install (not in requirements.txt)
    python export.py --out_dir out --to out/hf     # a folder LlamaForCausalLM.from_pretrained loads
    python export.py --from out/hf --to out-back   # back: out-back/ckpt.pt, for train.py --init_from

nanoMEAP's block is LLaMA's (RMSNorm, SwiGLU, RoPE in the rotate-half layout, grouped-query
attention, no biases, an untied head), so the weights map one to one onto LlamaForCausalLM; the one
reshaping is our fused key-value projection, split into Llama's k_proj and v_proj (keys first).
The export writes config.json, model.safetensors (fp32) and generation_config.json (greedy, and
[MASK] and the vocabulary padding suppressed, as sample.py does), and the tokenizer where one exists:
- GPT-2 BPE, a BPE trained on the dataset, or bytes: a fast tokenizer (tokenizer.json) converted
  from the tiktoken ranks, with [MASK] as an added special token at the checkpoint's id;
- the synthetic tasks: a word-level tokenizer over the task vocabulary (tasks.ITOS, split on spaces);
- nanoGPT's characters: vocab.json, the id of each character (tokenize with it yourself).
config.json also keeps the checkpoint's train.py settings, meta and [MASK] id (under "nanomeap"),
so that the import restores them: the round trip is bit-exact. Only folders this script exported
can come back. The folder is written under a temporary name of this process's own and renamed when
complete: an interrupted export leaves nothing, and nothing that was there before is touched.
"""

import argparse
import base64
import dataclasses
import io
import json
import os
import shlex
import sys
import tempfile

import runtime  # before torch: Ctrl-C while the libraries load is one line too
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

import torch  # noqa: E402

import atomic_files  # noqa: E402
import checkpoint  # noqa: E402
import tasks  # noqa: E402
import tokenizer  # noqa: E402
from runtime import die  # noqa: E402
from model import GPTConfig  # noqa: E402

INSTALL = "pip install transformers safetensors"
SHAPE = ("block_size", "n_layer", "n_head", "n_kv_head", "n_embd")  # train.py settings config.json also holds


def require_transformers():
    """transformers and safetensors, or a one-line exit naming the install."""
    try:
        import safetensors.torch  # noqa: F401
        import tokenizers  # noqa: F401
        import transformers
        from transformers import (AutoConfig, GenerationConfig, LlamaForCausalLM,  # noqa: F401
                                  PreTrainedTokenizerFast)
    except ImportError:
        die(f"export.py needs Hugging Face transformers and safetensors: {INSTALL}")
    transformers.utils.logging.disable_progress_bar()  # one line of output per export, not a bar per file
    return transformers


# -----------------------------------------------------------------------------
# weights: our state_dict <-> LlamaForCausalLM's

def to_llama(sd, cfg):
    """Our state_dict as LlamaForCausalLM's: the same tensors, renamed, kv_proj split in two."""
    kv = cfg.n_kv_head * (cfg.n_embd // cfg.n_head)  # rows of k_proj (and of v_proj)
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        k, v = sd[ours + "attn.kv_proj.weight"].split(kv)  # (2 kv, C): the keys' rows, then the values'
        out.update({hf + "input_layernorm.weight": sd[ours + "attn_norm.weight"],
                    hf + "self_attn.q_proj.weight": sd[ours + "attn.q_proj.weight"],
                    hf + "self_attn.k_proj.weight": k, hf + "self_attn.v_proj.weight": v,
                    hf + "self_attn.o_proj.weight": sd[ours + "attn.o_proj.weight"],
                    hf + "post_attention_layernorm.weight": sd[ours + "mlp_norm.weight"]})
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[hf + f"mlp.{name}.weight"] = sd[ours + f"mlp.{name}.weight"]
    return {k: t.detach().clone().contiguous() for k, t in out.items()}  # safetensors wants no shared storage


def from_llama(sd, cfg):
    """LlamaForCausalLM's state_dict as ours (the inverse of to_llama)."""
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        out.update({ours + "attn_norm.weight": sd[hf + "input_layernorm.weight"],
                    ours + "attn.q_proj.weight": sd[hf + "self_attn.q_proj.weight"],
                    ours + "attn.kv_proj.weight": torch.cat([sd[hf + "self_attn.k_proj.weight"],
                                                             sd[hf + "self_attn.v_proj.weight"]]),
                    ours + "attn.o_proj.weight": sd[hf + "self_attn.o_proj.weight"],
                    ours + "mlp_norm.weight": sd[hf + "post_attention_layernorm.weight"]})
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[ours + f"mlp.{name}.weight"] = sd[hf + f"mlp.{name}.weight"]
    return {k: t.detach().clone().contiguous() for k, t in out.items()}


def llama_config(cfg, mlp_width, mask_token_id, extra):
    """The LlamaConfig of our GPTConfig; extra (JSON-able) is kept in it under "nanomeap"."""
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=cfg.padded_vocab_size, hidden_size=cfg.n_embd, intermediate_size=mlp_width,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.n_embd // cfg.n_head, hidden_act="silu", max_position_embeddings=cfg.block_size,
        rms_norm_eps=1e-6, rope_theta=cfg.rope_theta, tie_word_embeddings=False, attention_bias=False,
        mlp_bias=False, bos_token_id=None, eos_token_id=None, pad_token_id=None, torch_dtype="float32",
        architectures=["LlamaForCausalLM"], nanomeap=dict(extra, mask_token_id=mask_token_id))


# -----------------------------------------------------------------------------
# the tokenizer beside the weights

def ranks_of(meta):
    """(ranks {token bytes: id}, the split pattern, special tokens in id order after the ranks) of a
    byte-level checkpoint's tokenizer, or None for the others."""
    if meta.get("tokenizer") == "bpe":
        return meta["bpe_ranks"], tokenizer.GPT2_PATTERN, []
    if meta.get("tokenizer") == "byte":
        return {bytes([i]): i for i in range(256)}, tokenizer.GPT2_PATTERN, []
    if meta.get("kind") == "gpt2" or meta.get("tokenizer") == "gpt2":
        import tiktoken
        try:
            enc = tiktoken.get_encoding("r50k_base")
        except Exception:  # offline, with no cached copy: tokenizer.py's one-line reason
            try:
                tokenizer.get_tokenizer("gpt2")
            except ValueError as e:
                die(e)
            raise
        return enc._mergeable_ranks, enc._pat_str, ["<|endoftext|>"]  # 50256
    return None


def hf_tokenizer(meta, mask_token_id):
    """A transformers fast tokenizer for a checkpoint's meta, [MASK] at mask_token_id; None where
    there is no such tokenizer (nanoGPT's characters: see char_vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    if meta.get("kind") == "synthetic":
        vocab = {word: i for i, word in enumerate(tasks.ITOS)}  # [MASK] included, at tasks.MASK_ID
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[MASK]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok, mask_token="[MASK]")
    found = ranks_of(meta)
    if found is None:
        return None
    ranks, pattern, specials = found
    with tempfile.TemporaryDirectory() as d:  # the converter reads tiktoken's file format
        path = os.path.join(d, "ranks.tiktoken")
        with open(path, "w") as f:
            f.writelines(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))
        tok = TikTokenConverter(vocab_file=path, pattern=pattern,
                                extra_special_tokens=specials + [tokenizer.MASK_TEXT]).converted()
    if tok.token_to_id(tokenizer.MASK_TEXT) != mask_token_id:
        die(f"the converted tokenizer puts [MASK] at {tok.token_to_id(tokenizer.MASK_TEXT)}, not at the "
            f"checkpoint's {mask_token_id}")
    eos = {"eos_token": specials[0]} if specials else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, mask_token=tokenizer.MASK_TEXT, **eos)


def meta_to_json(meta):
    """meta (train.py's) as JSON: a trained BPE's ranks as base64 bytes."""
    out = dict(meta)
    if "bpe_ranks" in out:
        out["bpe_ranks"] = {base64.b64encode(t).decode(): r for t, r in out["bpe_ranks"].items()}
    return out


def meta_from_json(meta):
    out = dict(meta)
    if "bpe_ranks" in out:
        out["bpe_ranks"] = {base64.b64decode(t): r for t, r in out["bpe_ranks"].items()}
    if "itos" in out:  # JSON keys are strings
        out["itos"] = {int(i): c for i, c in out["itos"].items()}
    return out


# -----------------------------------------------------------------------------
# the two directions

def refuse_existing(path):
    """One line and an exit if path exists (an export never overwrites) or is a name of ours."""
    if os.path.lexists(path):
        die(f"--to {path} already exists; give a new folder (nothing is overwritten)")
    try:
        atomic_files.reserved(path)
    except ValueError as e:
        die(f"--to {e}")


def write_folder(dst, write):
    """write(tmp) fills a new temporary folder of this process's own, renamed to dst when complete
    (atomic_files.write_atomically); a failure is one line, and leaves nothing behind."""
    try:
        atomic_files.write_atomically(dst, write, folder=True)
    except FileExistsError:
        die(f"--to {dst} appeared while this export ran (another export?); it is left as it is")
    except Exception as e:  # a full disk: OSError, safetensors' SafetensorError, torch's RuntimeError, ...
        die(f"--to: {atomic_files.write_failed(dst, e)}")


def export(src, dst):
    """Write the checkpoint at src (a ckpt.pt or its folder) as a transformers folder at dst."""
    require_transformers()
    from transformers import GenerationConfig, LlamaForCausalLM
    dst = os.path.normpath(dst)  # "out/hf/" and "out/hf" are one folder
    refuse_existing(dst)
    try:
        ckpt = checkpoint.load_checkpoint(src)
        checkpoint.check_whole(ckpt, src)  # every weight its model_args name, finite; meta; [MASK] inside
    except ValueError as e:
        die(e)
    cfg = checkpoint.model_config(ckpt)  # (the real vocabulary, for a checkpoint that saved it padded too)
    mask_id, meta = ckpt["mask_token_id"], ckpt["meta"]
    extra = {"config": ckpt["config"], "meta": meta_to_json(meta), "iter_num": ckpt.get("iter_num", 0),
             # so that the import can tell an edited config.json or tokenizer:
             "model_args": dataclasses.asdict(cfg), "tokenizer": tokenizer.of_checkpoint(ckpt)}
    mlp_width = ckpt["model"]["blocks.0.mlp.gate_proj.weight"].shape[0]  # model.MLP's ~8/3 n_embd
    tok = hf_tokenizer(meta, mask_id)  # before writing: it may need tiktoken's files

    def write(tmp):
        with torch.device("meta"):  # the weights come next: no random init to throw away
            hf = LlamaForCausalLM(llama_config(cfg, mlp_width, mask_id, extra))
        hf.load_state_dict(to_llama(ckpt["model"], cfg), assign=True)
        hf.save_pretrained(tmp, safe_serialization=True)
        # greedy, and never [MASK] or the vocabulary padding: what sample.py --temperature 0 draws
        GenerationConfig(do_sample=False, suppress_tokens=list(range(mask_id, cfg.padded_vocab_size))).save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        elif "stoi" in meta:  # nanoGPT's characters: the mapping itself
            with open(os.path.join(tmp, "vocab.json"), "w") as f:
                json.dump(meta["stoi"], f, ensure_ascii=False)

    write_folder(dst, write)
    return dst


def llama_names(n_layer):
    """The names of LlamaForCausalLM's weights for n_layer layers (to_llama's keys)."""
    layer = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    return {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        f"model.layers.{i}.{name}.weight" for i in range(n_layer) for name in layer}


def import_hf(src, dst):
    """Write the transformers folder at src (from export()) as a train.py checkpoint in dst."""
    require_transformers()
    from safetensors.torch import load_file
    from transformers import AutoConfig
    dst = os.path.normpath(dst)
    refuse_existing(dst)
    if not os.path.isfile(os.path.join(src, "config.json")):
        die(f"--from {src}: no config.json there (give a folder written by export.py)")
    try:
        c = AutoConfig.from_pretrained(src)
    except Exception as e:  # transformers' own errors for a malformed config.json
        die(f"--from {src}: cannot read config.json ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
    if c.model_type != "llama":
        die(f"--from {src} holds a {c.model_type!r} model; export.py brings back Llama models only")
    extra = getattr(c, "nanomeap", None)
    if not extra:
        die(f"--from {src} was not written by export.py (config.json has no nanomeap settings); "
            f"only nanoMEAP's own exports can come back")
    kinds = {"config": dict, "meta": dict, "mask_token_id": int, "iter_num": int, "model_args": dict, "tokenizer": dict}
    optional = ("iter_num", "model_args", "tokenizer")  # (older exports lack them)
    bad = [k for k, kind in kinds.items() if not isinstance(extra, dict) or
           (not isinstance(extra.get(k), kind) and not (k in optional and k not in extra))]
    if bad:
        die(f"--from {src}: config.json's nanomeap block lacks a valid {', '.join(bad)}; export the checkpoint again")
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0))
    unsupported = [name for name, bad in (
        ("attention_bias", c.attention_bias), ("mlp_bias", c.mlp_bias), ("tied embeddings", c.tie_word_embeddings),
        ("hidden_act " + str(c.hidden_act), c.hidden_act != "silu"), ("rms_norm_eps " + str(c.rms_norm_eps), c.rms_norm_eps != 1e-6),
        ("head_dim " + str(c.head_dim), c.head_dim * c.num_attention_heads != c.hidden_size)) if bad]
    if unsupported:
        die(f"--from {src}: {', '.join(unsupported)} do not fit model.py")
    try:
        cfg = GPTConfig(block_size=c.max_position_embeddings, vocab_size=c.vocab_size, n_layer=c.num_hidden_layers,
                        n_head=c.num_attention_heads, n_kv_head=c.num_key_value_heads, n_embd=c.hidden_size,
                        rope_theta=float(theta), init=extra["config"].get("init", "nanomeap"),
                        emb_common=extra["config"].get("emb_common", 0.0))
    except (TypeError, ValueError) as e:
        die(f"--from {src}: config.json describes no model that model.py builds ({e})")
    weights = os.path.join(src, "model.safetensors")
    if not os.path.isfile(weights):
        die(f"--from {src}: no model.safetensors there")
    try:
        hf_sd = load_file(weights)
    except Exception as e:  # safetensors' SafetensorError for a truncated or foreign file
        die(f"--from {src}: cannot read model.safetensors ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
            f"it may be truncated")
    try:  # config.json holds the padded vocabulary; the checkpoint's is the real one, [MASK] its last id
        cfg = checkpoint.model_config({"model_args": dataclasses.asdict(cfg), "mask_token_id": extra["mask_token_id"]})
    except ValueError as e:
        die(f"--from {src}: config.json describes no model that model.py builds ({e})")
    model_args = dataclasses.asdict(cfg)
    saved = dict(extra.get("model_args", {}))
    if saved.get("vocab_size") == cfg.padded_vocab_size:  # (exported before GPTConfig kept the two apart)
        saved["vocab_size"] = cfg.vocab_size
    exported = [*saved.items(), *((k, v) for k, v in extra["config"].items() if k in SHAPE)]
    edited = sorted({f"{k} {model_args[k]} (exported: {v})" for k, v in exported
                     if k in model_args and v != model_args[k]})
    if edited:
        die(f"--from {src}: config.json differs from the checkpoint it was exported from ({', '.join(edited)}); "
            f"export that checkpoint again")
    want = llama_names(cfg.n_layer)
    missing, extra_keys = sorted(want - hf_sd.keys()), sorted(hf_sd.keys() - want)
    if missing or extra_keys:
        die(f"--from {src}: model.safetensors does not fit config.json's {cfg.n_layer} layers "
            f"({len(missing)} weights missing, {len(extra_keys)} more than it names: "
            f"{', '.join((missing + extra_keys)[:2])})")
    ckpt = {"model": from_llama(hf_sd, cfg), "model_args": model_args, "config": extra["config"],
            "meta": meta_from_json(extra["meta"]), "mask_token_id": extra["mask_token_id"],
            "iter_num": extra.get("iter_num", 0)}
    try:
        checkpoint.check_whole(ckpt, f"--from {src}")  # shapes, finite weights, [MASK] inside the vocabulary
        if "tokenizer" in extra and tokenizer.of_checkpoint(ckpt) != extra["tokenizer"]:
            raise ValueError(f"--from {src}: its tokenizer (nanomeap.meta) differs from the one exported; export the "
                             f"checkpoint again")
        buffer = io.BytesIO()  # what train.py will read back (weights_only): saved and loaded here first
        torch.save(ckpt, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except ValueError as e:
        die(e)
    except Exception as e:  # a value torch.load(weights_only=True) refuses
        die(f"--from {src}: its settings cannot be kept in a checkpoint train.py reads ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:80]})")

    def write(tmp):
        torch.save(ckpt, os.path.join(tmp, "ckpt.pt"))  # (check_whole: finite; the folder is renamed whole)

    write_folder(dst, write)
    return dst


def main(argv=None):
    ap = argparse.ArgumentParser(description="A train.py checkpoint to a transformers LlamaForCausalLM folder, "
                                             "and back (see the docstring).")
    ap.add_argument("--out_dir", default=None, help="export: the run folder (or its ckpt.pt) to export")
    ap.add_argument("--from", dest="source", default=None, help="import: a folder export.py wrote")
    ap.add_argument("--to", required=True, help="the folder to write (must not exist)")
    ap.error = lambda msg: die(f"{msg} (python export.py --help lists the options)")
    args = ap.parse_args(argv)
    if args.out_dir is not None and args.source is not None:
        die("give --out_dir (export a checkpoint) or --from (import an export), not both")
    if args.out_dir is None and args.source is None:
        die("give --out_dir RUN to export a checkpoint, or --from FOLDER to bring an export back")
    for flag, value in (("--out_dir", args.out_dir), ("--from", args.source), ("--to", args.to)):
        if value is not None and not value.strip():
            die(f"{flag} is empty; give a folder")
    runtime.exit_on_ctrl_c(f"nothing was written to --to {args.to}", at_once=True)
    require_transformers()  # loaded at once (see exit_on_ctrl_c); then Ctrl-C unwinds, removing a half-written --to
    runtime.exit_on_ctrl_c(f"nothing was written to --to {args.to}")
    if args.out_dir is not None:
        dst = export(args.out_dir, args.to)
        runtime.work_done()
        print(f"wrote {dst}: LlamaForCausalLM.from_pretrained({args.to!r}) loads it")
    else:
        dst = import_hf(args.source, args.to)
        runtime.work_done()
        print(f"wrote {dst}/ckpt.pt: train.py --init_from {shlex.quote(args.to)} fine-tunes it")


if __name__ == "__main__":
    main(sys.argv[1:])
