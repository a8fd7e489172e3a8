"""Nothing lost, ever: each numbered section is a class of ways data was lost or a traceback shown
(issue 29), tried as a hostile user would. Every case ends in one `error:` line naming the fix, or
succeeds, and leaves every file that was there as it was. Ctrl-C is simulated by sending SIGINT to
this process from inside the work (the scripts run in-process, helpers.run_inprocess)."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import atomic_files
import checkpoint
import tasks
import tokenizer
from helpers import ROOT, TINY, checksums, run_inprocess, run_script
from model import GPT, GPTConfig

try:
    import safetensors  # noqa: F401
    import transformers  # noqa: F401
    HF = True
except ImportError:
    HF = False
needs_hf = pytest.mark.skipif(not HF, reason="export.py's optional extra: pip install transformers safetensors")


def one_line(result, message, code=1):
    """result: run_inprocess's (code, stdout, stderr); one error line holding message, no traceback."""
    got, _, err = result
    lines = err.strip().splitlines()
    assert got == code and len(lines) == 1 and "Traceback" not in err, (got, err)
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def temps(folder):
    return [f for f in os.listdir(folder) if atomic_files.is_temp(f)]


def save_ckpt(folder, n_layer=2, meta=None, mask_token_id=tasks.MASK_ID, change=None):
    """A checkpoint of a fresh tiny model, as train.py saves one; change(ckpt) edits it first."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=mask_token_id + 1, n_layer=n_layer, n_head=2, n_kv_head=2, n_embd=32)
    ckpt = {"model": GPT(cfg).state_dict(), "model_args": dict(cfg.__dict__), "config": {"dataset": "synthetic"},
            "meta": meta or {"kind": "synthetic"}, "mask_token_id": mask_token_id, "iter_num": 3}
    if change:
        change(ckpt)
    os.makedirs(folder, exist_ok=True)
    torch.save(ckpt, os.path.join(folder, "ckpt.pt"))  # (not save_checkpoint: it refuses the NaN case)
    return folder


def interrupt_during(monkeypatch, owner, name):
    """Make owner.name send this process a SIGINT (Ctrl-C) before doing its work."""
    original = getattr(owner, name)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, interrupted)


# --- 1. temporary names are ours alone ---

def test_1_write_atomically_creates_and_removes_only_its_own_temporary(tmp_path):
    (tmp_path / "x").write_text("old")
    (tmp_path / "x.tmp").write_text("the user's")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / f".x.{live.pid}.abcd1234{atomic_files.TMP_SUFFIX}"  # another process's, still writing
        stale = tmp_path / f".x.{dead_pid()}.abcd1234{atomic_files.TMP_SUFFIX}"  # a killed process's
        theirs.write_text("half")
        stale.write_text("half")

        def fail(tmp):
            open(tmp, "w").write("half")
            raise OSError(28, "No space left on device")
        with pytest.raises(OSError):
            atomic_files.write_atomically(str(tmp_path / "x"), fail)
        assert sorted(os.listdir(tmp_path)) == sorted(["x", "x.tmp", theirs.name])  # the stale one is gone too
        atomic_files.write_atomically(str(tmp_path / "x"), lambda tmp: open(tmp, "w").write("new"))
        assert (tmp_path / "x").read_text() == "new" and (tmp_path / "x.tmp").read_text() == "the user's"
        assert theirs.read_text() == "half"
    finally:
        live.kill()
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    with pytest.raises(FileExistsError):  # a folder never goes over an existing path, even an empty folder
        (tmp_path / "empty").mkdir()
        atomic_files.write_atomically(str(tmp_path / "empty"), lambda tmp: None, folder=True)
    assert temps(tmp_path) == [theirs.name]


@needs_hf
def test_1_export_leaves_folders_and_files_named_tmp_alone(tiny_ckpt, tmp_path):
    run_tmp = shutil.copytree(tiny_ckpt, tmp_path / "run.tmp")
    (tmp_path / "report.tmp").write_text("the user's report")
    before = checksums(tmp_path)
    assert run_inprocess("export.py", "--out_dir", str(run_tmp), "--to", str(tmp_path / "run"))[0] == 0
    shutil.copytree(tmp_path / "run", tmp_path / "exp.tmp")
    assert run_inprocess("export.py", "--from", str(tmp_path / "exp.tmp"), "--to", str(tmp_path / "exp"))[0] == 0
    assert run_inprocess("export.py", "--out_dir", str(run_tmp), "--to", str(tmp_path / "report"))[0] == 0
    after = checksums(tmp_path)
    assert all(after[f] == h for f, h in before.items())  # run.tmp/ and report.tmp as they were
    assert sorted(os.listdir(tmp_path)) == ["exp", "exp.tmp", "report", "report.tmp", "run", "run.tmp"]
    umask = os.umask(0)
    os.umask(umask)
    modes = {f: os.stat(tmp_path / "run" / f).st_mode & 0o777 for f in os.listdir(tmp_path / "run")}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # model.safetensors too (item 7)


def test_1_a_killed_exports_leftover_never_blocks_a_resume(tiny_ckpt, tmp_path):
    run = shutil.copytree(tiny_ckpt, tmp_path / "run")
    (run / "hf.tmp").mkdir()  # the user's own folder and file, named .tmp
    (run / "hf.tmp" / "notes.txt").write_text("keep me")
    (run / "notes.tmp").write_text("keep me too")
    stale = run / f".hf.{dead_pid()}.abcd1234{atomic_files.TMP_SUFFIX}"  # what a killed export leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    code, out, err = run_inprocess("train.py", "--init_from", "resume", "--max_iters", "5", "--out_dir", str(run))
    assert code == 0, err
    assert (run / "hf.tmp" / "notes.txt").read_text() == "keep me" and (run / "notes.tmp").read_text() == "keep me too"
    assert sorted(os.listdir(run)) == ["ckpt.pt", "hf.tmp", "metrics.jsonl", "notes.tmp"]  # no lock, no stale temp


# --- 2. committed results are kept like runs ---

def copy_results(name, to):
    """A copy of a committed results folder (its files, as a fresh clone has them: no runs/)."""
    return shutil.copytree(os.path.join(ROOT, "results", name), to, ignore=shutil.ignore_patterns("runs", atomic_files.LOCK))


def test_2_a_pilot_with_other_stages_is_refused_and_nothing_changes(tmp_path, monkeypatch):
    from experiments import pilots
    out = copy_results("copying-pilots", tmp_path / "pilots")
    (tmp_path / "data" / "stdlib").mkdir(parents=True)
    (tmp_path / "data" / "stdlib" / "train.bin").write_bytes(b"\0" * 64)  # the data check passes
    monkeypatch.chdir(tmp_path)
    before = checksums(out)
    try:
        with pytest.raises(SystemExit) as e:
            pilots.main(["--out", str(out), "--only", "plain", "--stages", "5"])
    finally:
        checkpoint.release()
    assert str(e.value) == (f"error: {out} holds results of other settings ({out}/grid.json: pilot_stages differ); "
                            f"give a new --out (nothing there is replaced)")
    assert checksums(out) == before


@pytest.mark.parametrize("pair,message", [
    ("emb_common=-1", "--set: emb_common must be in [0, 1000), got -1.0"),
    ("learning_rate=-1", "--set: --learning_rate must be a number in [0, 1e9], got -1.0"),
    ("n_head=3", "--set: need positive sizes, n_embd divisible by n_head"),
    ("mask_mode=columns", "--set: --mask_mode: mask mode must be one of"),
    ("dtype=float64", "--set: --dtype must be auto, float32, bfloat16 or float16"),
])
def test_2_set_is_checked_like_train_py_before_anything_is_written(tmp_path, pair, message):
    out = copy_results("text-stdlib", tmp_path / "text")
    before = checksums(out)
    one_line(run_inprocess("experiments/text.py", "--preset", "stdlib", "--ratios", "0", "--seeds", "1",
                           "--set", pair, "--out", str(out)), message)
    assert checksums(out) == before


def test_2_a_rerun_on_a_fresh_clone_does_not_replace_recorded_runs(tmp_path, monkeypatch):
    from experiments import text
    out = copy_results("text-stdlib", tmp_path / "text")
    bpe_dataset(tmp_path / "data" / "stdlib_dense", 300)  # the preset's data, as far as its checks go
    monkeypatch.chdir(tmp_path)
    before = checksums(out)
    try:
        with pytest.raises(SystemExit) as e:
            text.main(["--preset", "stdlib", "--ratios", "0,0.15", "--seeds", "1", "--out", str(out)])
    finally:
        checkpoint.release()
    assert str(e.value) == (f"error: {out}/runs.json already records 2 of these runs (0.0 seed 1, 0.15 seed 1) whose "
                            f"run folders are not here (a fresh clone?); --report {out} rewrites the report from "
                            f"them, --overwrite trains them again and replaces their records, or give a new --out")
    assert checksums(out) == before


def test_2_claim_out_refuses_to_retrain_a_recorded_run_unless_told(tmp_path, capsys):
    from experiments import common
    out = str(tmp_path / "grid")
    os.makedirs(os.path.join(out, "runs", "ntp_s1"))
    common.write_json(os.path.join(out, "runs.json"), {"runs": [{"arm": "ntp", "seed": 1}, {"arm": "base", "seed": 1}]})
    common.write_json(os.path.join(out, "runs", "ntp_s1", "sft.json"), {})
    planned = {("ntp", 1): os.path.join(out, "runs", "ntp_s1", "sft.json"),  # its folder is here: read back
               ("concat", 1): os.path.join(out, "runs", "concat_s1", "sft.json")}  # new: trained
    try:
        common.claim_out(out, {"a": 1}, planned, key="arm")  # nothing recorded would be trained again
        planned[("base", 1)] = os.path.join(out, "base", "sft.json")  # recorded, and its folder is gone
        with pytest.raises(SystemExit, match="already records 1 of these runs .base seed 1."):
            common.claim_out(out, {"a": 1}, planned, key="arm")
        common.claim_out(out, {"a": 1}, planned, key="arm", overwrite=True)
        assert capsys.readouterr().out == (f"--overwrite: training 1 run(s) that {out}/runs.json records again; "
                                           f"their records will be replaced (base seed 1)\n")
        with pytest.raises(SystemExit, match="holds results of other settings .* a differ"):
            common.claim_out(out, {"a": 2}, {}, key="arm")
    finally:
        checkpoint.release()
    fresh = str(tmp_path / "fresh")  # a folder holding a grid.json only: a corrected command may replace it
    os.makedirs(fresh)
    common.write_json(os.path.join(fresh, "grid.json"), {"a": 1})
    try:
        common.claim_out(fresh, {"a": 2})
    finally:
        checkpoint.release()
    assert common.read_json(os.path.join(fresh, "grid.json")) == {"a": 2}


@pytest.mark.parametrize("script,args,result", [
    ("experiments/probes.py", [], "probes.json"),
    ("experiments/niah.py", [], "niah.json"),
    ("experiments/attention.py", ["--examples", "2"], "attention.json"),
])
def test_2_an_evaluation_does_not_replace_an_earlier_one_unasked(tiny_ckpt, tmp_path, script, args, result):
    if script.endswith("attention.py"):  # a compare.py folder: runs/r0.15_s1 holds the checkpoint
        folder = tmp_path / "grid"
        shutil.copytree(tiny_ckpt, folder / "runs" / "r0.15_s1")
        args = args + ["--grid", str(folder)]
    else:
        folder = shutil.copytree(tiny_ckpt, tmp_path / "run")
        args = args + ["--out_dir", str(folder), "--device", "cpu"]
    (folder / result).write_text('{"an": "earlier result"}')
    before = checksums(folder)
    one_line(run_inprocess(script, *args), f"{folder}/{result} already holds an earlier result; --overwrite replaces it")
    assert checksums(folder) == before


# --- 3. a checkpoint remembers its tokenizer ---

def bpe_dataset(folder, vocab_size):
    text = open(os.path.join(ROOT, "tokenizer.py")).read() * 3
    ranks = tokenizer.train_bpe(text, vocab_size)
    tok = tokenizer.bpe_tokenizer(ranks)
    ids = np.array(tok.encode(text))
    tokenizer.write_dataset(str(folder), {"train": ids[:-2000], "val": ids[-2000:]}, tok, bpe_ranks=ranks)


def test_3_resuming_or_fine_tuning_on_a_dataset_prepared_again_names_both_tokenizers(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    bpe_dataset(data, 300)
    run_script("train.py", "--dataset", str(data), *TINY, "--max_iters", "2", "--eval_interval", "2",
               "--out_dir", str(run))
    saved = torch.load(run / "ckpt.pt", weights_only=False)["tokenizer"]
    assert saved["name"] == "bpe" and saved["vocab_size"] == 300 and saved["mask_token_id"] == 300
    bpe_dataset(data, 280)  # prepared again with another vocabulary: both pad to 320 ids, [MASK] moves
    before = checksums(tmp_path)
    now = tokenizer.identity({"kind": "meta", **pickle.load(open(data / "meta.pkl", "rb"))}, 280)
    for args in (["--init_from", "resume", "--out_dir", str(run)],
                 ["--init_from", str(run), "--out_dir", str(tmp_path / "tuned")]):
        one_line(run_inprocess("train.py", *args, "--max_iters", "4"),
                 f"{run}/ckpt.pt was trained with the tokenizer bpe (300 ids, [MASK] 300, fingerprint "
                 f"{saved['fingerprint']}), but {data} now has bpe (280 ids, [MASK] 280, fingerprint "
                 f"{now['fingerprint']}) (prepared again since?)")
    assert checksums(tmp_path) == before


def test_3_the_fingerprint_is_the_tokenizer_not_the_rest_of_meta():
    ranks = tokenizer.train_bpe("abab abab cdcd", 258)
    a = tokenizer.identity({"kind": "meta", "tokenizer": "bpe", "vocab_size": 258, "bpe_ranks": ranks}, 258)
    b = tokenizer.identity({"kind": "meta", "tokenizer": "bpe", "vocab_size": 258, "repeat": [1, 64, 8, 24],
                            "bpe_ranks": dict(reversed(list(ranks.items())))}, 258)  # other order, other extras
    assert a == b
    swapped = dict(ranks)
    k = list(swapped)[-2:]
    swapped[k[0]], swapped[k[1]] = swapped[k[1]], swapped[k[0]]
    assert tokenizer.identity({"kind": "meta", "tokenizer": "bpe", "vocab_size": 258, "bpe_ranks": swapped},
                              258)["fingerprint"] != a["fingerprint"]


# --- 4 and 5. export and import check what they carry; every failure is one line ---

def drop(key):
    return lambda c: c.pop(key)


def nan_weights(c):
    c["model"]["norm.weight"][0] = float("nan")


EXPORT = [  # (change to a tiny checkpoint, message)
    (lambda c: c["model_args"].update(n_layer=1), "its weights do not fit its model_args (1 layers, n_embd 32, "
                                                  "vocab_size 163): 8 not in the model (blocks.1."),
    (nan_weights, "holds non-finite weights (a diverged run?)"),
    (drop("mask_token_id"), "lacks 'mask_token_id': not a whole train.py checkpoint"),
    (drop("meta"), "lacks 'meta': not a whole train.py checkpoint"),
    (lambda c: c["model"].pop("blocks.1.mlp.up_proj.weight"), "1 missing (blocks.1.mlp.up_proj.weight)"),
    (lambda c: c["model"].update({"norm.weight": torch.ones(7)}), "1 of another shape (norm.weight)"),
    (lambda c: c.update(mask_token_id=500), "its [MASK] id 500 is not inside its vocabulary of 163 ids"),
    (lambda c: c["model_args"].update(emb_common=-1.0), "do not describe a model this model.py builds"),
]


@needs_hf
@pytest.mark.parametrize("change,message", EXPORT, ids=[m[:30] for _, m in EXPORT])
def test_4_export_refuses_a_checkpoint_that_is_not_whole(tmp_path, change, message):
    save_ckpt(tmp_path / "run", change=change)
    before = checksums(tmp_path)
    one_line(run_inprocess("export.py", "--out_dir", str(tmp_path / "run"), "--to", str(tmp_path / "hf")), message)
    assert checksums(tmp_path) == before


DELETE = object()


def edit_config(folder, **nanomeap_or_fields):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for k, v in nanomeap_or_fields.items():
        if k.startswith("nanomeap_") and v is DELETE:
            del cfg["nanomeap"][k[len("nanomeap_"):]]
        elif k.startswith("nanomeap_"):
            cfg["nanomeap"][k[len("nanomeap_"):]] = v
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


IMPORT = [  # (edits to an exported folder, message)
    (dict(num_hidden_layers=1), "config.json differs from the checkpoint it was exported from (n_layer 1 (exported: 2))"),
    (dict(max_position_embeddings=16), "config.json differs from the checkpoint it was exported from (block_size 16"),
    (dict(num_hidden_layers=1, nanomeap_model_args=DELETE, nanomeap_tokenizer=DELETE),  # from before they were kept
     "model.safetensors does not fit config.json's 1 layers (0 weights missing, 9 more"),
    (dict(nanomeap_mask_token_id=99999), "config.json differs from the checkpoint it was exported from (vocab_size 192 "
                                         "(exported: 163))"),
    (dict(nanomeap_config=None), "config.json's nanomeap block lacks a valid config"),
    (dict(nanomeap_meta="bpe"), "config.json's nanomeap block lacks a valid meta"),
    (dict(max_position_embeddings=-5), "config.json describes no model that model.py builds (need positive sizes"),
    (dict(nanomeap_config={"emb_common": -1.0}), "config.json describes no model that model.py builds (emb_common"),
    (dict(nanomeap_config={"n_layer": 5}), "config.json differs from the checkpoint it was exported from (n_layer 2 "),
    (dict(nanomeap_model_args=[1]), "config.json's nanomeap block lacks a valid model_args"),
    (dict(rope_parameters={"rope_theta": float("nan"), "rope_type": "default"}),
     "config.json describes no model that model.py builds (rope_theta"),
    (dict(nanomeap_meta={"kind": "meta", "tokenizer": "bpe", "vocab_size": 163, "bpe_ranks": {"!!!": 1}}),
     "its meta (the tokenizer) is not train.py's"),
    ("truncate", "cannot read model.safetensors (SafetensorError"),
]


@needs_hf
@pytest.mark.parametrize("edit,message", IMPORT, ids=[m[:30] for _, m in IMPORT])
def test_4_import_refuses_an_export_that_was_edited_or_cut_short(tmp_path, edit, message):
    save_ckpt(tmp_path / "run")
    assert run_inprocess("export.py", "--out_dir", str(tmp_path / "run"), "--to", str(tmp_path / "hf"))[0] == 0
    if edit == "truncate":
        weights = tmp_path / "hf" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:5000])
    else:
        edit_config(tmp_path / "hf", **edit)
    before = checksums(tmp_path)
    one_line(run_inprocess("export.py", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "back")), message)
    assert checksums(tmp_path) == before


@needs_hf
def test_5_a_full_disk_or_a_second_export_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from safetensors import SafetensorError
    from transformers import LlamaForCausalLM
    save_ckpt(tmp_path / "run")
    dst = tmp_path / "hf"

    def full(self, *args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", full)
    one_line(run_inprocess("export.py", "--out_dir", str(tmp_path / "run"), "--to", str(dst)),
             f"--to: could not write {dst}: the disk is full")

    def another_export_first(self, tmp, **kwargs):
        os.makedirs(dst)
        (dst / "config.json").write_text("the other export's")
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", another_export_first)
    one_line(run_inprocess("export.py", "--out_dir", str(tmp_path / "run"), "--to", str(dst)),
             f"--to {dst} appeared while this export ran (another export?); it is left as it is")
    assert (dst / "config.json").read_text() == "the other export's" and not temps(tmp_path)
    monkeypatch.undo()
    assert run_inprocess("export.py", "--out_dir", str(tmp_path / "run"), "--to", str(tmp_path / "hf2"))[0] == 0

    save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if not isinstance(path, (str, os.PathLike)):  # (the import's check in memory)
            return save(obj, path, *args, **kwargs)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)  # the import's one write
    one_line(run_inprocess("export.py", "--from", str(tmp_path / "hf2"), "--to", str(tmp_path / "back")),
             f"--to: could not write {tmp_path}/back: the disk is full")
    assert not os.path.exists(tmp_path / "back") and not temps(tmp_path)


@needs_hf
def test_5_ctrl_c_in_export_and_import_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM
    save_ckpt(tmp_path / "run")
    assert run_inprocess("export.py", "--out_dir", str(tmp_path / "run"), "--to", str(tmp_path / "hf"))[0] == 0
    before = checksums(tmp_path)
    interrupt_during(monkeypatch, LlamaForCausalLM, "save_pretrained")
    one_line(run_inprocess("export.py", "--out_dir", str(tmp_path / "run"), "--to", str(tmp_path / "hf2")),
             f"interrupted; nothing was written to --to {tmp_path}/hf2", code=130)
    interrupt_during(monkeypatch, torch, "save")
    one_line(run_inprocess("export.py", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "back")),
             f"interrupted; nothing was written to --to {tmp_path}/back", code=130)
    assert checksums(tmp_path) == before and not temps(tmp_path)


def test_5_ctrl_c_in_sample_and_prepare_is_one_line(tiny_ckpt, tmp_path, monkeypatch):
    p = subprocess.Popen([sys.executable, "sample.py", "--out_dir", str(tiny_ckpt), "--device", "cpu", "--num_samples",
                          "10", "--max_new_tokens", "100000"], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline()  # sampling has begun (sample.py exits on the spot: not in this process)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip() == "error: interrupted; stopped sampling", err
    text, data = tmp_path / "in.txt", tmp_path / "data"
    text.write_text("a first text, long enough to split. " * 20)
    assert run_inprocess("data/shakespeare_byte/prepare.py", "--input", str(text), "--out_dir", str(data))[0] == 0
    before = checksums(data)
    text.write_text("another text: what a second prepare would write. " * 20)
    interrupt_during(monkeypatch, tokenizer, "meta_writer")  # after train.bin and val.bin are written
    one_line(run_inprocess("data/shakespeare_byte/prepare.py", "--input", str(text), "--out_dir", str(data)),
             f"interrupted; {data} is as it was", code=130)
    assert checksums(data) == before and not temps(data)  # not a new train.bin beside the old meta.pkl


def test_5_pilots_report_and_digest_read_broken_files_in_one_line(tmp_path, monkeypatch):
    from experiments import digest
    out = tmp_path / "pilots"
    out.mkdir()
    (out / "plain.json").write_text('{"pilot": "plain", "stages": [')  # cut short
    one_line(run_inprocess("experiments/pilots.py", "--report", str(out)), f"cannot read {out}/plain.json")
    (out / "plain.json").write_text('{"pilot": "plain", "what": "", "settings": {}, "stages": []}')
    one_line(run_inprocess("experiments/pilots.py", "--report", str(out)), "holds no probed pilot stage")
    results = copy_results("", tmp_path / "results")
    os.remove(results / "cpu" / "runs.json")
    monkeypatch.setattr(digest, "RESULTS", str(results))
    digest.load.cache_clear()
    try:
        with pytest.raises(SystemExit) as e:
            digest.main(["--check"])
    finally:
        digest.load.cache_clear()
    assert str(e.value).startswith(f"error: cannot read {results}/cpu/runs.json (No such file or directory)")


def test_5_a_model_too_large_for_the_machine_is_one_line(tmp_path):
    for flag, value in (("--n_embd", "1e7"), ("--batch_size", "1e8"), ("--block_size", "1e7")):
        one_line(run_inprocess("train.py", flag, value, "--device", "cpu", "--out_dir", str(tmp_path / "run")),
                 "lower --n_embd, --n_layer, --block_size or --batch_size")
    assert not os.path.exists(tmp_path / "run")


def test_5_a_checkpoint_without_meta_is_one_line_in_sample(tmp_path):
    save_ckpt(tmp_path / "run", change=drop("meta"))
    one_line(run_inprocess("sample.py", "--out_dir", str(tmp_path / "run"), "--device", "cpu"),
             "lacks 'meta': not a whole train.py checkpoint")


# --- 6. messages that name the fix ---

def test_6_an_hf_export_given_as_a_run_says_how_to_bring_it_back(tmp_path):
    hf = tmp_path / "my export"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    fix = f"is a Hugging Face folder, not a train.py run: bring it back first with python export.py --from '{hf}'"
    one_line(run_inprocess("train.py", "--init_from", "resume", "--out_dir", str(hf)), f"--out_dir {hf} {fix}")
    one_line(run_inprocess("sample.py", "--out_dir", str(hf)), f"--out_dir {hf} {fix}")
    one_line(run_inprocess("train.py", "--init_from", str(hf), "--out_dir", str(tmp_path / "x")), f"--init_from {hf} {fix}")


@pytest.mark.parametrize("script,args,message", [
    ("export.py", ["--to", "x"], "give --out_dir RUN to export a checkpoint, or --from FOLDER to bring an export back"),
    ("export.py", ["--out_dir", "", "--to", "x"], "--out_dir is empty; give a folder"),
    ("sample.py", ["--out_dir", ""], "--out_dir is empty; give the folder of a train.py run"),
    ("train.py", ["--out_dir", " "], "--out_dir is empty; give a folder"),
    ("train.py", ["--dataset", "my data"], "data/my data/train.bin not found; prepare it with a data/*/prepare.py "
                                           "script with --out_dir 'data/my data'"),
    ("experiments/pilots.py", ["--only", "plain,nope"], "unknown pilot(s) nope; --only takes names among plain,"),
    ("experiments/pilots.py", ["--stages", "5,3"], "need increasing --stages >= 1 and --jobs >= 1 (got --stages 5,3"),
    ("experiments/digest.py", ["--chek"], "unrecognized arguments: --chek (python -m experiments.digest --help"),
    ("bench.py", ["--out", "results/bench"], "--out results/bench is a folder; give the table's file name"),
    ("bench.py", ["--out", "results/bench/.nanomeap-lock"], "are nanoMEAP's own"),
])
def test_6_messages_name_the_fix(script, args, message):
    one_line(run_inprocess(script, *args), message)


def test_6_a_model_flag_on_resume_says_drop_the_flag(tiny_ckpt, tmp_path):
    run = shutil.copytree(tiny_ckpt, tmp_path / "run")
    ckpt = torch.load(run / "ckpt.pt", weights_only=False)
    ckpt["config"]["emb_common"] = ckpt["model_args"]["emb_common"] = 1.0  # an emb_common run
    torch.save(ckpt, run / "ckpt.pt")
    before = checksums(run)
    one_line(run_inprocess("train.py", "--init_from", "resume", "--emb_common", "0", "--out_dir", str(run)),
             "--emb_common 0.0 does not match the checkpoint's 1.0; drop the flag to resume, or use a new --out_dir")
    assert checksums(run) == before


# --- 7. smaller ---

def test_7_prepare_checks_its_out_dir_before_the_work(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "a_file").write_text("x")
    code, out, err = run_inprocess("data/stdlib/prepare.py", "--root", str(src), "--out_dir", str(tmp_path / "a_file"))
    one_line((code, out, err), f"--out_dir '{tmp_path}/a_file' is a file; give a folder")
    assert out == ""  # before reading the corpus or training the BPE


def test_7_a_full_disk_in_prepare_is_one_line_and_leaves_no_folder(small_disk, tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("x" * 400_000)  # 400 KB of bytes: more than the 256 KB disk
    data = small_disk / "data"
    one_line(run_inprocess("data/shakespeare_byte/prepare.py", "--input", str(text), "--out_dir", str(data)),
             f"--out_dir: could not write {data}/train.bin: the disk is full")
    assert os.listdir(small_disk) == []


def test_7_sample_bounds_what_it_draws(tiny_ckpt):
    one_line(run_inprocess("sample.py", "--out_dir", str(tiny_ckpt), "--max_new_tokens", "1e12", "--device", "cpu"),
             "--num_samples x --max_new_tokens is 3,000,000,000,000; sample.py draws at most 1,000,000")


# --- found by a red team, after the first round ---

def test_a_dataset_is_replaced_whole_or_not_at_all(tmp_path):
    text, data = tmp_path / "in.txt", tmp_path / "data"
    text.write_text("the first text, long enough to split in two. " * 20)
    assert run_inprocess("data/shakespeare_byte/prepare.py", "--input", str(text), "--out_dir", str(data))[0] == 0
    os.remove(data / "meta.pkl")
    (data / "meta.pkl").mkdir()  # the last of the three renames will fail, after train.bin's and val.bin's
    os.rename(data / "val.bin", tmp_path / "elsewhere.bin")
    os.symlink(tmp_path / "elsewhere.bin", data / "val.bin")  # a link is put back as the link it was
    before = checksums(data)
    text.write_text("a second text, which must not end up beside the first one's meta. " * 20)
    one_line(run_inprocess("data/shakespeare_byte/prepare.py", "--input", str(text), "--out_dir", str(data)),
             f"--out_dir: could not write {data}/meta.pkl")
    assert checksums(data) == before and sorted(os.listdir(data)) == ["meta.pkl", "train.bin", "val.bin"]
    assert os.readlink(data / "val.bin") == str(tmp_path / "elsewhere.bin")


def test_a_run_folder_keeps_files_that_are_not_the_runs(tiny_ckpt, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "lock").write_text("my notes")
    (d / f".x.{'9' * 20}.abcdefgh{atomic_files.TMP_SUFFIX}").write_text("no pid of ours")
    (d / "metrics.jsonl").write_text("my own log\n")
    before = checksums(d)
    one_line(run_inprocess("train.py", *TINY, "--max_iters", "2", "--out_dir", str(d)),
             f"{d}/metrics.jsonl holds lines that are not train.py's (line 1); move it away")
    (d / "metrics.jsonl").unlink()
    (d / "metrics.jsonl").mkdir()
    one_line(run_inprocess("train.py", *TINY, "--max_iters", "2", "--out_dir", str(d)), "is a folder, not train.py's log")
    (d / "metrics.jsonl").rmdir()
    (d / atomic_files.LOCK).write_text("not a pid")
    one_line(run_inprocess("train.py", *TINY, "--max_iters", "2", "--out_dir", str(d)), "is not a nanoMEAP lock")
    (d / atomic_files.LOCK).unlink()
    (tmp_path / "outside").write_text("12345")
    os.symlink(tmp_path / "outside", d / atomic_files.LOCK)  # never written through
    one_line(run_inprocess("train.py", *TINY, "--max_iters", "2", "--out_dir", str(d)), "is a symbolic link")
    assert (tmp_path / "outside").read_text() == "12345"
    (d / atomic_files.LOCK).unlink()
    assert {f: h for f, h in checksums(d).items() if "metrics" not in f} == \
        {f: h for f, h in before.items() if "metrics" not in f}
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    one_line(run_inprocess("train.py", *TINY, "--out_dir", str(hf)), f"--out_dir {hf} holds a Hugging Face model")
    for bad in (tmp_path / f".run.12345.abcdefgh{atomic_files.TMP_SUFFIX}", tmp_path / atomic_files.LOCK):
        one_line(run_inprocess("train.py", *TINY, "--out_dir", str(bad)), "are nanoMEAP's own")
    assert sorted(os.listdir(hf)) == ["config.json"] and not os.path.exists(tmp_path / atomic_files.LOCK)


def test_an_edited_checkpoint_is_one_line(tiny_ckpt, tmp_path):
    def edited(name, change):
        run = shutil.copytree(tiny_ckpt, tmp_path / name)
        ckpt = torch.load(run / "ckpt.pt", weights_only=False)
        change(ckpt)
        torch.save(ckpt, run / "ckpt.pt")
        return str(run)
    one_line(run_inprocess("train.py", "--init_from", "resume", "--out_dir", edited("norng", drop("rng"))),
             "ckpt.pt lacks rng: it cannot continue exactly")
    negative = edited("negative", lambda c: c.update(iter_num=-5))
    before = checksums(negative)
    one_line(run_inprocess("train.py", "--init_from", "resume", "--out_dir", negative), "lacks a step count")
    assert checksums(negative) == before  # metrics.jsonl not cut back to "iter < -5"
    older = {k: v for k, v in torch.load(tiny_ckpt / "ckpt.pt", weights_only=False).items() if k != "tokenizer"}
    for name, change in (("tok", lambda c: c.update(tokenizer="x")),
                         ("meta", lambda c: (c.clear(), c.update(older, meta="junk")))):  # (no tokenizer kept)
        one_line(run_inprocess("train.py", "--init_from", "resume", "--out_dir", edited(name, change)),
                 "its record of its tokenizer (tokenizer, meta) is not train.py's")
    one_line(run_inprocess("train.py", "--init_from", "resume", "--out_dir",
                           edited("badcfg", lambda c: c["config"].update(block_size="x"))),
             "its saved setting --block_size expects int (like 64), got 'x'")
    old = edited("old", lambda c: c["config"].pop("task"))  # a setting the checkpoint predates: its default
    assert run_inprocess("sample.py", "--out_dir", old, "--device", "cpu", "--num_samples", "1")[0] == 0


def test_experiments_read_broken_results_and_repeated_set_in_one_line(tmp_path):
    out = copy_results("cpu", tmp_path / "cpu")
    before = checksums(out)
    one_line(run_inprocess("experiments/compare.py", "--report", str(out), "--against", str(tmp_path / "nope")),
             f"--against {tmp_path}/nope: no runs.json there")
    (out / "runs.json").write_text('{"runs": [1, 2]}')
    one_line(run_inprocess("experiments/compare.py", "--report", str(out)), "is not a runs.json with a mask_ratio")
    one_line(run_inprocess("experiments/compare.py", "--preset", "cpu", "--out", str(out)), "is not a runs.json")
    (out / "grid.json").write_text("[1]")
    one_line(run_inprocess("experiments/compare.py", "--preset", "cpu", "--out", str(out)), "is not a grid.json")
    fresh = tmp_path / "fresh"
    for pairs, message in ((["task=foo"], "--set: unknown task 'foo'"),
                           (["n_embd=100000000000"], "--set: this model is too large to build"),
                           (["block_size=2000000000"], "lower --n_embd, --n_layer, --block_size or --batch_size"),
                           (["n_layer=1", "--set", "n_head=3"], "--set: need positive sizes")):  # both --set count
        one_line(run_inprocess("experiments/compare.py", "--preset", "tiny", "--out", str(fresh), "--set", *pairs),
                 message)
    assert not fresh.exists() and {f: h for f, h in checksums(out).items() if not f.endswith(".json")} == \
        {f: h for f, h in before.items() if not f.endswith(".json")}


def test_export_to_a_long_name_and_never_to_a_name_of_ours(tiny_ckpt, tmp_path):
    if not HF:
        pytest.skip("export.py's optional extra: pip install transformers safetensors")
    long = tmp_path / ("x" * 240)
    assert run_inprocess("export.py", "--out_dir", str(tiny_ckpt), "--to", str(long))[0] == 0
    one_line(run_inprocess("export.py", "--out_dir", str(tiny_ckpt), "--to", str(tmp_path / atomic_files.LOCK)),
             "are nanoMEAP's own")


def test_probes_refuse_a_dataset_prepared_again(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    bpe_dataset(data, 300)
    run_script("train.py", "--dataset", str(data), *TINY, "--block_size", "64", "--max_iters", "2",
               "--eval_interval", "2", "--out_dir", str(run))
    bpe_dataset(data, 280)
    one_line(run_inprocess("experiments/probes.py", "--out_dir", str(run), "--device", "cpu"),
             f"the checkpoint was trained with the tokenizer bpe (300 ids")
    assert not os.path.exists(run / "probes.json")


@pytest.mark.parametrize("after", [0.2, 0.5, 0.9])
def test_ctrl_c_while_the_libraries_load_is_one_line_and_ends_the_script(tmp_path, after):
    import time
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "train.py", *TINY, "--max_iters", "100000", "--out_dir", str(tmp_path / "run")],
                         cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(after)  # in `import torch` (whose C code may swallow an exception raised there)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)  # it ends: it does not go on to train
    assert p.returncode == 130 and err.strip() == "error: interrupted; nothing was trained", err
    assert not os.path.exists(tmp_path / "run")
