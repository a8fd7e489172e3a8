"""export.py: a checkpoint as a transformers LlamaForCausalLM folder and back. Skipped where
transformers is not installed (it is an optional extra; .ci/run installs it)."""

import dataclasses
import json
import os

import pytest
import torch

pytest.importorskip("transformers", reason="export.py's optional extra: pip install transformers safetensors")
pytest.importorskip("safetensors", reason="export.py's optional extra: pip install transformers safetensors")

import checkpoint  # noqa: E402
import export  # noqa: E402
import tasks  # noqa: E402
import tokenizer  # noqa: E402
from helpers import checksums, run_inprocess  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

SYNTHETIC = {"kind": "synthetic"}


def save_run(folder, seed=0, meta=SYNTHETIC, mask_token_id=tasks.MASK_ID, **shape):
    """A checkpoint of a randomly initialised model, as train.py saves one."""
    torch.manual_seed(seed)
    cfg = GPTConfig(**{**dict(block_size=32, vocab_size=mask_token_id + 1, n_layer=2, n_head=4, n_kv_head=2,
                                n_embd=32), **shape})
    model = GPT(cfg)
    with torch.no_grad():  # norms away from 1, so that a swapped norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    os.makedirs(folder, exist_ok=True)
    checkpoint.save_checkpoint({"model": model.state_dict(), "model_args": dataclasses.asdict(cfg),
                                "config": {"dataset": "synthetic", "seed": seed}, "meta": meta,
                                "mask_token_id": mask_token_id, "iter_num": 7}, os.path.join(folder, "ckpt.pt"))
    return model.eval()


@pytest.mark.parametrize("shape", [dict(n_head=4, n_kv_head=2), dict(n_head=4, n_kv_head=4),
                                   dict(n_head=2, n_kv_head=1, n_embd=64, rope_theta=500.0)],
                         ids=["gqa", "mha", "mqa-theta"])
def test_transformers_gives_our_logits_and_our_greedy_continuation(tmp_path, shape):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    ours = save_run(tmp_path / "run", **shape)
    assert ours.config.padded_vocab_size == 192 and ours.config.vocab_size == tasks.VOCAB_SIZE == 163  # padded
    export.export(str(tmp_path / "run"), str(tmp_path / "hf"))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert isinstance(hf, LlamaForCausalLM)
    x = torch.randint(0, 192, (3, 32), generator=torch.Generator().manual_seed(1))  # the full block
    with torch.no_grad():
        ours_logits, hf_logits = ours(x)[0], hf(x).logits
    assert (ours_logits - hf_logits).abs().max().item() < 1e-5
    # greedy, KV cache on both sides; the exported generation_config.json suppresses [MASK] and the
    # padding, as sample.py's vocab_limit does
    prompt = x[:2, :8] % tasks.MASK_ID
    want = ours.generate(prompt, 20, temperature=0, vocab_limit=tasks.MASK_ID)
    got = hf.generate(prompt, max_new_tokens=20, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    assert torch.equal(want, got)
    assert not torch.equal(want, ours.generate(prompt, 20, temperature=0))  # the suppression matters here


def test_export_import_export_is_bit_exact(tmp_path):
    save_run(tmp_path / "run")
    export.export(str(tmp_path / "run"), str(tmp_path / "hf"))
    export.import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    export.export(str(tmp_path / "back"), str(tmp_path / "hf2"))
    first, second = ({os.path.basename(f): h for f, h in checksums(tmp_path / d).items()} for d in ("hf", "hf2"))
    assert first == second and "model.safetensors" in first  # weights, config, tokenizer: the same bytes
    a, b = (checkpoint.load_checkpoint(str(tmp_path / d)) for d in ("run", "back"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for k in ("model_args", "config", "meta", "mask_token_id", "iter_num"):
        assert a[k] == b[k], k
    assert sorted(os.listdir(tmp_path)) == ["back", "hf", "hf2", "run"]  # no .tmp folders left


def test_the_synthetic_tokenizer_reads_the_task_vocabulary(tmp_path):
    from transformers import AutoTokenizer
    save_run(tmp_path / "run")
    export.export(str(tmp_path / "run"), str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "| K12 40 K3 7 ka lo ? K12 [MASK]"
    assert tok(text)["input_ids"] == tasks.encode(text) and tok.mask_token_id == tasks.MASK_ID
    assert tok.decode(tasks.encode(text)) == text


@pytest.mark.parametrize("kind", ["bpe", "byte", pytest.param("gpt2", marks=pytest.mark.slow)])
def test_a_byte_level_tokenizer_round_trips_and_knows_mask(tmp_path, kind):
    from transformers import AutoTokenizer
    corpus = open(tokenizer.__file__).read()
    if kind == "gpt2":
        try:
            ours = tokenizer.get_tokenizer("gpt2")
        except ValueError as e:  # offline without TIKTOKEN_CACHE_DIR (.ci/run sets it)
            pytest.skip(str(e))
        meta = {"kind": "meta", "tokenizer": "gpt2", "vocab_size": 50257}
    elif kind == "bpe":
        ranks = tokenizer.train_bpe(corpus, 400)
        ours, meta = tokenizer.bpe_tokenizer(ranks), {"kind": "meta", "tokenizer": "bpe", "vocab_size": 400,
                                                      "bpe_ranks": ranks}
    else:
        ours, meta = tokenizer.get_tokenizer("byte"), {"kind": "meta", "tokenizer": "byte", "vocab_size": 256}
    save_run(tmp_path / "run", meta=meta, mask_token_id=ours.mask_id)
    export.export(str(tmp_path / "run"), str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def f(x):\n    return x  # ünïcode, 42 spaces   and tabs\t!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == ours.encode(text) and tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("[MASK]") == tok.mask_token_id == ours.mask_id
    assert tok("a [MASK] b", add_special_tokens=False)["input_ids"].count(ours.mask_id) == 1
    back = checkpoint.load_checkpoint(export.import_hf(str(tmp_path / "hf"), str(tmp_path / "back")))
    assert back["meta"] == meta  # a trained BPE's ranks come back with the checkpoint


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    save_run(tmp_path / "run")
    export.export(str(tmp_path / "run"), str(tmp_path / "hf"))
    (tmp_path / "empty").mkdir()
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    for name, change in (("gpt2", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}),
                         ("bias", {"attention_bias": True}), ("foreign", {"nanomeap": None})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**cfg, **change}))
    before = checksums(tmp_path)
    for args, message in [
        (["--out_dir", str(tmp_path / "empty"), "--to", str(tmp_path / "x")], f"no checkpoint at {tmp_path}/empty/ckpt.pt"),
        (["--out_dir", str(tmp_path / "run"), "--to", str(tmp_path / "hf")], f"--to {tmp_path}/hf already exists"),
        (["--from", str(tmp_path / "empty"), "--to", str(tmp_path / "x")], "no config.json there"),
        (["--from", str(tmp_path / "gpt2"), "--to", str(tmp_path / "x")], "holds a 'gpt2' model; export.py brings back Llama"),
        (["--from", str(tmp_path / "bias"), "--to", str(tmp_path / "x")], "attention_bias do not fit model.py"),
        (["--from", str(tmp_path / "foreign"), "--to", str(tmp_path / "x")], "was not written by export.py"),
        (["--from", str(tmp_path / "hf"), "--out_dir", str(tmp_path / "run"), "--to", str(tmp_path / "x")], "not both"),
    ]:
        code, out, err = run_inprocess("export.py", *args)
        assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and message in err, (args, err)
    assert checksums(tmp_path) == before


def test_an_imported_model_fine_tunes_with_train_py(tiny_ckpt, tmp_path):
    export.export(str(tiny_ckpt), str(tmp_path / "hf"))
    code, _, err = run_inprocess("train.py", "--init_from", str(tmp_path / "hf"), "--sft", "ntp", "--mask_ratio", "0")
    assert code == 1 and f"python export.py --from {tmp_path}/hf --to NEW_FOLDER" in err
    export.import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    code, out, err = run_inprocess(
        "train.py", "--init_from", str(tmp_path / "back"), "--sft", "concat", "--mask_ratio", "0.5", "--n_docs", "2",
        "--answer_len", "2", "--qa_tokens", "16", "--sft_examples", "8", "--sft_min_answer", "1", "--max_iters", "2",
        "--batch_size", "2", "--eval_interval", "2", "--eval_iters", "1", "--eval_examples", "4", "--device", "cpu",
        "--out_dir", str(tmp_path / "ft"))
    assert code == 0, err
    assert "final:" in out
