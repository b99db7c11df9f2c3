"""Optional experiment tracking: the figures the dashboard shows, also logged to Weights & Biases and/or
TensorBoard (``--wandb-project``, ``--tensorboard-dir`` on the orchestrator and the validator).

Neither package is required: a backend whose package is missing is reported once in the log and left
out, and a backend that fails while logging is closed and reported, never the caller's failure (the run
does not stop for its charts). W&B honours its own environment (``WANDB_MODE=offline`` logs to local files
only, as the tests do); TensorBoard event files are written with the ``tensorboard`` package's writer (no
torch needed, so the orchestrator can use it too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

__all__ = ["Tracker", "add_tracking_args"]


def add_tracking_args(parser) -> None:
    """``--wandb-project`` and ``--tensorboard-dir`` (an argparse parser or group)."""
    from template.config.argtypes import expanded_path

    g = parser.add_argument_group("experiment tracking (optional; needs the wandb / tensorboard package)")
    g.add_argument("--wandb-project", default=None, help="also log the run's figures to this W&B project")
    g.add_argument(
        "--tensorboard-dir", type=expanded_path, default=None, help="also write TensorBoard event files here"
    )


class Tracker:
    """Log ``{name: value}`` per step to the backends asked for; ``active`` says whether any is."""

    def __init__(
        self,
        *,
        name: str,
        config: Optional[Mapping[str, Any]] = None,
        wandb_project: Optional[str] = None,
        wandb_dir: Optional[Path] = None,
        tensorboard_dir: Optional[Path] = None,
    ):
        self._wandb = self._tensorboard = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                log.warning("--wandb-project %s: the wandb package is not installed; not logging to W&B", wandb_project)
            else:
                if wandb_dir is not None:
                    Path(wandb_dir).mkdir(parents=True, exist_ok=True)
                self._wandb = wandb.init(
                    project=wandb_project,
                    name=name,
                    config=dict(config or {}),
                    dir=None if wandb_dir is None else str(wandb_dir),
                    reinit="create_new",
                )
        if tensorboard_dir:
            try:
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
            except ImportError:
                log.warning("--tensorboard-dir: the tensorboard package is not installed; not writing event files")
            else:
                Path(tensorboard_dir).mkdir(parents=True, exist_ok=True)
                self._tensorboard = EventFileWriter(str(tensorboard_dir), flush_secs=5)

    @property
    def active(self) -> bool:
        return self._wandb is not None or self._tensorboard is not None

    def log(self, step: int, metrics: Mapping[str, Optional[float]]) -> None:
        """Log the metrics that have a value (None: not measured) at ``step`` (a round)."""
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        if not values:
            return
        if self._wandb is not None:
            try:
                self._wandb.log(values, step=step)
            except Exception as error:  # the package's own errors: stop using it, keep the run
                log.warning("W&B logging failed, stopped: %s", error)
                self._wandb = None
        if self._tensorboard is not None:
            try:
                self._tensorboard.add_event(_scalars(step, values))
            except Exception as error:
                log.warning("TensorBoard logging failed, stopped: %s", error)
                self._tensorboard = None

    def flush(self) -> None:
        """Write TensorBoard's pending events now (the writer flushes every few seconds on its own)."""
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as error:
                log.warning("W&B finish failed: %s", error)
            self._wandb = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _scalars(step: int, values: Mapping[str, float]):
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    return Event(wall_time=time.time(), step=step, summary=summary)
