"""Quantization-aware training: export -> prepare_qat_pt2e -> fine-tune -> (convert is the caller's).

From the float model: fake-quant ranges are first initialised on the calibration set, then the
program is fine-tuned with a small learning rate. After `freeze_bn_step` optimizer steps the BN
nodes stop updating their running statistics (the graph's batch_norm nodes switch to inference),
and after `freeze_observer_step` the fake-quant ranges stop moving (`disable_observer`); unset,
both scale with `steps` (`QATConfig.bn_freeze_at`, `observer_freeze_at`).
With `distill` > 0 part of the loss is the KL divergence from the float model's per-pixel class
distribution: the int8 model is pulled towards the reference it is measured against, and its
dropout stays off (the teacher's is off too).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.fx import GraphModule
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchao.quantization.pt2e import disable_observer, move_exported_model_to_eval, move_exported_model_to_train
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

from ..config import QATConfig
from ..console import progress_bar
from ..data import IGNORE_INDEX
from ..distributed import init_distributed, sync_and_hash
from ..metrics import confusion_matrix, mean_iou
from .ptq import export_dynamic_batch
from .quantizers import BN_TRAINING_TARGETS, build_quantizer, check_layer_names
from .rewrites import integer_friendly

BN_TRAINING_ARG = 5  # `training` is the sixth argument of every BN_TRAINING_TARGETS overload
DROPOUT_TARGETS = {torch.ops.aten.dropout.default, torch.ops.aten.dropout_.default}
DROPOUT_TRAIN_ARG = 2


def _switch_off(prepared: GraphModule, targets: set, index: int) -> int:
    """Set the boolean argument `index` of every `targets` node that has it on to False; returns the count."""
    count = 0
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target in targets and node.args[index]:
            node.args = (*node.args[:index], False, *node.args[index + 1:])
            count += 1
    prepared.recompile()
    return count


def freeze_bn_stats(prepared: GraphModule) -> int:
    """Make every batch_norm node use (and stop updating) its running statistics; returns the count."""
    return _switch_off(prepared, BN_TRAINING_TARGETS, BN_TRAINING_ARG)


def hold_dropout(prepared: GraphModule) -> int:
    """Make every dropout node the identity it is at inference; returns the count."""
    return _switch_off(prepared, DROPOUT_TARGETS, DROPOUT_TRAIN_ARG)


def qat(
    model: nn.Module,
    config: QATConfig,
    train_set: Dataset,
    batches: list[torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    float_layers: tuple[str, ...] | list[str] | None = None,
) -> GraphModule:
    """The QAT-trained prepared program of `model` (fake-quant modules in place, eval mode).

    `float_layers` (default: the config's `keep_float` list) stay float and train as float layers.

    Under torchrun every rank trains on its own samples as DDP; at the end every rank holds rank
    0's buffers and the per-rank weight hashes are in `prepared.meta["rank_weight_sha256"]`.
    """
    ctx, device = init_distributed(torch.device(device))
    torch.manual_seed(config.seed)
    teacher = copy.deepcopy(model).eval().to(device) if config.distill > 0 else None
    model = copy.deepcopy(model).train()
    exported = export_dynamic_batch(model, batches[0]).module()
    integer_friendly(exported)
    float_nodes = check_layer_names(exported, config.float_layers if float_layers is None else float_layers)
    prepared = prepare_qat_pt2e(exported, build_quantizer(qat=True, observer=config.observer, per_channel=config.per_channel,
                                                          float_nodes=float_nodes))
    prepared.to(device)

    # Initialise the fake-quant ranges on the calibration set with the BN statistics held.
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for batch in batches:
            prepared(batch.to(device))
    move_exported_model_to_train(prepared)
    if config.distill > 0:
        # The target is the teacher in inference mode: a student that drops activations would
        # learn to fit the teacher through the noise and drift from it once dropout is off.
        hold_dropout(prepared)

    loader = DataLoader(
        train_set, batch_size=config.batch_size, drop_last=True,
        sampler=RandomSampler(train_set, replacement=True, num_samples=config.steps * config.batch_size,
                              generator=torch.Generator().manual_seed(config.seed + 1000 * ctx.rank)),
    )
    net = nn.parallel.DistributedDataParallel(prepared) if ctx.world > 1 else prepared
    optimizer = torch.optim.AdamW(prepared.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    num_classes = getattr(train_set, "num_classes", None)
    cm = None
    bar = progress_bar(itertools.islice(loader, config.steps), total=config.steps, desc="qat", disable=not (progress and ctx.main), leave=False)
    for step, (images, masks) in enumerate(bar):
        if step == config.bn_freeze_at:
            freeze_bn_stats(prepared)
        if step == config.observer_freeze_at:
            prepared.apply(disable_observer)
        images, masks = images.to(device), masks.to(device)
        logits = net(images)
        loss = criterion(logits, masks) if config.distill < 1 else logits.new_zeros(())
        if teacher is not None:
            with torch.no_grad():
                target = teacher(images).log_softmax(1)
            kl = nn.functional.kl_div(logits.log_softmax(1), target, reduction="none", log_target=True).sum(1).mean()
            loss = (1 - config.distill) * loss + config.distill * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if num_classes:
            batch_cm = confusion_matrix(logits.detach().argmax(1), masks, num_classes)
            cm = batch_cm if cm is None else cm + batch_cm
            bar.set_postfix(loss=f"{loss.item():.3f}", miou=f"{mean_iou(cm.cpu()):.3f}")
    if config.bn_freeze_at >= config.steps:
        freeze_bn_stats(prepared)
    move_exported_model_to_eval(prepared)
    prepared.meta["rank_weight_sha256"] = sync_and_hash(prepared, ctx)
    return prepared.cpu()
