"""Quantization-aware training: export -> prepare_qat_pt2e -> fine-tune -> (convert is the caller's).

From the float model: fake-quant ranges are first initialised on the calibration set, then the
program is fine-tuned with a small learning rate. After `freeze_bn_step` optimizer steps the BN
nodes stop updating their running statistics (the graph's batch_norm nodes switch to inference),
and after `freeze_observer_step` the fake-quant ranges stop moving (`disable_observer`); unset,
both scale with `steps` (`QATConfig.bn_freeze_at`, `observer_freeze_at`).
The weights' ranges are held where PTQ puts them or learned from there (`weight_ranges`, whose
`auto` learns per-tensor ranges; `quantizers.LearnedRangeFakeQuantize`).
With `distill` > 0 part of the loss is the KL divergence from the float model's per-pixel class
distribution: the int8 model is pulled towards the reference it is measured against, and its
dropout stays off (the teacher's is off too).

The program is measured against the float model `checks` times while it trains (and once before,
at step 0, where it is the calibrated program PTQ would make with the same observer): the mean
per-pixel KL divergence from the float model's class distribution (the distillation loss), logits
SQNR, argmax agreement and `class_miou`, the mIoU of the program's argmax against the float model's
classes, on the calibration images (a split of their own on synthetic and folder data with a
`calib` list; drawn from train on the named datasets). With `select: best` (the default) the
program returned is the check with the highest `class_miou` among those whose gain over step 0 is
clear: the lower end of its paired-bootstrap interval (the calibration images resampled; one-sided,
`confidence` shared among the checks) above 0. When no check is clear, QAT returns step 0 as PTQ
builds it (the same observer, images and layers), so its artifacts are PTQ's bit for bit: QAT never
ships a program it cannot show to be closer to the float model than where it started. `select:
last` returns the last step's.
(Why classes, not KL: on the quick ablation's seven heads QAT lowered the KL by 10-30% while its
agreement with the float model's classes fell, and the val mIoU followed the classes (issue 37).
Why per-class: a per-tensor model that predicts background nearly everywhere gains its other
classes back with little change in overall agreement. SQNR is no criterion far from the float
model: a per-tensor MobileNetV2 recovered 16 points of mIoU while its logits SQNR stayed near 5 dB.)
`prepared.meta["qat_selection"]` holds the chosen step, every
check and, when step 0 was kept, `program: ptq`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchao.quantization.pt2e import disable_fake_quant, disable_observer, enable_fake_quant
from torchao.quantization.pt2e.export_utils import _EXPORTED_TRAINING_ATTR
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

from ..config import PTQConfig, QATConfig
from ..console import progress_bar
from ..data import IGNORE_INDEX
from ..distributed import broadcast_flag, init_distributed, sync_and_hash
from ..metrics import confusion_matrix, mean_iou, paired_miou_difference, sqnr_db
from .ptq import export_dynamic_batch, ptq
from .quantizers import BN_TRAINING_TARGETS, LearnedRangeFakeQuantize, build_quantizer, check_layer_names
from .rewrites import integer_friendly

BN_TRAINING_ARG = 5  # `training` is the sixth argument of every BN_TRAINING_TARGETS overload
DROPOUT_TARGETS = {torch.ops.aten.dropout.default, torch.ops.aten.dropout_.default}
DROPOUT_TRAIN_ARG = 2


def _switch(prepared: GraphModule, targets: set, index: int, value: bool) -> int:
    """Set the boolean argument `index` of every `targets` node to `value`; returns how many changed."""
    count = 0
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target in targets and bool(node.args[index]) != value:
            node.args = (*node.args[:index], value, *node.args[index + 1:])
            count += 1
    prepared.recompile()
    return count


def freeze_bn_stats(prepared: GraphModule) -> int:
    """Make every batch_norm node use (and stop updating) its running statistics; returns the count."""
    return _switch(prepared, BN_TRAINING_TARGETS, BN_TRAINING_ARG, False)


def hold_dropout(prepared: GraphModule) -> int:
    """Make every dropout node the identity it is at inference; returns the count."""
    return _switch(prepared, DROPOUT_TARGETS, DROPOUT_TRAIN_ARG, False)


BN_MOMENTUM_ARG, BN_EPS_ARG = 6, 7  # the literals after `training` in every BN_TRAINING_TARGETS overload


TEMPLATE_BN_EPS = 1e-5  # the eps torchao's QAT conv + BN templates are traced with (torch's default)


def match_template_eps(model: nn.Module) -> int:
    """Give every BN of `model` (in place) eps 1e-5 and the running variance that keeps its
    inference function: (x - mean) / sqrt(var + eps) is unchanged when var + eps is.

    convert_pt2e folds each QAT conv + BN after re-matching it against a template whose eps is 1e-5
    and reads the eps back from the rewritten node, so a BN with another eps (MobileNetV3: 1e-3)
    is folded with the wrong one: the converted depthwise weights were off by up to 34% of their
    largest value. Returns how many BN layers changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None and module.eps != TEMPLATE_BN_EPS:
            with torch.no_grad():
                module.running_var += module.eps - TEMPLATE_BN_EPS
            module.eps = TEMPLATE_BN_EPS
            changed += 1
    return changed


def bn_literals(program: GraphModule) -> dict[str, tuple[float, float]]:
    """Running-variance attribute -> (momentum, eps) of each batch_norm node of an exported program."""
    out = {}
    for node in program.graph.nodes:
        var = node.args[4] if node.op == "call_function" and node.target in BN_TRAINING_TARGETS else None
        if isinstance(var, Node) and var.op == "get_attr":
            out[var.target] = (node.args[BN_MOMENTUM_ARG], node.args[BN_EPS_ARG])
    return out


def restore_bn_literals(prepared: GraphModule, literals: dict[str, tuple[float, float]]) -> int:
    """Give each BN of a `prepare_qat_pt2e` program back the momentum and eps of the model's BN.

    prepare_qat_pt2e rewrites every conv + BN into its QAT pattern from a template whose literals
    are torch's defaults (momentum 0.1, eps 1e-5), both in the batch_norm node and in the
    `sqrt(running_var + eps)` that scales the weights. After `match_template_eps` the eps already
    agree, so what this restores is the momentum (MobileNetV3: 0.01, not 0.1), which sets how fast
    BN statistics move while BN trains; the eps is restored too for a BN that module pass cannot
    see. Matched by the running-variance buffer each node reads; returns how many nodes changed."""
    changed = 0
    for node in prepared.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in BN_TRAINING_TARGETS and isinstance(node.args[4], Node) and node.args[4].target in literals:
            momentum, eps = literals[node.args[4].target]
            if (node.args[BN_MOMENTUM_ARG], node.args[BN_EPS_ARG]) != (momentum, eps):
                node.args = (*node.args[:BN_MOMENTUM_ARG], momentum, eps, *node.args[BN_EPS_ARG + 1:])
                changed += 1
        elif (node.target == torch.ops.aten.add.Tensor and isinstance(node.args[0], Node) and node.args[0].op == "get_attr"
              and node.args[0].target in literals and isinstance(node.args[1], float)):
            eps = literals[node.args[0].target][1]
            if node.args[1] != eps:
                node.args = (node.args[0], eps, *node.args[2:])
                changed += 1
    prepared.recompile()
    return changed


_CONV_KINDS = {nn.functional.conv1d: torch.ops.aten.conv1d, nn.functional.conv2d: torch.ops.aten.conv2d,
               nn.functional.conv_transpose1d: torch.ops.aten.conv_transpose1d,
               nn.functional.conv_transpose2d: torch.ops.aten.conv_transpose2d}


def _skipping_absent_convs(helper: Callable) -> Callable:
    """`helper(m, conv_fn, ...)` of torchao's qat_utils, returning `m` untouched when `m` has no op of
    `conv_fn`'s kind (a pattern anchored on a conv cannot match a graph without one). Graphs with a
    generic `aten.convolution`, or conv functions not listed here, go through unchanged."""

    def run(m: GraphModule, conv_fn: Callable, *args, **kwargs):
        packets = {getattr(n.target, "overloadpacket", None) for n in m.graph.nodes if n.op == "call_function"}
        wanted = _CONV_KINDS.get(conv_fn)
        if wanted is not None and wanted not in packets and torch.ops.aten.convolution not in packets:
            return m
        return helper(m, conv_fn, *args, **kwargs)

    return run


@contextlib.contextmanager
def present_conv_kinds_only():
    """While open, torchao's QAT conv + BN fuse (prepare_qat_pt2e) and fold (convert_pt2e) try only
    the conv kinds the graph has. Each kind costs them a dozen pattern traces through torch.export
    (conv1d, conv2d, conv_transpose1d and conv_transpose2d are all tried): on the default model's QAT
    convert, 120 traces and about 20 s of its 30, for a 2-D model with three kinds absent."""
    from torchao.quantization.pt2e import qat_utils

    saved = qat_utils._fuse_conv_bn_qat_helper, qat_utils._fold_conv_bn_qat_helper  # noqa: SLF001
    qat_utils._fuse_conv_bn_qat_helper = _skipping_absent_convs(saved[0])  # noqa: SLF001
    qat_utils._fold_conv_bn_qat_helper = _skipping_absent_convs(saved[1])  # noqa: SLF001
    try:
        yield
    finally:
        qat_utils._fuse_conv_bn_qat_helper, qat_utils._fold_conv_bn_qat_helper = saved  # noqa: SLF001


def set_mode(prepared: GraphModule, *, bn_training: bool, dropout: bool) -> None:
    """Switch an exported program's batch_norm and dropout nodes between training and inference by
    their `training` argument alone, keeping each node's own eps, momentum and p.

    torchao's `move_exported_model_to_eval` / `_to_train` instead rebuild those nodes from a pattern
    with torch's default literals (eps 1e-5, momentum 0.1, dropout p 0.5; its source says custom
    values are not supported yet). MobileNetV3's BN has eps 1e-3 and momentum 0.01: after that
    switch its exported program sits 29 dB from the float model before any quantization, and in
    training its BN statistics move ten times faster than they were trained to (issue 37). The
    program is also marked as switched, so torchao's own switches (and `allow_exported_model_train_eval`'s
    `.eval()`) leave it alone."""
    _switch(prepared, BN_TRAINING_TARGETS, BN_TRAINING_ARG, bn_training)
    _switch(prepared, DROPOUT_TARGETS, DROPOUT_TRAIN_ARG, dropout)
    setattr(prepared, _EXPORTED_TRAINING_ATTR, bn_training or dropout)


def inference_copy(prepared: GraphModule) -> GraphModule:
    """A copy of a QAT program as it would be converted now: BN on its running statistics, dropout
    off, observers off (running it moves nothing), fake quant on."""
    program = copy.deepcopy(prepared)
    set_mode(program, bn_training=False, dropout=False)
    program.apply(disable_observer)
    return program


def check_steps(steps: int, checks: int) -> list[int]:
    """The optimizer steps after which the program is measured: 0, then `checks` evenly spaced, ending at `steps`."""
    return sorted({0, *(round(i * steps / checks) for i in range(1, checks + 1))})


def pixel_kl(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over pixels of KL(reference || logits) between the per-pixel class distributions: the
    distillation loss, measured where it is not trained."""
    return float(nn.functional.kl_div(logits.log_softmax(1), reference.log_softmax(1), reduction="none", log_target=True).sum(1).mean())


def _prepare(model: nn.Module, config: QATConfig, batches: list[torch.Tensor], float_layers, device: torch.device) -> GraphModule:
    """The QAT program of `model` with its ranges initialised as PTQ calibrates them: BN statistics
    held and fake quant off, so every observer sees the float activations and step 0 is PTQ's
    program by construction. (The ranges up to 20% wider than PTQ's seen on a MobileNetV3 came from
    torchao's BN literals, which `match_template_eps`/`restore_bn_literals` keep as the model has
    them, not from the rounding noise: with fake quant on they moved by under 0.1 dB; issue 37.)"""
    model = copy.deepcopy(model).train()
    match_template_eps(model)
    exported = export_dynamic_batch(model, batches[0]).module()
    integer_friendly(exported)
    float_nodes = check_layer_names(exported, config.float_layers if float_layers is None else float_layers)
    literals = bn_literals(exported)
    with present_conv_kinds_only():
        prepared = prepare_qat_pt2e(exported, build_quantizer(qat=True, observer=config.observer, per_channel=config.per_channel,
                                                              float_nodes=float_nodes,
                                                              learned_weight_ranges=config.learns_weight_ranges))
    restore_bn_literals(prepared, literals)
    prepared.to(device)
    set_mode(prepared, bn_training=False, dropout=False)
    prepared.apply(disable_fake_quant)
    with torch.no_grad():
        for batch in batches:
            prepared(batch.to(device))
    prepared.apply(enable_fake_quant)
    return prepared


class _Selection:
    """The checks of a QAT run: the inference copy of the program at each checked step, measured
    against the float model's logits on the calibration images; keeps the check whose classes match
    the float model's best where its gain over step 0 is clear (or the last). Rank 0 decides, so
    every rank keeps the same step."""

    def __init__(self, config: QATConfig, ref: torch.Tensor, batches: list[torch.Tensor], device: torch.device, ctx,
                 on_check: Callable[[int, GraphModule], None] | None, trained_checks: int | None = None) -> None:
        self.config, self.ref, self.batches, self.device, self.ctx, self.on_check = config, ref, batches, device, ctx, on_check
        self.trained_checks = trained_checks or config.checks  # checks after step 0: the chances a lucky one has
        self.trace: list[dict[str, float]] = []
        self.best: dict = {}
        self.start: np.ndarray | None = None  # step 0's classes

    def check(self, prepared: GraphModule, step: int) -> None:
        self.measure(inference_copy(prepared), step)

    def measure(self, program: Callable[[torch.Tensor], torch.Tensor], step: int) -> None:
        """Trace `program` (inference mode) as the check of `step`, and keep it if it replaces the best."""
        with torch.no_grad():
            out = torch.cat([program(batch.to(self.device)) for batch in self.batches])
        ref, classes = self.ref, self.ref.shape[1]
        pred, target = out.argmax(1), ref.argmax(1)
        labels, truth = pred.cpu().numpy(), target.cpu().numpy()
        row = {"step": step, "kl": pixel_kl(out, ref), "sqnr_db": sqnr_db(ref, out), "agreement": float((labels == truth).mean()),
               "class_miou": 100 * mean_iou(confusion_matrix(pred, target, classes))}
        if self.start is None:
            self.start = labels
        else:  # one-sided lower end at `level`: the two-sided interval at 2 * level - 1
            gain = paired_miou_difference(labels, self.start, truth, classes, resamples=4000, level=2 * self.level - 1)
            row["gain_low"] = gain["interval_points"][0]
        self.trace.append(row)
        if self.on_check is not None:
            self.on_check(step, program)
        if broadcast_flag(self.replaces_best(row), self.ctx):
            self.best.update(row=row, program=program)

    @property
    def level(self) -> float:
        """One-sided level of each check's gain interval: `confidence` shared among the checks (Bonferroni),
        so that `checks` chances at a lucky resample pass no more often than one would."""
        return 1 - (1 - self.config.confidence) / self.trained_checks

    def replaces_best(self, row: dict[str, float]) -> bool:
        """Whether the check just traced (`row`, the last of `trace`) becomes the kept one: the first
        always; with `last` every later one; with `best` the one whose classes match the float
        model's best (`class_miou`: the mIoU of its argmax against the float model's), among those
        whose gain over step 0 is clear (the lower end of its interval, the calibration images
        resampled, above 0)."""
        if not self.best or self.config.select == "last":
            return True
        return row["gain_low"] > 0 and row["class_miou"] > self.best["row"]["class_miou"]

    def chosen(self) -> tuple[int, GraphModule]:
        """(kept step, its program); the program's meta["qat_selection"] holds the choice and every check."""
        program = self.best["program"]
        set_mode(program, bn_training=False, dropout=False)
        images = sum(b.shape[0] for b in self.batches)
        program.meta["qat_selection"] = {
            "select": self.config.select, **self.best["row"],
            "measured_on": f"{images} calibration images, against the float model (best: the highest mIoU against its classes "
                           f"among the checks whose gain over step 0 is clear at {self.config.confidence:.0%} over the "
                           f"{self.trained_checks} checks)",
            "checks": self.trace,
        }
        return self.best["row"]["step"], program


def _loss(config: QATConfig, logits: torch.Tensor, masks: torch.Tensor, images: torch.Tensor, teacher: nn.Module | None,
          criterion: nn.Module) -> torch.Tensor:
    """Cross-entropy on the labels and/or (`distill`) the KL divergence from the teacher's per-pixel classes."""
    loss = criterion(logits, masks) if config.distill < 1 else logits.new_zeros(())
    if teacher is not None:
        with torch.no_grad():
            target = teacher(images).log_softmax(1)
        kl = nn.functional.kl_div(logits.log_softmax(1), target, reduction="none", log_target=True).sum(1).mean()
        loss = (1 - config.distill) * loss + config.distill * kl
    return loss


def qat(
    model: nn.Module,
    config: QATConfig,
    train_set: Dataset,
    batches: list[torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    float_layers: tuple[str, ...] | list[str] | None = None,
    on_check: Callable[[int, GraphModule], None] | None = None,
    check_every: int | None = None,
) -> GraphModule:
    """The QAT-trained prepared program of `model` (fake-quant modules in place, eval mode).

    `float_layers` (default: the config's `keep_float` list) stay float and train as float layers.
    `on_check(step, program)` sees the inference copy measured at each check (`check_every` steps
    instead of the config's `checks` evenly spaced), e.g. to trace it (benchmarks/qat_probe.py).

    Under torchrun every rank trains on its own samples as DDP; rank 0 decides which check is kept;
    at the end every rank holds rank 0's buffers and the per-rank weight hashes are in
    `prepared.meta["rank_weight_sha256"]`.
    """
    ctx, device = init_distributed(torch.device(device))
    torch.manual_seed(config.seed)
    reference = copy.deepcopy(model).eval().to(device)
    teacher = reference if config.distill > 0 else None
    prepared = _prepare(model, config, batches, float_layers, device)
    with torch.no_grad():
        ref = torch.cat([reference(batch.to(device)) for batch in batches])
    checks = set(range(0, config.steps + 1, check_every)) | {config.steps} if check_every else set(check_steps(config.steps, config.checks))
    selection = _Selection(config, ref, batches, device, ctx, on_check, trained_checks=len(checks - {0}))
    selection.check(prepared, 0)
    # With distillation the target is the teacher in inference mode: a student that drops
    # activations would learn to fit the teacher through the noise and drift from it once dropout
    # is off. BN trains on batch statistics until `bn_freeze_at` (the first step's check below).
    set_mode(prepared, bn_training=True, dropout=config.distill == 0)

    loader = DataLoader(
        train_set, batch_size=config.batch_size, drop_last=True,
        sampler=RandomSampler(train_set, replacement=True, num_samples=config.steps * config.batch_size,
                              generator=torch.Generator().manual_seed(config.seed + 1000 * ctx.rank)),
    )
    ranges = [m for m in prepared.modules() if isinstance(m, LearnedRangeFakeQuantize)]
    for fake_quant in ranges:
        fake_quant.start_learning()
    net = nn.parallel.DistributedDataParallel(prepared) if ctx.world > 1 else prepared
    range_params = {id(m.log_scale) for m in ranges}
    groups = [{"params": [p for p in prepared.parameters() if id(p) not in range_params]}]
    if ranges:  # the log-scales: their own rate, and no decay (it would shrink every range)
        groups.append({"params": [m.log_scale for m in ranges], "lr": config.range_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    num_classes = getattr(train_set, "num_classes", None)
    cm = None
    bar = progress_bar(itertools.islice(loader, config.steps), total=config.steps, desc="qat", disable=not (progress and ctx.main),
                       leave=False)
    for step, (images, masks) in enumerate(bar):
        if step == config.bn_freeze_at:
            freeze_bn_stats(prepared)
        if step == config.observer_freeze_at:
            prepared.apply(disable_observer)
        images, masks = images.to(device), masks.to(device)
        logits = net(images)
        loss = _loss(config, logits, masks, images, teacher, criterion)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if num_classes:
            batch_cm = confusion_matrix(logits.detach().argmax(1), masks, num_classes)
            cm = batch_cm if cm is None else cm + batch_cm
            bar.set_postfix(loss=f"{loss.item():.3f}", miou=f"{mean_iou(cm.cpu()):.3f}")
        if step + 1 in checks:
            selection.check(prepared, step + 1)
    step, chosen = selection.chosen()
    if step == 0:  # training did not clearly beat its start: return the start as PTQ builds it, bit for bit
        meta = {**chosen.meta["qat_selection"], "program": "ptq"}
        chosen = ptq(model, PTQConfig(observer=config.observer, per_channel=config.per_channel), batches,
                     float_layers=config.float_layers if float_layers is None else float_layers)
        chosen.meta["qat_selection"] = meta
    chosen.meta["rank_weight_sha256"] = sync_and_hash(chosen, ctx)
    return chosen.cpu()
