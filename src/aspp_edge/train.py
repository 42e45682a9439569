"""Float training: poly LR (optionally after a linear warm-up), cross-entropy with ignore index
(optionally plus soft Dice), per-epoch val mIoU, checkpoints.

Runs as one process, or under `torchrun --nproc-per-node N` as DDP with no code change (gloo on
CPU, NCCL on CUDA). Rank 0 writes the checkpoints and shows the progress bar; validation is
sharded across ranks and its confusion matrices are summed.

Reproducible for a given seed wherever torch allows: the seed fixes the initial weights, the data
order and each epoch's augmentation; training runs with torch's deterministic algorithms (CUDA ops
without one warn, into the run's log) and, where the recipe says, a fixed thread count. What torch
cannot make equal by itself is the arithmetic of different machines: the weights after one epoch
of the default model differ bit-wise between 1 and 2 threads, and between oneDNN's AVX-512 and
AVX2 kernels on the same CPU, and training amplifies such last-bit differences into a different
model. So the recipe fixes the thread count (`train.threads`) and `aspp_edge.kernels` pins torch's
CPU kernels to AVX2 on every x86-64 machine that has it. The checkpoint records what it was trained
with (`determinism`); the same seed, threads, kernels' ISA and versions give the same weights.

Files in `out_dir`:
    last.pt   resume state (model, optimizer, scheduler, epoch, history, recipe)
    float.pt  the trained float model: state dict, recipe, val mIoU, per-rank weight hashes
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .checkpoint import load_state, read_checkpoint, save_checkpoint
from .config import Recipe, recipe_differences
from .console import progress_bar, progress_line
from .data import IGNORE_INDEX, build_dataset
from .errors import CheckpointError, ConfigError
from .metrics import evaluate_miou
from .distributed import DistContext, finish_distributed, init_distributed, sync_and_hash
from .models import model_from_recipe, model_label

LAST, FINAL = "last.pt", "float.pt"


@dataclass
class TrainResult:
    checkpoint: Path
    miou: float
    seconds: float
    device: str
    world_size: int
    history: list[dict] = field(default_factory=list)


@contextlib.contextmanager
def deterministic(threads: int):
    """Deterministic algorithms and `threads` CPU threads (0: leave torch's count) while training;
    restores torch's settings after.

    Deterministic mode also fills every new tensor with NaN (`fill_uninitialized_memory`), a check
    for kernels that read memory they did not write; none of ours does (the default recipe's weights
    hash the same with it off), and the fills were 12% of a training step's CPU time (profiled:
    about 2,600 `aten::fill_` calls per step), so it is off while training."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.utils.deterministic.fill_uninitialized_memory)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic workspace (read at its first use)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark = saved[3]
        torch.utils.deterministic.fill_uninitialized_memory = saved[4]


def determinism_record(device: torch.device) -> dict:
    """What the weights of a seeded run depend on besides the recipe: threads, kernels' ISA, versions."""
    return {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
            "torch": str(torch.__version__), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def poly_lambda(total_steps: int, power: float, warmup_steps: int = 0):
    """LR factor at `step`: linear from 1/warmup_steps to 1 over the warm-up, then poly decay to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps)) ** power
    return factor


class CEDiceLoss(nn.Module):
    """Cross-entropy plus soft Dice (1 - mean over classes of 2|P∩T| / (|P| + |T|), over the whole
    batch, ignored pixels left out). Dice weighs every class's region equally whatever its pixel
    count, where cross-entropy is dominated by the background and the largest objects."""

    def __init__(self, ignore_index: int, smooth: float = 1.0) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_index)
        self.ignore_index, self.smooth = ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.float().softmax(1) * valid
        onehot = nn.functional.one_hot(target.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
        dims = (0, 2, 3)
        dice = (2 * (probs * onehot).sum(dims) + self.smooth) / (probs.sum(dims) + onehot.sum(dims) + self.smooth)
        return self.ce(logits, target) + (1 - dice.mean())


def make_criterion(loss: str) -> nn.Module:
    return CEDiceLoss(IGNORE_INDEX) if loss == "ce_dice" else nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)


def _check_resume(saved: dict, recipe: Recipe, path: Path) -> None:
    want = recipe.to_dict()
    keys = [f"{section}.{k}" for section in ("model", "data", "train") for k in want[section] if f"{section}.{k}" != "train.epochs"]
    diffs = recipe_differences(saved, recipe, keys)
    if diffs:
        raise CheckpointError(f"cannot resume from {str(path)!r}: its recipe differs: " + "; ".join(diffs))


def train(
    recipe: Recipe, out_dir: str | Path, *, resume: bool = False, device: torch.device | str | None = None, progress: bool = True
) -> TrainResult:
    """Train the recipe's float model into `out_dir`; returns the final checkpoint and val mIoU."""
    with deterministic(recipe.train.threads):
        return _train(recipe, Path(out_dir), resume=resume, device=device, progress=progress)


def _loader(train_set, cfg, ctx: DistContext) -> tuple[DataLoader, RandomSampler | DistributedSampler]:
    """The train loader: a seeded shuffle (one shard per rank under DDP), whole batches only."""
    if len(train_set) < cfg.batch_size * ctx.world:
        raise ConfigError(
            f"train split has {len(train_set)} samples, fewer than train.batch_size {cfg.batch_size} x {ctx.world} ranks"
        )
    if ctx.world > 1:
        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(cfg.seed))
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
    )
    return loader, sampler


def _optimizer(model: nn.Module, cfg, total_steps: int):
    """(optimizer, scheduler): SGD or AdamW, poly decay over `total_steps` after the warm-up."""
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(total_steps, cfg.poly_power, cfg.warmup_steps))
    return optimizer, scheduler


def _resume(last: Path, recipe: Recipe, model: nn.Module, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Model, optimizer and scheduler state from `last` (same recipe but epochs); (epochs done, history)."""
    if not last.is_file():
        raise CheckpointError(f"--resume: no {LAST} in {str(last.parent)!r} to resume from")
    state = read_checkpoint(last)
    _check_resume(state["recipe"], recipe, last)
    load_state(model, state["state_dict"], repr(str(last)))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), list(state["history"])


def _epoch(net: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer, scheduler, dev: torch.device, *, desc: str,
           show: bool) -> float:
    """One pass over the loader (NHWC inputs); the mean loss."""
    net.train()
    bar = progress_bar(loader, desc=desc, disable=not show, leave=False)
    loss_sum, steps = 0.0, 0
    for images, masks in bar:
        images = images.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        masks = masks.to(dev, non_blocking=True)
        loss = criterion(net(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum, steps = loss_sum + loss.item(), steps + 1
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
    return loss_sum / max(1, steps)


def _train(recipe: Recipe, out: Path, *, resume: bool, device: torch.device | str | None, progress: bool) -> TrainResult:
    ctx, dev = init_distributed(torch.device(device) if device is not None else None)
    cfg = recipe.train
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    model = model_from_recipe(recipe).to(dev)
    train_set, val_set = build_dataset(recipe, "train"), build_dataset(recipe, "val")
    loader, sampler = _loader(train_set, cfg, ctx)
    optimizer, scheduler = _optimizer(model, cfg, cfg.epochs * len(loader))
    criterion = make_criterion(cfg.loss)
    start_epoch, history = _resume(out / LAST, recipe, model, optimizer, scheduler) if resume else (0, [])
    # NHWC for the convolutions: MobileNets' depthwise convs run about twice as fast this way on
    # CPU (measured on the default recipe); the saved weights go back to the standard layout.
    model.to(memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
    started = time.perf_counter()
    miou = history[-1]["val_miou"] if history else float("nan")
    if cfg.epochs == 0:  # the model's own weights as they are: measured, not trained
        miou = evaluate_miou(model, val_set, dev, cfg.batch_size, ctx)
    for epoch in range(start_epoch, cfg.epochs):
        # Different augmentation on each rank, reproducible per (seed, rank, epoch).
        torch.manual_seed(cfg.seed * 1000 + epoch * 16 + ctx.rank)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        loss = _epoch(net, loader, criterion, optimizer, scheduler, dev, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                      show=progress and ctx.main)
        miou = evaluate_miou(model, val_set, dev, cfg.batch_size, ctx)
        history.append({"epoch": epoch + 1, "loss": loss, "val_miou": miou})
        if progress and ctx.main:
            progress_line(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}  val mIoU {miou:.4f}")
        if ctx.main:
            save_checkpoint(out / LAST, {
                "state_dict": model.state_dict(), "recipe": recipe.to_dict(), "epoch": epoch + 1, "history": history,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            })
    seconds = time.perf_counter() - started
    model.to(memory_format=torch.contiguous_format)

    rank_hashes = sync_and_hash(model, ctx)
    final = out / FINAL
    if ctx.main:
        save_checkpoint(final, {
            "state_dict": model.state_dict(), "recipe": recipe.to_dict(), "val_miou": miou, "history": history,
            "rank_weight_sha256": rank_hashes, "device": str(dev), "world_size": ctx.world, "train_seconds": seconds,
            "determinism": determinism_record(dev),
        })
    finish_distributed(ctx)
    result = TrainResult(final, miou, seconds, str(dev), ctx.world, history)
    if progress and ctx.main:
        progress_line(f"trained {recipe.name}: {model_label(recipe.model)}, "
                      f"{cfg.epochs} epochs, {seconds:.0f} s on {dev} x{ctx.world} ({torch.get_num_threads()} threads, "
                      f"{torch.backends.cpu.get_cpu_capability()}); val mIoU {miou:.4f} -> {final}")
    return result
