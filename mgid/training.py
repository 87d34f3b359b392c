"""MGID training: the step, the loop, validation, checkpoints, logging, and the ``train.py`` entry point.

One step on a batch of pairs (I1, I2) of static scenes (`train_step`)::

    out1 = net(I1)    # reads the memory items P, updates them to P'
    out2 = net(I2)    # reads P', updates them to P''  (P'' is carried to the next step)
    total, terms = loss(out1, out2, I1, I2)
    Adam step on total

The loop (`Trainer`) feeds batches in an order fixed by ``(seed, epoch)`` (`EpochBatchSampler`),
checks the loss is finite every step, logs to TensorBoard (``OUT/tb``), validates on a held-out
paired set (Y-channel PSNR/SSIM, `mgid.metrics`), saves ``OUT/checkpoints/last.*`` atomically
(`mgid.checkpoint`) and, at the end, writes ``OUT/samples/compare.png`` (rainy | de-rained | clean).
``--resume`` continues a run exactly: the same weights, memory items, optimiser state, RNG states
and the same batches as an uninterrupted run.

Scaling and robustness (``docs/SCALING.md``): under ``torchrun`` the run is data-parallel (DDP,
`mgid.distributed`; ``batch_size`` is the global batch, every rank takes a slice and the memory
update is all-reduced so the items stay identical); ``--precision bf16|fp16`` trains under autocast;
``--compile`` compiles the network. SIGTERM/SIGINT make the loop stop after the current step, write
a checkpoint and exit with code 128 + the signal number (143 / 130, `EXIT_INTERRUPTED`); a SIGKILL at
any moment leaves the last complete checkpoint loadable (`mgid.checkpoint`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm import tqdm

from mgid import distributed as mdist
from mgid import ops
from mgid.bn_recalibration import recalibrate_batchnorm
from mgid.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    set_rng_state,
)
from mgid.config import (
    NAMED_CONFIGS,
    ConfigError,
    OptimConfig,
    TrainConfig,
    add_config_arguments,
    diff,
    overrides_from_args,
    resolve_config,
    to_yaml,
)
from mgid.data import EmbeddedPairedSet, PairedFolder, make_dataset, to_uint8, write_image
from mgid.data.timelapse import HELDOUT_SETS
from mgid.devices import resolve_device
from mgid.evaluation import Scores, net_derain_fn, score_paired_set
from mgid.losses import MGIDLoss
from mgid.models import MGIDNet, MGIDOutput
from mgid.precision import cpu_has_native_bf16, resolve_channels_last, resolve_precision  # noqa: F401  (re-exported)
from mgid.visualize import image_grid, tensor_rows

CHECKPOINT_DIR = "checkpoints"
TB_DIR = "tb"
SAMPLES_DIR = "samples"
COMPARE_FILE = "compare.png"
#: JSON lines of every validation (step and the scores of each held-out set) in OUT.
VALIDATION_LOG = "validation.jsonl"
LAST = "last"
#: Where an --overwrite run clears the previous run's outputs (nothing else in OUT is touched).
RUN_OUTPUTS = (CHECKPOINT_DIR, TB_DIR, SAMPLES_DIR, VALIDATION_LOG)
#: Seed stream of the batch order, kept apart from the data set's per-index streams.
_ORDER_STREAM = 101
#: Epoch of the training data that BatchNorm recalibration draws its batches from (never trained on).
RECALIBRATION_EPOCH = 1_000_000
#: Images shown per TensorBoard grid.
TB_GRID_ROWS = 4
#: Exit code of a run stopped by a signal after writing its checkpoint: 128 + signal number.
EXIT_INTERRUPTED = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; ``step`` and ``terms`` (the non-finite ones) say where."""

    def __init__(self, step: int, terms: dict[str, float], message: str) -> None:
        super().__init__(message)
        self.step = step
        self.terms = terms


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped the run between two steps; a checkpoint of ``step`` was written first."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint} (step {step})" if checkpoint else f"no checkpoint (step {step})"
        super().__init__(f"{name} received: stopped after step {step} and wrote {where}; continue with --resume")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopRequest:
    """SIGTERM/SIGINT handlers that only set a flag, checked by the loop between steps.

    A second signal of the same kind while the flag is set falls back to the default action
    (SIGINT: KeyboardInterrupt; SIGTERM: terminate), so a stuck run can still be stopped.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signum:  # second time: the default action
            signal.signal(signum, self._saved.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()


class _NullWriter:
    """Stands in for TensorBoard's SummaryWriter on ranks other than 0."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class PairForward(nn.Module):
    """Both frames of a step in one forward call (DDP expects one forward per backward)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor) -> tuple[MGIDOutput, MGIDOutput]:
        return self.net(frame1), self.net(frame2)


# --------------------------------------------------------------------------------------------------
# pieces


def seed_everything(seed: int) -> None:
    """Seed python's, NumPy's and torch's global RNGs (the network's initial weights use torch's)."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a random permutation fixed by ``(seed, epoch)``, the last partial batch dropped.

    ``set_epoch(epoch, start)`` selects the epoch and skips its first ``start`` batches, so a
    resumed run sees exactly the batches an uninterrupted run would. The order does not depend on
    any global RNG or on the number of DataLoader workers.

    Distributed: ``batch_size`` is the GLOBAL batch; rank ``rank`` of ``world_size`` yields the
    contiguous slice ``[rank * b, (rank + 1) * b)`` (b = batch_size / world_size) of each global
    batch, so the ranks' slices concatenated in rank order are the single-process batch, and the
    order (hence exact resume) does not depend on the number of processes.
    """

    def __init__(self, length: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if length < batch_size:
            raise ConfigError(f"the training set has {length} pairs, fewer than batch_size {batch_size}: lower "
                              f"--batch_size or add data")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size {world_size})")
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} (the global batch) must be a multiple of the number of "
                              f"processes {world_size}")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    @property
    def per_rank_batch(self) -> int:
        return self.batch_size // self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.length // self.batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the data set's indices used in ``epoch``."""
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, _ORDER_STREAM, epoch])
        return rng.permutation(self.length)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.order(self.epoch)
        per = self.per_rank_batch
        for b in range(self.start, self.batches_per_epoch):
            first = b * self.batch_size + self.rank * per
            yield perm[first:first + per].tolist()


def learning_rate(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate of (0-based) ``step``: a pure function of the step, so resuming needs no scheduler state."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    done, length = step - cfg.warmup_steps, total_steps - cfg.warmup_steps
    progress = min(max(done, 0), length) / max(length, 1)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def nonfinite_error(step: int, terms: dict[str, torch.Tensor], weights: Any, last_good: str) -> NonFiniteLossError:
    """The error for a non-finite loss at ``step``, naming the weighted terms that are NaN/Inf."""
    values = {k: float(v) for k, v in terms.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    # Name the weighted terms first: an unweighted term can be NaN without harm (it is not in the total).
    weighted_bad = [k for k in bad if k != "total" and getattr(weights, k, 0) != 0]
    culprits = weighted_bad or [k for k in bad if k != "total"] or ["total"]
    desc = ", ".join(f"{k} = {bad[k]}" for k in culprits)
    msg = (f"the loss is not finite at step {step}: {desc} (total = {values.get('total')}); training stopped "
           f"before the optimiser step. {last_good} Try a lower --optim.lr or check the data.")
    return NonFiniteLossError(step, {k: bad[k] for k in culprits}, msg)


def _as_float(out: MGIDOutput) -> MGIDOutput:
    """``out`` with every floating tensor in fp32 (the loss is computed in fp32 under mixed precision)."""
    return dataclasses.replace(out, **{
        f.name: getattr(out, f.name).float() for f in dataclasses.fields(out)
        if isinstance(getattr(out, f.name), torch.Tensor) and getattr(out, f.name).is_floating_point()})


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16 on ``device``'s type; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def train_step(net: nn.Module, criterion: MGIDLoss, optimizer: torch.optim.Optimizer, frame1: torch.Tensor,
               frame2: torch.Tensor, *, pair: nn.Module | None = None, precision: str = "fp32",
               scaler: torch.amp.GradScaler | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], MGIDOutput, Callable[[], None]]:
    """Forward both frames of a batch (B, 3, H, W) and compute the loss; the memory items move here.

    Frame 1 reads the items P and updates them to P'; frame 2 reads P' and leaves P''. This is the
    one place the memory changes during training (a distributed run all-reduces the update
    statistics of `mgid.ops.memory_step` in `mgid.models.MemoryModule`, see `mgid.distributed`). ``pair`` (a `PairForward`,
    possibly DDP-wrapped or compiled) runs both frames in one call; default ``net`` twice. Under
    ``precision`` bf16/fp16 the forward runs in autocast and the loss in fp32; ``scaler`` (fp16)
    scales the loss. Returns the total loss, the detached terms, frame 1's output (for image logs)
    and ``apply``, which back-propagates and steps the optimiser: the caller checks the loss for
    finiteness in between.
    """
    device = frame1.device
    with autocast_context(device, precision):
        if pair is not None:
            out1, out2 = pair(frame1, frame2)
        else:
            out1 = net(frame1)
            out2 = net(frame2)
    if precision != "fp32":
        out1, out2 = _as_float(out1), _as_float(out2)
    total, terms = criterion(out1, out2, frame1, frame2)

    def apply() -> None:
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()

    return total, terms, out1, apply


# --------------------------------------------------------------------------------------------------
# validation and samples


#: Mean Y-channel PSNR (dB) / SSIM over ``count`` pairs of the de-rained output and of the rainy input:
#: the evaluations' one result type, `mgid.evaluation.Scores`.
ValidationResult = Scores


def build_paired_sets(cfg: TrainConfig) -> dict[str, Dataset]:
    """The validation pairs by name: ``{"val": val_data}`` (a paired folder), or the embedded held-out
    sets (`mgid.data.timelapse.HELDOUT_SETS`: ``streaks``, ``perspective``, ``heavy``). The first is the
    primary one (progress line, checkpoint summary, comparison picture)."""
    if cfg.val_data is not None:
        paired: Dataset = PairedFolder(cfg.val_data)
        if cfg.val_count is not None and cfg.val_count < len(paired):
            paired = Subset(paired, range(cfg.val_count))
        return {"val": paired}
    return {kind: EmbeddedPairedSet(cfg.val_count, config=cfg.embedded, rain=kind) for kind in HELDOUT_SETS}


def validate(net: MGIDNet, paired: Dataset, device: torch.device) -> ValidationResult:
    """Mean PSNR/SSIM of ``net``'s output and of the rainy input against the clean images of ``paired``
    (`mgid.evaluation.score_paired_set`, the loop of ``mgid evaluate`` and ``mgid heldout``)."""
    return score_paired_set(paired, net_derain_fn(net, device))


def write_comparison(net: MGIDNet, paired: Dataset, device: torch.device, path: Path, rows: int) -> Path:
    """``path``: a grid of ``rows`` held-out images, columns rainy | de-rained | clean.

    Images of a size other than the first one's are skipped (a grid needs one size).
    """
    grid_rows: list[list[np.ndarray]] = []
    derain = net_derain_fn(net, device)
    for i in range(len(paired)):
        if len(grid_rows) == rows:
            break
        item = paired[i]
        rainy, clean = to_uint8(item["rainy"]), to_uint8(item["clean"])
        if grid_rows and rainy.shape != grid_rows[0][0].shape:
            continue
        grid_rows.append([rainy, derain(rainy), clean])
    return write_image(path, image_grid(grid_rows, headers=("rainy", "de-rained", "clean")))


# --------------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """What a run ended with."""

    step: int
    epoch: int
    validation: ValidationResult | None
    checkpoint: Path | None
    samples: Path | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Sets up a run from a `TrainConfig` (fresh, or resumed from ``OUT/checkpoints/last.*``) and runs it.

    Args:
        cfg: the resolved settings.
        resume: continue the run in ``cfg.out`` exactly.
        overwrite: start afresh even though ``cfg.out`` holds a run (clears its checkpoints/, tb/, samples/).
        log: where progress lines go (``tqdm.write`` by default, which keeps the bar intact).
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 log: Callable[[str], None] = tqdm.write) -> None:
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / CHECKPOINT_DIR
        self._check_out(resume, overwrite)
        ops.set_ops_mode(cfg.ops)
        device = resolve_device(cfg.device)
        self.dist = mdist.setup(cfg.dist.backend, device)
        self.device = mdist.rank_device(device, self.dist)
        self.is_main = self.dist.is_main
        if not self.is_main:
            self.log = lambda s: None
        self.ops_path = ops.op_path(self.device)  # raises here if --ops fused cannot be honoured

        seed_everything(cfg.seed)
        net = MGIDNet(cfg.model, generator=torch.Generator().manual_seed(cfg.seed))
        if cfg.dist.sync_bn and self.dist.enabled:
            net = mdist.convert_sync_batchnorm(net, self.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.channels_last = resolve_channels_last(cfg.channels_last, self.precision, self.device)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # the plain module: checkpoints, validation, samples
        self.net = net.to(self.device, memory_format=self.memory_format).train()
        mdist.attach_memory_sync(self.net, self.dist)
        self.criterion = MGIDLoss(cfg.loss)
        o = cfg.optim
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                          weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

        self.train_set = make_dataset(cfg.data, "train", cfg.crop_size, cfg.seed, embedded=cfg.embedded,
                                      layout=cfg.layout)
        self.sampler = EpochBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed, self.dist.rank,
                                         self.dist.world_size)
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                 pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.paired_sets = build_paired_sets(cfg)
        self.paired = next(iter(self.paired_sets.values()))  # the primary set

        self.step = 0
        self.last_validation: ValidationResult | None = None
        self.last_validations: dict[str, ValidationResult] = {}
        # [step, batches] of the last BatchNorm recalibration (None: the statistics are as trained)
        self.bn_recalibrated: list[int] | None = None
        self._last_val_step = self._last_ckpt_step = -1
        if resume:
            self._load(load_checkpoint(self.ckpt_dir, LAST, device="cpu"))
        elif overwrite and self.is_main:  # only now that the setup succeeded: a typo must not cost the old run
            for name in RUN_OUTPUTS:
                target = self.out / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        self.dist.barrier()  # no rank starts before rank 0 has cleared an overwritten run

        # What the loop calls: both frames in one forward, compiled and/or DDP-wrapped on request.
        model: nn.Module = torch.compile(self.net) if cfg.compile else self.net
        pair: nn.Module = PairForward(model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # broadcast_buffers=False: DDP would otherwise copy rank 0's buffers (the memory items) over
            # every rank's at each forward; the items are kept identical by the all-reduced update.
            pair = DistributedDataParallel(pair, device_ids=[self.device.index] if self.device.type == "cuda"
                                           else None, broadcast_buffers=False)
        self.pair = pair

        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when a run starts

            # purge_step hides events a crashed run logged after its last checkpoint
            self.writer: Any = SummaryWriter(str(self.out / TB_DIR), purge_step=self.step if resume else None)
        else:
            self.writer = _NullWriter()
        self.stop = StopRequest()

    # ---- setup helpers
    def _check_out(self, resume: bool, overwrite: bool) -> None:
        existing = checkpoint_paths(self.ckpt_dir, LAST)["meta"]
        if resume:
            if not existing.is_file():
                raise CheckpointError(f"--resume: no checkpoint to continue in {self.ckpt_dir} ({existing.name} "
                                      f"missing); run without --resume to start, or point --out at the run")
            return
        if existing.is_file() and not overwrite:
            try:
                step = read_meta(existing).get("step", "?")
            except CheckpointError:
                step = "?"
            raise ConfigError(f"{self.out} already holds a run (checkpoint at step {step}); pass --resume to "
                              f"continue it, --overwrite to start afresh there, or choose another --out")

    def _load(self, ckpt: Any) -> None:
        meta = ckpt.meta
        try:
            self.net.load_state_dict(ckpt.model_state)
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt.paths['model']} does not fit the configured model: {exc}") from exc
        if ckpt.optimizer_state is None:
            raise CheckpointError(f"{ckpt.paths['optim']} is missing: cannot resume the optimiser exactly")
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        for group in self.optimizer.param_groups:  # the config's hyper-parameters win over the saved ones
            group.update(betas=self.cfg.optim.betas, eps=self.cfg.optim.eps, weight_decay=self.cfg.optim.weight_decay)
        self.step = int(meta["step"])
        self.bn_recalibrated = meta.get("bn_recalibrated")
        saved_spe = meta.get("steps_per_epoch")
        if saved_spe is not None and saved_spe != self.steps_per_epoch:
            self.log(f"warning: the checkpoint had {saved_spe} steps per epoch, the data now gives "
                     f"{self.steps_per_epoch}: the batch order will differ from an uninterrupted run")
        set_rng_state(meta["rng"])
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self._last_ckpt_step = self.step
        self.log(f"resumed {self.ckpt_dir / LAST}.* at step {self.step} (epoch {self.step // self.steps_per_epoch})")

    # ---- outputs
    def _sync_for_output(self) -> None:
        """Collective (every rank calls it): make the BN running statistics equal before they are used."""
        if self.dist.enabled and not self.cfg.dist.sync_bn:
            mdist.average_bn_running_stats(self.net, self.dist)

    def save(self) -> Path | None:
        """Write ``OUT/checkpoints/last.*`` (and a ``step_XXXXXX.*`` copy if configured); rank 0 only.

        Every rank must call it (BN statistics are averaged first); ranks other than 0 return None.
        """
        self._sync_for_output()
        self._last_ckpt_step = self.step
        if not self.is_main:
            return None
        names = [LAST] + ([f"step_{self.step:06d}"] if self.cfg.keep_step_checkpoints else [])
        meta = {"config": self.cfg.to_dict(), "step": self.step, "epoch": self.step // self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "ops_path": self.ops_path, "device": str(self.device), "world_size": self.dist.world_size,
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "validation": self.last_validation.to_dict() if self.last_validation else None,
                "validation_sets": {k: v.to_dict() for k, v in self.last_validations.items()},
                "bn_recalibrated": self.bn_recalibrated}
        paths = save_checkpoint(self.ckpt_dir, self.net, self.optimizer, meta, names)
        return paths["model"]

    def recalibration_batches(self) -> Iterator[torch.Tensor]:
        """``cfg.bn_recalibration_batches`` batches of training frames (both frames of each pair), this rank's
        slice, from an epoch of their own (`RECALIBRATION_EPOCH`): the same batches whenever it runs."""
        cfg, per = self.cfg, self.sampler.per_rank_batch
        self.train_set.set_epoch(RECALIBRATION_EPOCH)
        n = len(self.train_set)
        for b in range(cfg.bn_recalibration_batches):
            first = b * cfg.batch_size + self.dist.rank * per
            items = [self.train_set[(first + i) % n] for i in range(per)]
            for key in ("frame1", "frame2"):
                yield torch.stack([it[key] for it in items]).to(self.device, memory_format=self.memory_format)

    def recalibrate_batchnorm(self) -> None:
        """Re-estimate the BatchNorm running statistics for the final weights (`mgid.bn_recalibration`);
        validation and the checkpoint that follow see them. Every rank calls it."""
        used = recalibrate_batchnorm(self.net, self.recalibration_batches(),
                                     autocast_context(self.device, self.precision))
        self._sync_for_output()
        self.bn_recalibrated = [self.step, self.cfg.bn_recalibration_batches]
        self._last_val_step = self._last_ckpt_step = -1  # validate and save the recalibrated network
        self.log(f"[step {self.step}] BatchNorm statistics re-estimated for the final weights over {used // 2} "
                 f"training batches (both frames of each pair)")

    def run_validation(self) -> ValidationResult | None:
        """Validate on rank 0 (every rank must call it: BN statistics are synchronised first)."""
        self._sync_for_output()
        self._last_val_step = self.step
        if not self.is_main:
            return None
        epoch = self.step / self.steps_per_epoch
        results = {}
        for name, paired in self.paired_sets.items():
            result = results[name] = validate(self.net, paired, self.device)
            for key, value in result.to_dict().items():
                if key != "count":
                    self.writer.add_scalar(f"val/{key}" if name == "val" else f"val_{name}/{key}", value, self.step)
            self.log(f"[step {self.step}, epoch {epoch:.2f}] validation {name}: {result.describe()}")
        self.last_validations = results
        self.last_validation = next(iter(results.values()))
        # one line per validation: the learning curve (plotted by benchmarks/plot_curve.py)
        line = {"step": self.step, **{k: v.to_dict() for k, v in results.items()}}
        with open(self.out / VALIDATION_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        return self.last_validation

    def _log_images(self, frame1: torch.Tensor, out1: MGIDOutput) -> None:
        # rain shown as R - 1: its brightness in [0, 1] units (black = no rain; negative R clips to black)
        rows = tensor_rows(frame1, out1.background.detach(), out1.rain.detach() - 1.0, max_rows=TB_GRID_ROWS)
        grid = image_grid(rows, headers=("input", "de-rained", "rain"))
        self.writer.add_image("train/input_derained_rain", grid, self.step, dataformats="HWC")

    def header(self) -> str:
        cfg = self.cfg
        data = cfg.data if cfg.data is not None else "embedded synthetic time-lapse set"
        n_params = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        return "\n".join([
            f"mgid training: device {self.device}, ops: {self.ops_path}, precision {self.precision}"
            + (", channels_last" if self.channels_last else "")
            + (", compiled" if cfg.compile else "")
            + (f", {self.dist.world_size} processes ({self.dist.backend}, {self.sampler.per_rank_batch} pairs per "
               f"rank, sync_bn {cfg.dist.sync_bn})" if self.dist.enabled else ""),
            f"data: {data} ({len(self.train_set)} pairs, {self.steps_per_epoch} steps/epoch of batch "
            f"{cfg.batch_size}); validation: " + ", ".join(f"{k} ({len(v)} pairs)" for k, v in self.paired_sets.items()),
            f"model: {n_params:,} trainable parameters, {cfg.model.memory_items} memory items; "
            f"{self.total_steps} steps; output: {self.out}",
            "config:", to_yaml(cfg).rstrip(),
        ])

    # ---- the loop
    def _agree(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
        """Loss terms averaged over ranks, and whether any rank was asked to stop (one small all-reduce).

        Single-process: the terms as they are and the local stop flag. Every rank gets the same
        answer, so all of them stop (or raise on a non-finite loss) at the same step.
        """
        if not self.dist.enabled:
            return terms, self.stop.requested
        keys = list(terms)
        flag = torch.tensor(1.0 if self.stop.requested else 0.0)
        vec = torch.stack([terms[k].detach().float().cpu() for k in keys] + [flag]).to(self.device)
        vec = mdist.all_reduce_mean(vec, self.dist).cpu()
        if self.stop.signum is None and vec[-1] > 0:
            self.stop.signum = int(signal.SIGTERM)  # another rank was signalled
        return {k: vec[i] for i, k in enumerate(keys)}, bool(vec[-1] > 0)

    def run(self) -> TrainResult:
        """Train to ``total_steps``; raises `NonFiniteLossError` or (after a checkpoint) `TrainingInterrupted`."""
        self.stop.install()
        try:
            return self._run()
        finally:
            self.stop.restore()

    def _run(self) -> TrainResult:
        cfg, device = self.cfg, self.device
        self.log(self.header())
        start_time = time.perf_counter()
        history: list[dict[str, float]] = []
        window_start, window_images = time.perf_counter(), 0
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not self.is_main)
        stopped = False
        try:
            while self.step < self.total_steps and not stopped:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                self.train_set.set_epoch(epoch)  # before the iterator exists (workers copy the data set)
                self.sampler.set_epoch(epoch, start)
                for batch in self.loader:
                    frame1 = batch["frame1"].to(device, non_blocking=True, memory_format=self.memory_format)
                    frame2 = batch["frame2"].to(device, non_blocking=True, memory_format=self.memory_format)
                    lr = learning_rate(self.step, self.total_steps, cfg.optim)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    total, terms, out1, apply = train_step(self.net, self.criterion, self.optimizer, frame1, frame2,
                                                           pair=self.pair, precision=self.precision,
                                                           scaler=self.scaler)
                    terms, stopped = self._agree(total, terms)
                    check = terms["total"] if "total" in terms else total
                    if not bool(torch.isfinite(check)) or not bool(torch.isfinite(total)):
                        where = (f"The last good checkpoint is {self.ckpt_dir / LAST}.* (step {self._last_ckpt_step}); "
                                 f"continue it with --resume." if self._last_ckpt_step >= 0 else
                                 "No checkpoint was written yet.")
                        raise nonfinite_error(self.step + 1, terms, cfg.loss, where)
                    apply()
                    self.step += 1
                    bar.update(1)
                    window_images += 2 * frame1.shape[0] * self.dist.world_size  # two frames per pair, all ranks
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        values = {k: float(v) for k, v in terms.items()}
                        elapsed = time.perf_counter() - window_start
                        rate = window_images / elapsed if elapsed > 0 else float("nan")
                        for k, v in values.items():
                            self.writer.add_scalar(f"loss/{k}", v, self.step)
                        self.writer.add_scalar("train/lr", lr, self.step)
                        self.writer.add_scalar("train/images_per_s", rate, self.step)
                        history.append({"step": self.step, **values})
                        bar.set_postfix(loss=f"{values['total']:.4f}", img_s=f"{rate:.1f}")
                        window_start, window_images = time.perf_counter(), 0
                    if self.is_main and cfg.image_every and self.step % cfg.image_every == 0:
                        self._log_images(frame1, out1)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save()
                    if stopped or self.step >= self.total_steps:
                        break
                epoch_done = self.step % self.steps_per_epoch == 0
                if (not stopped and epoch_done and cfg.val_every
                        and (self.step // self.steps_per_epoch) % cfg.val_every == 0):
                    self.run_validation()
        finally:
            bar.close()
            self.writer.flush()

        if stopped:
            if self._last_ckpt_step != self.step:
                self.save()
            self.writer.close()
            checkpoint = checkpoint_paths(self.ckpt_dir)["model"] if self.is_main else None
            exc = TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.step, checkpoint)
            self.log(str(exc))
            raise exc

        if cfg.bn_recalibration_batches and self.bn_recalibrated != [self.step, cfg.bn_recalibration_batches]:
            self.recalibrate_batchnorm()
        if self._last_val_step != self.step:
            self.run_validation()
        if self._last_ckpt_step != self.step:
            self.save()
        checkpoint = samples = None
        if self.is_main:
            checkpoint = checkpoint_paths(self.ckpt_dir)["model"]
            samples = write_comparison(self.net, self.paired, device, self.out / SAMPLES_DIR / COMPARE_FILE,
                                       cfg.sample_rows)
        self.writer.close()
        seconds = time.perf_counter() - start_time
        self.log(f"done: step {self.step} in {seconds:.0f} s")
        self.log(f"held-out de-raining: {self.last_validation.describe() if self.last_validation else 'n/a'}")
        self.log(f"checkpoint: {checkpoint}\nsamples: {samples} (rainy | de-rained | clean)\n"
                 f"TensorBoard: tensorboard --logdir {self.out / TB_DIR}")
        return TrainResult(self.step, self.step // self.steps_per_epoch, self.last_validation, checkpoint, samples,
                           seconds, history)

    def close(self) -> None:
        """Leave the process group if this trainer created it (torchrun launches)."""
        self.dist.cleanup()


# --------------------------------------------------------------------------------------------------
# command line (train.py and `mgid train`)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train.py`` / ``mgid train``: --config, --resume, ... and one per config field."""
    parser.add_argument("--config", metavar="NAME|FILE.yaml",
                        help=f"a named config ({', '.join(NAMED_CONFIGS)}) or a YAML file (as --print-config writes); "
                             f"options given on the command line override it [default: the paper's settings]")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT/checkpoints/last.* exactly (step, weights, memory items, "
                             "optimiser, RNG states, data order); its saved config is the base for other options")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an OUT that already holds one (deletes its checkpoints/, tb/ "
                             "and samples/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_config_arguments(parser)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train MGID on time-lapse pairs (default: the embedded synthetic set, no download).\n"
                    "Settings: defaults (the paper) < --config NAME|FILE.yaml < the options below.",
        epilog="examples:\n  train.py --config quick\n  train.py --config paper --data /data/mgid --out runs/paper\n"
               "  train.py --config quick --max-steps 300 --resume")
    add_train_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace, log: Callable[[str], None] = print) -> TrainConfig:
    """The run's config: named config/YAML and options; with --resume, on top of the saved config.

    Resuming may change run-length, logging and device settings; a different model is refused,
    other differences are listed (the run then differs from an uninterrupted one).
    """
    overrides = overrides_from_args(args)
    cfg = resolve_config(args.config, overrides)
    if not args.resume:
        return cfg
    meta_path = checkpoint_paths(Path(cfg.out) / CHECKPOINT_DIR, LAST)["meta"]
    if not meta_path.is_file():
        raise CheckpointError(f"--resume: no checkpoint in {meta_path.parent} ({meta_path.name} missing); run without "
                              f"--resume to start, or point --out at the run")
    saved = TrainConfig.from_dict(read_meta(meta_path)["config"])
    base = saved.to_dict()
    base["out"] = cfg.out  # the run may have been moved
    resumed = resolve_config(args.config, overrides, base=base)
    changes = diff(saved, resumed)
    changes.pop("out", None)
    model_changes = [k for k in changes if k.startswith("model.")]
    if model_changes:
        raise ConfigError(f"--resume cannot change the model ({', '.join(model_changes)}); the checkpoint's "
                          f"weights would not fit. Drop those options or start a new run with another --out")
    harmless = ("max_steps", "epochs", "bn_recalibration_batches", "checkpoint_every", "keep_step_checkpoints", "log_every", "image_every",
                "val_every", "num_workers", "device", "ops", "sample_rows", "compile", "dist.backend")
    notable = {k: v for k, v in changes.items() if k not in harmless}
    if notable:
        log("warning: resuming with changed settings (the run will differ from an uninterrupted one): "
            + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in notable.items()))
    return resumed


def run_from_args(args: argparse.Namespace, prog: str = "train.py") -> int:
    """Run what parsed ``args`` ask for; returns the exit code (errors are printed, not raised).

    Exit codes: 0 done; 1 non-finite loss (the last good checkpoint is kept); 2 bad settings or
    checkpoint; 128 + signal (143 SIGTERM, 130 SIGINT) stopped by a signal after writing a checkpoint.
    """
    try:
        cfg = config_from_args(args)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, CheckpointError, FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except NonFiniteLossError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        trainer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``train.py``: parse the command line and train; returns the exit code."""
    args = build_parser("train.py").parse_args(argv)
    return run_from_args(args, "train.py")
