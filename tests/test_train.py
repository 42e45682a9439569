"""Float training on the quick recipe: it learns, checkpoints load back, resume, DDP, bad input."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from aspp_edge import kernels
from aspp_edge.checkpoint import load_model, read_checkpoint
from aspp_edge.config import load_recipe
from aspp_edge.data import build_dataset
from aspp_edge.errors import CheckpointError, ConfigError
from aspp_edge.fileio import state_dict_sha256
from aspp_edge.metrics import evaluate_miou
from aspp_edge.train import FINAL, LAST, train

# Chance level: predicting the majority class (background) everywhere scores background's IoU
# (its pixel share, ~0.76) on one of the six classes: ~0.13 mIoU on the val split. A model that
# has learned anything about the objects clears 0.2 (what one epoch of the default recipe reaches).
CHANCE_MIOU = 0.13
QUICK_MIOU_FLOOR = 0.2


def test_quick_recipe_learns(quick_trained, quick_recipe):
    val = build_dataset(quick_recipe, "val")
    masks = np.stack([val.raw(i)[1] for i in range(len(val))])
    majority = (masks == 0).mean() / quick_recipe.num_classes
    assert abs(majority - CHANCE_MIOU) < 0.03  # the chance level quoted above is this split's
    assert quick_trained.miou > QUICK_MIOU_FLOOR, quick_trained.history
    losses = [h["loss"] for h in quick_trained.history]
    assert losses[-1] < losses[0]


def test_checkpoint_loads_back_and_matches(quick_trained, quick_recipe):
    """What float.pt must hold on its own: the recipe it was trained with (loaded without passing
    one) and weights that score, recomputed here on the val split, the val mIoU it records."""
    model, recipe, ckpt = load_model(quick_trained.checkpoint)
    assert recipe.to_dict() == quick_recipe.to_dict()
    val = build_dataset(recipe, "val")
    miou = evaluate_miou(model, val, torch.device("cpu"), recipe.train.batch_size)
    assert miou == pytest.approx(ckpt["val_miou"], abs=1e-6) and miou == pytest.approx(ckpt["history"][-1]["val_miou"], abs=1e-6)
    assert ckpt["rank_weight_sha256"] == [state_dict_sha256(model.state_dict())]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, quick_recipe.num_classes, 64, 64)


def test_resume_continues_from_last(tmp_path, quick_recipe):
    short = quick_recipe.replace(train={"epochs": 1}, data={"train_size": 32, "val_size": 8})
    train(short, tmp_path, progress=False)
    longer = short.replace(train={"epochs": 2})
    result = train(longer, tmp_path, resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert read_checkpoint(tmp_path / LAST)["epoch"] == 2


def test_resume_refuses_a_different_recipe(tmp_path, quick_recipe):
    short = quick_recipe.replace(train={"epochs": 1}, data={"train_size": 32, "val_size": 8})
    train(short, tmp_path, progress=False)
    other = short.replace(model={"head": "aspp"})
    with pytest.raises(CheckpointError, match=r"its recipe differs: model.head: checkpoint 'sep_aspp', recipe 'aspp'"):
        train(other, tmp_path, resume=True, progress=False)


def test_resume_without_checkpoint(tmp_path, quick_recipe):
    with pytest.raises(CheckpointError, match="no last.pt"):
        train(quick_recipe, tmp_path, resume=True, progress=False)


def test_train_split_smaller_than_batch(tmp_path, quick_recipe):
    tiny = quick_recipe.replace(data={"train_size": 4})
    with pytest.raises(ConfigError, match=r"train split has 4 samples, fewer than train.batch_size 16"):
        train(tiny, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # nothing written


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "float.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"is corrupt or not a torch checkpoint"):
        load_model(bad)


def test_foreign_checkpoint(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, p)
    with pytest.raises(CheckpointError, match=r"is not an aspp-edge checkpoint"):
        load_model(p)


def test_mismatched_checkpoint_names_the_difference(quick_trained, quick_recipe):
    other = quick_recipe.replace(model={"head": "aspp", "output_stride": 8})
    with pytest.raises(CheckpointError, match=r"model.head: checkpoint 'sep_aspp', recipe 'aspp'; model.output_stride"):
        load_model(quick_trained.checkpoint, other)


def test_checkpoint_with_wrong_tensors(tmp_path, quick_trained):
    ckpt = read_checkpoint(quick_trained.checkpoint)
    state = dict(ckpt["state_dict"])
    key = "decoder.classifier.weight"
    state[key] = torch.zeros(3, *state[key].shape[1:])
    del state["head.project.0.0.weight"]
    p = tmp_path / "edited.pt"
    torch.save({**ckpt, "state_dict": state}, p)
    with pytest.raises(CheckpointError, match=r"missing 1 tensors \(e.g. head.project.0.0.weight\); 1 shape mismatches \(e.g. decoder.classifier.weight"):
        load_model(p)


@pytest.mark.distributed
def test_torchrun_two_ranks_agree(tmp_path, quick_recipe):
    recipe = quick_recipe.replace(train={"epochs": 1}, data={"train_size": 64, "val_size": 16})
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "aspp_edge.cli", "train", "--recipe", str(path), "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = read_checkpoint(tmp_path / "out" / FINAL)
    assert ckpt["world_size"] == 2
    hashes = ckpt["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] == state_dict_sha256(ckpt["state_dict"])


def test_class_count_check_skips_only_recipes_that_no_longer_validate(tmp_path, quick_recipe, monkeypatch):
    """A checkpoint whose stored recipe no longer validates (hand-edited, older) still loads on its
    tensors; any other failure while reading that recipe is a bug and surfaces."""
    from aspp_edge.checkpoint import save_checkpoint
    from aspp_edge.config import Recipe
    from aspp_edge.models import create_model

    model = create_model(quick_recipe.model.head, **quick_recipe.model_kwargs())
    stale = quick_recipe.to_dict()
    stale["train"]["warmup_epochs"] = 2  # a key this version does not know
    path = save_checkpoint(tmp_path / "stale.pt", {"state_dict": model.state_dict(), "recipe": stale})
    loaded, recipe, _ = load_model(path, quick_recipe)
    assert recipe == quick_recipe and loaded.state_dict().keys() == model.state_dict().keys()

    def broken(cls, data):
        raise ZeroDivisionError("a bug, not a bad recipe")

    monkeypatch.setattr(Recipe, "from_dict", classmethod(broken))
    with pytest.raises(ZeroDivisionError, match="a bug"):
        load_model(path, quick_recipe)


def test_warmup_then_poly_schedule():
    from aspp_edge.train import poly_lambda

    f = poly_lambda(100, 1.0, warmup_steps=10)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # linear up to the peak
    assert [f(s) for s in (10, 55, 100)] == pytest.approx([1.0, 0.5, 0.0])  # poly over the remaining 90 steps
    assert poly_lambda(100, 1.0)(50) == pytest.approx(0.5)  # no warm-up: poly from step 0
    with pytest.raises(ConfigError, match=r"^train.warmup_steps -1 must be >= 0$"):
        load_recipe("quick").replace(train={"warmup_steps": -1})


def test_ce_dice_loss_ignores_pixels_and_is_zero_when_perfect():
    from aspp_edge.data import IGNORE_INDEX
    from aspp_edge.train import make_criterion

    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8))
    perfect = torch.full((2, 4, 8, 8), -30.0).scatter_(1, target.unsqueeze(1), 30.0)
    loss = make_criterion("ce_dice")
    assert loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = perfect.roll(1, dims=1)  # every pixel confidently another class
    assert loss(wrong, target).item() > 50  # cross-entropy ~60 plus Dice ~1
    # ignored pixels change nothing, whatever the logits there
    ignored = target.clone()
    ignored[:, :4] = IGNORE_INDEX
    noisy = perfect.clone()
    noisy[:, :, :4] = torch.randn(2, 4, 4, 8) * 50
    assert loss(noisy, ignored).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match=r"unknown train.loss 'focal'; valid choices: ce, ce_dice"):
        load_recipe("quick").replace(train={"loss": "focal"})


def _weights_digest(checkpoint) -> str:
    return state_dict_sha256(torch.load(checkpoint, weights_only=True)["state_dict"])


def _torch_settings() -> tuple:
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.utils.deterministic.fill_uninitialized_memory)


def test_a_seed_reproduces_the_weights_bit_for_bit_and_the_conditions_are_recorded(tmp_path, quick_recipe, monkeypatch):
    """Same seed and thread count: identical weights (the default model is deterministic on CPU under
    torch's deterministic algorithms); another seed differs; the checkpoint records threads and ISA;
    torch's own settings are restored after training. Training leaves new tensors unfilled (a NaN
    fill costs time and changes nothing): with the fill on, the weights are the same bits, so no
    kernel reads memory it did not write."""
    short = quick_recipe.replace(train={"epochs": 1, "threads": 1}, data={"train_size": 32, "val_size": 8, "resolution": 32})
    before = _torch_settings()
    a, b = train(short, tmp_path / "a", progress=False), train(short, tmp_path / "b", progress=False)
    other = train(short.replace(train={"seed": 1}), tmp_path / "c", progress=False)
    assert _torch_settings() == before
    assert _weights_digest(a.checkpoint) == _weights_digest(b.checkpoint) != _weights_digest(other.checkpoint)
    module = importlib.import_module("aspp_edge.train")
    plain = module.deterministic

    @contextlib.contextmanager
    def filling(threads: int):
        with plain(threads):
            assert torch.utils.deterministic.fill_uninitialized_memory is False
            torch.utils.deterministic.fill_uninitialized_memory = True
            yield

    monkeypatch.setattr(module, "deterministic", filling)
    assert _weights_digest(train(short, tmp_path / "filled", progress=False).checkpoint) == _weights_digest(a.checkpoint)
    record = torch.load(a.checkpoint, weights_only=True)["determinism"]
    assert record["threads"] == 1 and record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["torch"] == torch.__version__ and record["device"] == "cpu"
    with pytest.raises(ConfigError, match="train.threads -1 must be >= 0"):
        quick_recipe.replace(train={"threads": -1})


def _kernels_seen(env_extra: dict[str, str], code: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    proc = subprocess.run([sys.executable, "-c", code], env={**env, **env_extra}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.skipif(not kernels._has_avx2(), reason="pins only x86-64 CPUs with AVX2")
def test_importing_aspp_edge_pins_torchs_kernels_unless_the_user_chose():
    """torch's ATen and oneDNN kernels are capped at AVX2 on import (before torch's first op, even when
    torch was imported first), so a seed trains the same weights on AVX2 and AVX-512 machines; a
    value the user set, or ASPP_EDGE_NATIVE_KERNELS=1, wins."""
    code = ("import os, torch, aspp_edge; torch.ones(4).sum(); "
            "print(os.environ.get('ATEN_CPU_CAPABILITY'), os.environ.get('ONEDNN_MAX_CPU_ISA'), torch.backends.cpu.get_cpu_capability())")
    assert _kernels_seen({}, code) == ["avx2", "AVX2", "AVX2"]
    assert _kernels_seen({"ATEN_CPU_CAPABILITY": "default"}, code) == ["default", "AVX2", "DEFAULT"]
    assert _kernels_seen({"DNNL_MAX_CPU_ISA": "SSE41"}, code) == ["avx2", "None", "AVX2"]  # oneDNN's older name counts
    native = _kernels_seen({"ASPP_EDGE_NATIVE_KERNELS": "1"}, code)
    assert native[:2] == ["None", "None"] and native[2] in ("AVX2", "AVX512")
