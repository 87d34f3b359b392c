"""Stopping a run: SIGTERM/SIGINT handling, the exit codes, and the errors that end a run early.

`StopRequest` only sets a flag that the loop checks between steps, so a signalled run writes a
checkpoint and raises `TrainingInterrupted` (exit code 128 + the signal number, `EXIT_INTERRUPTED`);
a non-finite loss raises `NonFiniteLossError` (built by `nonfinite_error`) before the optimiser step.
"""
from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from mgid.errors import MgidError

#: Exit code of a run stopped by a signal after writing its checkpoint: 128 + signal number.
EXIT_INTERRUPTED = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}


class NonFiniteLossError(MgidError, RuntimeError):
    """The loss became NaN or infinite; raised before the optimiser step.

    Args:
        step: the (1-based) step whose loss is not finite.
        terms: the non-finite loss terms named in the message, by name.
        message: the one-line message (`nonfinite_error` writes it).

    Attributes:
        step: as given.
        terms: as given.
    """

    def __init__(self, step: int, terms: dict[str, float], message: str) -> None:
        super().__init__(message)
        self.step = step
        self.terms = terms


class TrainingInterrupted(MgidError, RuntimeError):
    """SIGTERM/SIGINT stopped the run between two steps; a checkpoint of ``step`` was written first.

    Args:
        signum: the signal received (``signal.SIGTERM`` or ``signal.SIGINT``).
        step: the last step done (the one checkpointed).
        checkpoint: the model file written (None on ranks other than 0).

    Attributes:
        signum: as given.
        step: as given.
        checkpoint: as given.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint} (step {step})" if checkpoint else f"no checkpoint (step {step})"
        super().__init__(f"{name} received: stopped after step {step} and wrote {where}; continue with --resume")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        """The process exit code: 128 + the signal number (`EXIT_INTERRUPTED`)."""
        return 128 + int(self.signum)


class StopRequest:
    """SIGTERM/SIGINT handlers that only set a flag, checked by the loop between steps.

    A second signal of the same kind while the flag is set falls back to the handler there was before
    `install` (by default SIGINT: KeyboardInterrupt; SIGTERM: terminate), so a stuck run can still be stopped.

    Attributes:
        signum: the first signal received, None while none was.
        SIGNALS: the signals handled: SIGTERM and SIGINT.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal was received (the loop then stops after the current step)."""
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signum:  # second time: the default action
            signal.signal(signum, self._saved.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def install(self) -> StopRequest:
        """Install the handlers, keeping the previous ones for `restore`; does nothing outside the main thread.

        Returns:
            This `StopRequest`.
        """
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers `install` replaced."""
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()


def nonfinite_error(step: int, terms: dict[str, torch.Tensor], weights: Any, last_good: str) -> NonFiniteLossError:
    """Build the error for a non-finite loss at ``step``, naming the terms that are NaN/Inf.

    Args:
        step: the (1-based) step whose loss is not finite.
        terms: the loss terms by name (0-d tensors), ``"total"`` among them.
        weights: the loss weights (`mgid.config.train_config.TrainConfig.loss`): a term whose weight is non-zero
            is named first, as an unweighted NaN term does not reach the total.
        last_good: a sentence on the last good checkpoint, put into the message.

    Returns:
        The `NonFiniteLossError` (not raised): its message names the culprit terms, the total, ``last_good`` and
        what to try; its ``terms`` hold the culprits.
    """
    values = {k: float(v) for k, v in terms.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    # Name the weighted terms first: an unweighted term can be NaN without harm (it is not in the total).
    weighted_bad = [k for k in bad if k != "total" and getattr(weights, k, 0) != 0]
    culprits = weighted_bad or [k for k in bad if k != "total"] or ["total"]
    desc = ", ".join(f"{k} = {bad[k]}" for k in culprits)
    msg = (f"the loss is not finite at step {step}: {desc} (total = {values.get('total')}); training stopped "
           f"before the optimiser step. {last_good} Try a lower --optim.lr or check the data.")
    return NonFiniteLossError(step, {k: bad[k] for k in culprits}, msg)
