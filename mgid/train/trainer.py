"""The training loop: `Trainer` sets a run up from a `TrainConfig` (fresh, or resumed from
``OUT/checkpoints/last.*``) in small named steps and runs it.

Each step runs `mgid.train.objective.MGIDObjective` on batches in an order fixed by ``(seed, epoch)``, checks the
loss is finite, logs to TensorBoard (``OUT/tb``), validates on the held-out sets, saves checkpoints atomically
(`mgid.checkpoint`), optionally re-estimates BatchNorm statistics, and at the end writes
``OUT/samples/compare.png`` (rainy | de-rained | clean).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mgid import ops
from mgid.checkpoint import (
    TRAINING_CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    read_meta,
    read_weights,
    save_checkpoint,
    set_rng_state,
)
from mgid.config.fields import ConfigError
from mgid.config.train_config import TrainConfig, to_yaml
from mgid.data import make_dataset
from mgid.devices import resolve_device
from mgid.eval.scoring import Scores
from mgid.losses import MGIDLoss
from mgid.models import MGIDNet, MGIDOutput
from mgid.output_paths import folder_problem
from mgid.precision import CHANNELS_LAST_SETTINGS, autocast, resolve_arithmetic
from mgid.train import distributed as mdist
from mgid.train.bn_recalibration import recalibrate_batchnorm, recalibration_batches
from mgid.train.objective import MGIDObjective, optimizer_step
from mgid.train.sampler import EpochBatchSampler, learning_rate, seed_everything
from mgid.train.stopping import StopRequest, TrainingInterrupted, nonfinite_error
from mgid.train.validation import build_paired_sets, validate, write_comparison
from mgid.visualize import image_grid, tensor_rows

#: Name of the checkpoint a run continues from (``OUT/checkpoints/last.*``).
LAST = "last"
TB_DIR = "tb"
SAMPLES_DIR = "samples"
COMPARE_FILE = "compare.png"
#: JSON lines of every validation (step and the scores of each held-out set) in OUT.
VALIDATION_LOG = "validation.jsonl"
#: Where an --overwrite run clears the previous run's outputs (nothing else in OUT is touched).
RUN_OUTPUTS = (TRAINING_CHECKPOINT_DIR, TB_DIR, SAMPLES_DIR, VALIDATION_LOG)
#: Images shown per TensorBoard grid.
TB_GRID_ROWS = 4


class _NullWriter:
    """Stands in for TensorBoard's SummaryWriter on ranks other than 0."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@dataclass
class TrainResult:
    """What a run ended with.

    Attributes:
        step: the last step done (``total_steps`` for a complete run).
        epoch: the epoch that step lies in (``step // steps_per_epoch``).
        validation: the scores on the primary validation set (None on ranks other than 0).
        checkpoint: the model file of ``OUT/checkpoints/last.*`` (None on ranks other than 0).
        samples: the comparison picture ``OUT/samples/compare.png`` (None on ranks other than 0).
        seconds: wall time of the run (this session, not counting earlier ones of a resumed run).
        history: the logged loss terms, one dict per log line: ``{"step": ..., "total": ..., <term>: ...}``.
    """

    step: int
    epoch: int
    validation: Scores | None
    checkpoint: Path | None
    samples: Path | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Progress:
    """The loop's running log state: the logged loss history and the throughput window."""

    history: list[dict[str, float]] = field(default_factory=list)
    window_start: float = field(default_factory=time.perf_counter)
    window_images: int = 0


class Trainer:
    """Sets up a run from a `TrainConfig` (fresh, or resumed from ``OUT/checkpoints/last.*``) and runs it.

    Checkpoints are written and read by `mgid.checkpoint` (``OUT/checkpoints``, `check_run_folder`); BatchNorm
    recalibration is `mgid.train.bn_recalibration`'s.

    Args:
        cfg: the resolved settings.
        resume: continue the run in ``cfg.out`` exactly. Default False.
        overwrite: start afresh even though ``cfg.out`` holds a run (clears its checkpoints/, tb/, samples/ and
            validation.jsonl, `RUN_OUTPUTS`, once the setup has succeeded). Default False.
        log: where progress lines go (`tqdm.write` by default, which keeps the bar intact; silenced on ranks
            other than 0).

    Raises:
        ConfigError: ``cfg.out`` cannot hold a run's outputs, holds a run and neither ``resume`` nor
            ``overwrite`` is given, the training set has fewer pairs than ``cfg.batch_size``, the batch does not
            split over the processes, or ``cfg.init_weights`` holds another network.
        CheckpointError: ``resume`` without a checkpoint in ``cfg.out``, or a checkpoint (or
            ``cfg.init_weights``) that is unreadable or does not fit the model or lacks the optimiser state.
        FileNotFoundError: the data, validation data or ``cfg.init_weights`` are missing.
        InputError: the data cannot be used (e.g. no images, frames of different sizes), or a bad precision.
        mgid.devices.DeviceError: ``cfg.device`` is unknown or not available.
        mgid.ops._dispatch.FusedOpsUnavailableError: ``cfg.ops`` is ``"fused"`` and the fused ops cannot run on
            the device.
        mgid.train.distributed.DistributedSetupError: ``WORLD_SIZE`` > 1 but torch cannot connect the processes.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 log: Callable[[str], None] = tqdm.write) -> None:
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / TRAINING_CHECKPOINT_DIR
        check_run_folder(self.out, resume, overwrite)
        self._setup_device()
        self._build_model()
        self._build_optim()
        self._build_data()
        self._init_state()
        self._restore(resume, overwrite)
        self._build_objective()
        self._open_writer(resume)
        self.stop = StopRequest()

    # ---- setup steps (in this order: the RNG draws and the process group depend on it)
    def _setup_device(self) -> None:
        """The ops mode, the device, the process group (torchrun) and this rank's device."""
        ops.set_ops_mode(self.cfg.ops)
        device = resolve_device(self.cfg.device)
        self.dist = mdist.setup(self.cfg.dist.backend, device)
        self.device = mdist.rank_device(device, self.dist)
        self.is_main = self.dist.is_main
        if not self.is_main:
            self.log = lambda s: None
        self.ops_path = ops.op_path(self.device)  # raises here if --ops fused cannot be honoured
        # Only 'auto' can end on the reference without the user asking: say why, and how to get the kernels.
        reason = ops.unavailable_reason(self.device) if ops.ops_mode() == "auto" else None
        self.ops_note = f"ops: PyTorch reference because {reason}" if reason else None

    def _build_model(self) -> None:
        """The seeded network on the device, its precision and memory format, the memory all-reduce."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        net = MGIDNet(cfg.model, generator=torch.Generator().manual_seed(cfg.seed))
        if cfg.init_weights is not None:
            net.load_state_dict(initial_state(cfg.init_weights, cfg.model))
        if cfg.dist.sync_bn and self.dist.enabled:
            net = mdist.convert_sync_batchnorm(net, self.device)
        self.arithmetic = resolve_arithmetic(cfg.precision, CHANNELS_LAST_SETTINGS[cfg.channels_last], self.device)
        self.precision, self.channels_last = self.arithmetic.precision, self.arithmetic.channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # the plain module: checkpoints, validation, samples
        self.net = net.to(self.device, memory_format=self.memory_format).train()
        mdist.attach_memory_sync(self.net, self.dist)

    def _build_optim(self) -> None:
        """The loss, Adam and (fp16) the gradient scaler."""
        self.criterion = MGIDLoss(self.cfg.loss)
        o = self.cfg.optim
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                          weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def _build_data(self) -> None:
        """The training set, its sampler and loader, the run length and the validation sets."""
        cfg = self.cfg
        with warnings.catch_warnings(record=True) as caught:
            # what the data set warns of (frames smaller than the crop, images it ignores): once, in the run's log
            warnings.simplefilter("always")
            self.train_set = make_dataset(cfg.data, "train", cfg.crop_size, cfg.seed, embedded=cfg.embedded,
                                          layout=cfg.layout, pair_preprocessing=cfg.pair_preprocessing)
        for warning in caught:
            self.log(f"warning: {warning.message}")
        self.sampler = EpochBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed, self.dist.rank,
                                         self.dist.world_size)
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                 pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.paired_sets = build_paired_sets(cfg)
        self.paired = next(iter(self.paired_sets.values()))  # the primary set

    def _init_state(self) -> None:
        """The state a checkpoint carries beyond weights and optimiser (a fresh run's values)."""
        self.step = 0
        self.last_validation: Scores | None = None
        self.last_validations: dict[str, Scores] = {}
        # [step, batches] of the last BatchNorm recalibration (None: the statistics are as trained)
        self.bn_recalibrated: list[int] | None = None
        self._last_val_step = self._last_ckpt_step = -1

    def _restore(self, resume: bool, overwrite: bool) -> None:
        """Resume from ``last.*``, or (--overwrite) clear the previous run's outputs; then wait for rank 0."""
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

    def _build_objective(self) -> None:
        """What the loop calls: `MGIDObjective` (both frames and the loss in one forward) over the network,
        compiled (the network) and/or DDP-wrapped (the objective) on request. Only the network is compiled:
        the loss's BSW mask takes a data-dependent k-means threshold, which would break the graph."""
        model: nn.Module = torch.compile(self.net) if self.cfg.compile else self.net
        objective: nn.Module = MGIDObjective(model, self.criterion, self.precision)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # broadcast_buffers=False: DDP would otherwise copy rank 0's buffers (the memory items) over
            # every rank's at each forward; the items are kept identical by the all-reduced update.
            objective = DistributedDataParallel(objective, device_ids=[self.device.index]
                                                if self.device.type == "cuda" else None, broadcast_buffers=False)
        self.objective = objective

    def _open_writer(self, resume: bool) -> None:
        """TensorBoard on rank 0 (a stand-in elsewhere)."""
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when a run starts

            # purge_step hides events a crashed run logged after its last checkpoint
            self.writer: Any = SummaryWriter(str(self.out / TB_DIR), purge_step=self.step if resume else None)
        else:
            self.writer = _NullWriter()

    # ---- outputs
    def _sync_for_output(self) -> None:
        """Collective (every rank calls it): make the BN running statistics equal before they are used."""
        if self.dist.enabled and not self.cfg.dist.sync_bn:
            mdist.average_bn_running_stats(self.net, self.dist)

    def run_validation(self) -> Scores | None:
        """Validate on every validation set, on rank 0 (every rank must call it: BN statistics are synchronised
        first).

        The scores go to TensorBoard (``val/...``, ``val_<set>/...``), the log and one line of
        ``OUT/validation.jsonl`` (`VALIDATION_LOG`).

        Returns:
            The scores on the primary (first) set on rank 0, None on the other ranks.
        """
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
        # one line per validation: the learning curve (plotted by tools/learning_curve.py)
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
        """Describe the run in the lines logged at its start.

        Returns:
            Device and ops path, arithmetic, data and validation sets, model size, steps, output folder and the
            config as YAML, one item per line.
        """
        cfg = self.cfg
        data = cfg.data if cfg.data is not None else "embedded synthetic time-lapse set"
        n_params = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        return "\n".join([
            f"mgid training: device {self.device}, ops: {self.ops_path}"
            + (", compiled" if cfg.compile else "")
            + (f", {self.dist.world_size} processes ({self.dist.backend}, {self.sampler.per_rank_batch} pairs per "
               f"rank, sync_bn {cfg.dist.sync_bn})" if self.dist.enabled else ""),
            *([self.ops_note] if self.ops_note else []),
            f"arithmetic: {self.arithmetic.describe()}",
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
        """Train to ``total_steps``, then recalibrate BatchNorm (if configured), validate, checkpoint and write the
        comparison picture.

        Returns:
            The `TrainResult`.

        Raises:
            mgid.train.stopping.NonFiniteLossError: the loss became NaN or infinite (before the optimiser step).
            mgid.train.stopping.TrainingInterrupted: SIGTERM/SIGINT arrived; a checkpoint was written first.
        """
        self.stop.install()
        try:
            return self._run()
        finally:
            self.stop.restore()

    def _run(self) -> TrainResult:
        self.log(self.header())
        start_time = time.perf_counter()
        progress = _Progress()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not self.is_main)
        stopped = False
        try:
            while self.step < self.total_steps and not stopped:
                stopped = self._train_epoch(bar, progress)
                if not stopped:
                    self._maybe_validate_epoch()
        finally:
            bar.close()
            self.writer.flush()
        if stopped:
            self._finish_interrupted()
        return self._finish(start_time, progress.history)

    def _train_epoch(self, bar: tqdm, progress: _Progress) -> bool:
        """The rest of the current epoch (or up to ``total_steps``); True when a stop was requested."""
        epoch, start = divmod(self.step, self.steps_per_epoch)
        self.train_set.set_epoch(epoch)  # before the iterator exists (workers copy the data set)
        self.sampler.set_epoch(epoch, start)
        for batch in self.loader:
            stopped = self._train_step(batch, bar, progress)
            if stopped or self.step >= self.total_steps:
                return stopped
        return False

    def _train_step(self, batch: dict[str, torch.Tensor], bar: tqdm, progress: _Progress) -> bool:
        """One step: learning rate, forward + loss, agreement across ranks, the finiteness check, the
        optimiser step, logs and checkpoints; returns whether a stop was requested."""
        cfg, device = self.cfg, self.device
        frame1 = batch["frame1"].to(device, non_blocking=True, memory_format=self.memory_format)
        frame2 = batch["frame2"].to(device, non_blocking=True, memory_format=self.memory_format)
        lr = learning_rate(self.step, self.total_steps, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total, terms, out1 = self.objective(frame1, frame2)
        terms, stopped = self._agree(total, terms)
        self._check_finite(total, terms)
        optimizer_step(self.optimizer, total, self.scaler)
        self.step += 1
        bar.update(1)
        progress.window_images += 2 * frame1.shape[0] * self.dist.world_size  # two frames per pair, all ranks
        if self.step % cfg.log_every == 0 or self.step == self.total_steps:
            self._log_scalars(terms, lr, bar, progress)
        if self.is_main and cfg.image_every and self.step % cfg.image_every == 0:
            self._log_images(frame1, out1)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save()
        return stopped

    def _check_finite(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Raise `NonFiniteLossError` (before the optimiser step) if the loss is NaN/Inf on any rank."""
        check = terms["total"] if "total" in terms else total
        if not bool(torch.isfinite(check)) or not bool(torch.isfinite(total)):
            where = (f"The last good checkpoint is {self.ckpt_dir / LAST}.* (step {self._last_ckpt_step}); "
                     f"continue it with --resume." if self._last_ckpt_step >= 0 else
                     "No checkpoint was written yet.")
            raise nonfinite_error(self.step + 1, terms, self.cfg.loss, where)

    def _log_scalars(self, terms: dict[str, torch.Tensor], lr: float, bar: tqdm, progress: _Progress) -> None:
        """Loss terms, learning rate and throughput to TensorBoard and the progress bar; a new window."""
        values = {k: float(v) for k, v in terms.items()}
        elapsed = time.perf_counter() - progress.window_start
        rate = progress.window_images / elapsed if elapsed > 0 else float("nan")
        for k, v in values.items():
            self.writer.add_scalar(f"loss/{k}", v, self.step)
        self.writer.add_scalar("train/lr", lr, self.step)
        self.writer.add_scalar("train/images_per_s", rate, self.step)
        progress.history.append({"step": self.step, **values})
        bar.set_postfix(loss=f"{values['total']:.4f}", img_s=f"{rate:.1f}")
        progress.window_start, progress.window_images = time.perf_counter(), 0

    def _maybe_validate_epoch(self) -> None:
        """Validate at the end of every ``val_every``-th epoch."""
        epoch_done = self.step % self.steps_per_epoch == 0
        if epoch_done and self.cfg.val_every and (self.step // self.steps_per_epoch) % self.cfg.val_every == 0:
            self.run_validation()

    def _finish_interrupted(self) -> None:
        """After a stop request: checkpoint the current step and raise `TrainingInterrupted`."""
        if self._last_ckpt_step != self.step:
            self.save()
        self.writer.close()
        checkpoint = checkpoint_paths(self.ckpt_dir)["model"] if self.is_main else None
        exc = TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.step, checkpoint)
        self.log(str(exc))
        raise exc

    def _finish(self, start_time: float, history: list[dict[str, float]]) -> TrainResult:
        """The end of a complete run: BN recalibration, the final validation and checkpoint, the samples."""
        cfg = self.cfg
        if cfg.bn_recalibration_batches and self.bn_recalibrated != [self.step, cfg.bn_recalibration_batches]:
            self.recalibrate_batchnorm()
        if self._last_val_step != self.step:
            self.run_validation()
        if self._last_ckpt_step != self.step:
            self.save()
        checkpoint = samples = None
        if self.is_main:
            checkpoint = checkpoint_paths(self.ckpt_dir)["model"]
            samples = write_comparison(self.net, self.paired, self.device, self.out / SAMPLES_DIR / COMPARE_FILE,
                                       cfg.sample_rows)
        self.writer.close()
        seconds = time.perf_counter() - start_time
        self.log(f"done: step {self.step} in {seconds:.0f} s")
        self.log(f"held-out de-raining: {self.last_validation.describe() if self.last_validation else 'n/a'}")
        self.log(f"checkpoint: {checkpoint}\nsamples: {samples} (rainy | de-rained | clean)\n"
                 f"TensorBoard: tensorboard --logdir {self.out / TB_DIR}")
        return TrainResult(self.step, self.step // self.steps_per_epoch, self.last_validation, checkpoint, samples,
                           seconds, history)

    # ---- checkpoints (`mgid.checkpoint` reads and writes the files)
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

    def save(self) -> Path | None:
        """Write ``OUT/checkpoints/last.*`` (and a ``step_XXXXXX.*`` copy with ``keep_step_checkpoints``); rank 0
        only.

        Every rank must call it (BN statistics are averaged first).

        Returns:
            The model file written on rank 0; None on the other ranks.
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
                "bn_recalibrated": self.bn_recalibrated,
                # what auto resolved to on this machine: the record of how the weights were trained (the config
                # keeps "auto", so a rerun elsewhere chooses for its own CPU)
                "arithmetic": dataclasses.asdict(self.arithmetic)}
        paths = save_checkpoint(self.ckpt_dir, self.net, self.optimizer, meta, names)
        return paths["model"]

    # ---- BatchNorm recalibration of the final weights
    def recalibration_batches(self) -> Iterator[torch.Tensor]:
        """Yield the batches BatchNorm recalibration runs on.

        Yields:
            The batches of `mgid.train.bn_recalibration.recalibration_batches` of the run's training set
            (``bn_recalibration_batches`` batches, this rank's slice), each moved to the run's device and memory
            format.
        """
        cfg = self.cfg
        for batch in recalibration_batches(self.train_set, cfg.batch_size, cfg.bn_recalibration_batches,
                                           self.sampler.per_rank_batch, self.dist.rank):
            yield batch.to(self.device, memory_format=self.memory_format)

    def recalibrate_batchnorm(self) -> None:
        """Re-estimate the BatchNorm running statistics for the final weights (`mgid.train.bn_recalibration`).

        Validation and the checkpoint that follow see them (both are redone). Every rank calls it.
        """
        used = recalibrate_batchnorm(self.net, self.recalibration_batches(),
                                     autocast(self.device, self.precision))
        self._sync_for_output()
        self.bn_recalibrated = [self.step, self.cfg.bn_recalibration_batches]
        self._last_val_step = self._last_ckpt_step = -1  # validate and save the recalibrated network
        self.log(f"[step {self.step}] BatchNorm statistics re-estimated for the final weights over {used // 2} "
                 f"training batches (both frames of each pair)")

    def close(self) -> None:
        """Leave the process group if this trainer created it (torchrun launches)."""
        self.dist.cleanup()


def check_out_folder(out: str | Path) -> None:
    """Check that a run's outputs can go to folder ``out`` (created when missing), before anything is written.

    Args:
        out: the run's output folder (``TrainConfig.out``, ``--out``).

    Raises:
        ConfigError: ``out`` (or a folder above it) is a file, or files cannot be created there; the one-line
            message says so and what to pass.
    """
    problem = folder_problem(out)
    if problem is not None:
        raise ConfigError(f"--out {out}: {problem}; pass a folder for the run's outputs ({TRAINING_CHECKPOINT_DIR}/, "
                          f"{TB_DIR}/, {SAMPLES_DIR}/; created when missing)")


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Check that a run may start (or resume) in folder ``out``.

    Args:
        out: the run's output folder.
        resume: a run is to be continued there.
        overwrite: a run there may be started afresh.

    Raises:
        ConfigError: ``out`` cannot hold a run's outputs (`check_out_folder`), or it holds a run and neither
            ``resume`` nor ``overwrite`` is given.
        CheckpointError: ``resume`` but ``out`` holds no ``checkpoints/last.*``.
    """
    check_out_folder(out)
    ckpt_dir = out / TRAINING_CHECKPOINT_DIR
    existing = checkpoint_paths(ckpt_dir, LAST)["meta"]
    if resume:
        if not existing.is_file():
            raise CheckpointError(f"--resume: no checkpoint to continue in {ckpt_dir} ({existing.name} "
                                  f"missing); run without --resume to start, or point --out at the run")
        return
    if existing.is_file() and not overwrite:
        try:
            step = read_meta(existing).get("step", "?")
        except CheckpointError:
            step = "?"
        raise ConfigError(f"{out} already holds a run (checkpoint at step {step}); pass --resume to "
                          f"continue it, --overwrite to start afresh there, or choose another --out")


def initial_state(path: str | Path, model: Any) -> dict[str, torch.Tensor]:
    """Read the network state to start a run from (`TrainConfig.init_weights`), checked to be of ``model``.

    Args:
        path: a weights file: a checkpoint's, or a pretrained folder's ``model.safetensors``.
        model: the configured network (a `ModelConfig`).

    Returns:
        The state dict (weights, BatchNorm statistics, memory items) on the CPU.

    Raises:
        FileNotFoundError: the weights are missing.
        CheckpointError: the files are unreadable, or their record has no ``config.model`` section.
        ConfigError: the weights are of another network (the message names the model options that differ).
    """
    state, saved, paths = read_weights(path, device="cpu")
    if saved is None:
        raise CheckpointError(f"{paths['meta']} has no config.model section; cannot check its network")
    theirs = type(model).from_dict(saved)
    if theirs != model:
        changed = [f"{k}: {v!r} there, {getattr(model, k)!r} here" for k, v in dataclasses.asdict(theirs).items()
                   if v != getattr(model, k)]
        raise ConfigError(f"init_weights {path} holds another network (model.{'; model.'.join(changed)}); "
                          f"set the model options to the checkpoint's or start from other weights")
    return state
