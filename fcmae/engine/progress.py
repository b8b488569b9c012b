"""Progress reporting: images/s, ETA and peak memory.

On an interactive terminal a ``tqdm`` bar is drawn (main process only); otherwise (logs
redirected to a file, CI, a cluster scheduler) one ``logging`` line is emitted every
``log_every`` steps, so log files are not flooded with carriage returns.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

import torch

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak on GPU, peak RSS on CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """Track steps ``start_step..total_steps`` of a job.

    ``update(step, images, **shown)`` after each optimiser step returns the throughput stats
    (``img_per_s`` over the last step, ``eta_s``, ``peak_mem_mb``) for the metrics file. The
    ETA uses the mean step time since this process started, skipping the first (warm-up) step.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        *,
        enabled: bool = True,
        device: torch.device | str | None = None,
        log_every: int = 10,
        desc: str = "train",
        bar: bool | None = None,
    ) -> None:
        self.total, self.start = total_steps, start_step
        self.enabled, self.device, self.desc = enabled, device, desc
        self.log_every = max(1, log_every)
        self._t_last = self._t_first = time.perf_counter()
        self._steps_timed = 0
        self._time_timed = 0.0
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar = None
        if enabled and use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True, leave=True
            )

    def reset_timer(self) -> None:
        """Restart the step clock (e.g. after an evaluation or a checkpoint save)."""
        self._t_last = time.perf_counter()

    def update(self, step: int, images: int, **shown: Any) -> dict[str, float]:
        """Record that optimiser step ``step`` (1-based count of finished steps) is done."""
        now = time.perf_counter()
        dt = max(now - self._t_last, 1e-9)
        self._t_last = now
        if step - self.start > 1:  # skip the first step: start-up, allocator warm-up
            self._steps_timed += 1
            self._time_timed += dt
        mean_dt = self._time_timed / self._steps_timed if self._steps_timed else dt
        stats = {
            "img_per_s": images / dt,
            "eta_s": mean_dt * max(self.total - step, 0),
            "peak_mem_mb": peak_memory_mb(self.device),
        }
        if not self.enabled:
            return stats
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()}
        text.update(
            img_s=f"{stats['img_per_s']:.1f}",
            eta=format_duration(stats["eta_s"]),
            mem=f"{stats['peak_mem_mb']:.0f}MiB",
        )
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(text, refresh=False)
        elif step % self.log_every == 0 or step == self.total or step - self.start == 1:
            fields = " ".join(f"{k}={v}" for k, v in text.items())
            log.info("%s step %d/%d %s", self.desc, step, self.total, fields)
        return stats

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
