"""Checkpoints a hostile or unlucky user hands back: forged or damaged metadata, NaN bytes, flipped
bits, a model description far bigger than the file; and the write path (fsync, orphaned temps)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import minids.checkpoint as C
import minids.checkpoint_checks as CC
import minids.files as F
from minids.config import get_preset
from minids.data import CharTokenizer
from minids.model import MiniDeepSeek

ROOT = Path(__file__).resolve().parents[2]
TOK = CharTokenizer("abcdefghijklmnopqrst")


def small_model(**kw):
    return MiniDeepSeek(get_preset("baseline", **{**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, max_position_embeddings=16,
                                                         vocab_size=20), **kw}))


@pytest.fixture
def good(tmp_path):
    """A checkpoint as the trainer writes it (weights, optimizer state, tokenizer, iter, RNG)."""
    model = small_model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).loss.backward()
    opt.step()
    path = tmp_path / C.CHECKPOINT
    C.save_train_state(path, model, opt, torch.Generator().manual_seed(0), 3, {"tokenizer": TOK.state()})
    return path


def forge(path, meta_fn=None, tensor_fn=None, raw_meta=None):
    """Rewrite the checkpoint with changed metadata or tensors (CRCs recomputed unless asked not to)."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["minids"])
    if meta_fn:
        meta = meta_fn(meta) or meta
    if tensor_fn:
        tensors = tensor_fn(tensors) or tensors
        meta["crc32"] = {k: C.tensor_crc32(v) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"minids": raw_meta if raw_meta is not None else json.dumps(meta)})
    return path


def restore(path, **kw):
    model = small_model(**kw)
    return C.restore_train_state(path, model, torch.optim.AdamW(model.parameters()), torch.Generator())


def test_good_checkpoint_loads_and_resumes(good):
    model, tok, meta = C.load_model(good)
    assert tok.chars == TOK.chars and meta["iter"] == 3 and set(meta["crc32"]) == set(load_file(str(good)))
    assert restore(good) == 3


# ------------------------------------------------------------------------ NaN / inf
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_save_refuses_non_finite_tensors_and_keeps_the_old_file(tmp_path, bad):
    model = small_model()
    path = tmp_path / C.CHECKPOINT
    C.save_checkpoint(path, model)
    before = path.read_bytes()
    with torch.no_grad():
        model.layers[1].attn_norm.weight[3] = bad
    with pytest.raises(C.NonFiniteError, match=r"model\.layers\.1\.attn_norm\.weight \((1 NaN, 0|0 NaN, 1) inf") as e:
        C.save_checkpoint(path, model)
    assert e.value.names == ["model.layers.1.attn_norm.weight"]
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [C.CHECKPOINT]


def test_save_refuses_non_finite_optimizer_state(tmp_path):
    model = small_model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).loss.backward()
    opt.step()
    next(iter(opt.state.values()))["exp_avg_sq"].fill_(float("nan"))
    with pytest.raises(C.NonFiniteError, match=r"optim\.0\.exp_avg_sq"):
        C.save_checkpoint(tmp_path / "c.safetensors", model, opt)
    assert not list(tmp_path.iterdir())


def test_nan_bytes_in_a_stored_tensor_are_refused_naming_it(good):
    def nan(t):
        t["model.layers.0.ffn.up_proj.weight"][0, 0] = float("nan")
    forge(good, tensor_fn=nan)                                 # CRCs recomputed: only the NaN check is left
    with pytest.raises(C.CheckpointError, match=rf"{good}.*non-finite.*model\.layers\.0\.ffn\.up_proj\.weight"):
        C.load_model(good)
    with pytest.raises(C.CheckpointError, match="non-finite"):
        restore(good)


# ------------------------------------------------------------------------ damage after the write
def test_a_flipped_bit_is_caught_by_the_crc_and_named(good):
    raw = bytearray(good.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    start, _ = json.loads(raw[8:8 + n])["model.layers.1.attn.o_proj.weight"]["data_offsets"]
    raw[8 + n + start + 2] ^= 0x01                              # the weight stays finite: only the CRC sees it
    good.write_bytes(bytes(raw))
    with pytest.raises(C.CheckpointError, match=r"damaged.*model\.layers\.1\.attn\.o_proj\.weight"):
        C.load_model(good)


def test_a_removed_tensor_is_caught_by_the_crc_list(good):
    tensors = load_file(str(good))
    with safe_open(str(good), "pt") as f:
        md = f.metadata()
    tensors.pop("optim.0.exp_avg")
    save_file(tensors, str(good), metadata=md)
    with pytest.raises(C.CheckpointError, match=r"optim\.0\.exp_avg.*added or removed"):
        restore(good)


def test_checkpoints_without_crcs_still_load(good):
    forge(good, meta_fn=lambda m: m.pop("crc32") and None)
    C.load_model(good)
    assert restore(good) == 3


# ------------------------------------------------------------------------ metadata, checked before anything is built
META_ATTACKS = {   # name -> (metadata change, what the one-line error must say besides the file's name)
    "config is a list": (lambda m: m.update(config=[1, 2]), "'config' must be a JSON object"),
    "config missing": (lambda m: m.pop("config"), "'config' must be a JSON object"),
    "config field of wrong type": (lambda m: m["config"].update(hidden_size="32"), "hidden_size='32'"),
    "tokenizer missing": (lambda m: m.pop("tokenizer"), "'tokenizer' is missing"),
    "tokenizer is a string": (lambda m: m.update(tokenizer="char"), "'tokenizer' must be a tokenizer state"),
    "tokenizer without its chars": (lambda m: m.update(tokenizer={"kind": "char"}), "'tokenizer' does not load"),
    "tokenizer of unknown kind": (lambda m: m.update(tokenizer={"kind": "zzz"}), "'tokenizer' does not load"),
    "iter negative": (lambda m: m.update(iter=-5), "'iter' must be an integer >= 0"),
    "iter a string": (lambda m: m.update(iter="3"), "'iter' must be an integer >= 0"),
    "iter a bool": (lambda m: m.update(iter=True), "'iter' must be an integer >= 0"),
    "world_size zero": (lambda m: m.update(world_size=0), "'world_size' must be an integer >= 1"),
    "crc32 a list": (lambda m: m.update(crc32=[1]), "'crc32' must map"),
}


@pytest.mark.parametrize("name", sorted(META_ATTACKS))
def test_bad_metadata_is_one_clear_error_naming_file_and_field(good, name):
    change, words = META_ATTACKS[name]
    forge(good, meta_fn=lambda m: change(m) and None)
    with pytest.raises(ValueError) as e:
        C.load_model(good)
    assert str(good) in str(e.value) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("change, words", [
    (lambda m: m.pop("optim_groups"), "'optim_groups' must be"),
    (lambda m: m.update(optim_groups=[{"lr": 1}]), "'optim_groups' must be"),
    (lambda m: m.update(optim_groups=[{"params": [0]}]), "'optim_groups' and the optim.* tensors do not fit"),
    (lambda m: m.pop("iter"), "'iter' must be an integer >= 0"),
    (lambda m: m.update(iter=-1), "'iter' must be an integer >= 0"),
])
def test_bad_training_state_is_one_clear_error(good, change, words):
    forge(good, meta_fn=lambda m: change(m) and None)
    with pytest.raises(ValueError) as e:
        restore(good)
    assert str(good) in str(e.value) and words in str(e.value), str(e.value)


def test_missing_random_state_is_named(good):
    forge(good, tensor_fn=lambda t: {k: v for k, v in t.items() if k != "rng.data"})
    with pytest.raises(C.CheckpointError, match=r"lacks the random states \['rng\.data'\]"):
        restore(good)


@pytest.mark.parametrize("raw, words", [("{oops", "truncated or corrupt"), ("[1]", "must be a JSON object")])
def test_metadata_that_is_not_a_json_object(good, raw, words):
    forge(good, raw_meta=raw)
    with pytest.raises(C.CheckpointError, match=words):
        C.load_model(good)


def test_checkpoint_without_minids_metadata(good):
    save_file(load_file(str(good)), str(good))
    with pytest.raises(C.CheckpointError, match="no 'minids' metadata"):
        C.load_model(good)


def test_a_folder_where_the_checkpoint_should_be(tmp_path):
    (tmp_path / C.CHECKPOINT).mkdir()
    with pytest.raises(C.CheckpointError, match="is a folder"):
        C.load_model(tmp_path / C.CHECKPOINT)


def test_weights_of_another_dtype_kind_are_refused(good):
    def to_int(t):
        t["model.norm.weight"] = t["model.norm.weight"].to(torch.int32)
    forge(good, tensor_fn=to_int)
    with pytest.raises(C.CheckpointError, match=r"model\.norm\.weight|norm\.weight: torch\.int32"):
        C.load_model(good)


@pytest.mark.parametrize("change, words", [
    (dict(hidden_size=8192, intermediate_size=24576, num_hidden_layers=8, num_attention_heads=64),
     "describes a model of"),
    (dict(num_hidden_layers=10**9), "describes 1000000000 layers"),
    (dict(intermediate_size=60), "shape mismatch"),             # smaller: only the shapes tell
])
def test_metadata_describing_another_model_builds_nothing(good, monkeypatch, change, words):
    """A config far bigger than the weights stored is refused before any model is allocated: the
    only model built is the shapes-only one on the meta device, and only when the size fits."""
    built = []
    real = C.MiniDeepSeek

    def spy(cfg):
        built.append((cfg.hidden_size, cfg.num_hidden_layers, str(torch.get_default_device())))
        return real(cfg)
    monkeypatch.setattr(C, "MiniDeepSeek", spy)           # the model load_model builds
    monkeypatch.setattr(CC, "MiniDeepSeek", spy)          # the shapes-only one of check_model_shapes
    forge(good, meta_fn=lambda m: m["config"].update(change) and None)
    with pytest.raises(ValueError, match=words) as e:
        C.load_model(good)
    assert str(good) in str(e.value) and "'config'" in str(e.value)
    assert all(dev == "meta" for *_, dev in built), built


# ------------------------------------------------------------------------ the write path
def test_the_write_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync dir" if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")) else "fsync file")
        return real_fsync(fd)

    def replace(a, b):
        calls.append("rename")
        return real_replace(a, b)
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to tell a folder's descriptor from a file's")
    monkeypatch.setattr(F.os, "fsync", fsync)
    monkeypatch.setattr(F.os, "replace", replace)
    C.save_checkpoint(tmp_path / C.CHECKPOINT, small_model())
    assert calls == ["fsync file", "rename", "fsync dir"]


def test_orphaned_temp_files_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / C.CHECKPOINT
    host, old = F._host(), time.time() - 2 * F.STALE_S
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()                      # a pid that has just ended
    files = {
        f".{C.CHECKPOINT}.{host}.{dead}.abc_12.tmp": True,              # its writer is gone
        f".{C.CHECKPOINT}.{host}.{os.getpid()}.live99.tmp": False,      # its writer (this process) is alive
        f".{C.CHECKPOINT}.otherhost.{dead}.x1.tmp": False,              # another host's, recent: maybe alive
        f".{C.CHECKPOINT}.q1w2e3r4.tmp": False,                         # the old pattern, recent
        "notes.tmp": False,                                             # not ours
        f".{C.CHECKPOINT}.keep": False,
        f".other.safetensors.{host}.{dead}.abc.tmp": False,             # another target's
    }
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    old_names = {f".{C.CHECKPOINT}.otherhost.{dead}.old1.tmp": True, f".{C.CHECKPOINT}.oldpat12.tmp": True,
                 "old_notes.tmp": False}
    for name in old_names:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    C.save_checkpoint(target, small_model())
    left = {p.name for p in tmp_path.iterdir()}
    for name, removed in {**files, **old_names}.items():
        assert (name not in left) == removed, name
    assert target.exists()


def test_a_write_killed_outright_leaves_an_orphan_the_next_write_removes(tmp_path):
    """kill -9 in the middle of a checkpoint write: the old checkpoint is intact, a temporary file
    is left (nothing can delete it then), and the next write removes it."""
    target = tmp_path / C.CHECKPOINT
    C.save_checkpoint(target, small_model())
    before = target.read_bytes()
    code = ("import sys, time; sys.path.insert(0, %r); from minids.files import AtomicFile; "
            "a = AtomicFile(%r); a.f.write(b'x' * 1000); a.f.flush(); print('ready', flush=True); time.sleep(60)"
            % (str(ROOT), str(target)))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    orphans = [q.name for q in tmp_path.iterdir() if q.name.endswith(".tmp")]
    assert len(orphans) == 1 and target.read_bytes() == before
    C.save_checkpoint(target, small_model())
    assert [q.name for q in tmp_path.iterdir()] == [C.CHECKPOINT]
