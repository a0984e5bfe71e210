"""GPU utilisation of a stylizer actor's GPU, sampled in the background with ``nvidia-smi``.

A GPU actor starts one :class:`GpuUtilization`; each output row's ``worker`` JSON then carries
``gpu_util``, the mean utilisation (percent of time a kernel ran, as ``nvidia-smi`` reports it)
of the actor's GPU since the actor started, so ``job_report.json`` can say how busy each GPU was
without a metrics stack. Actors that share a GPU see the same GPU-wide figure. Where
``nvidia-smi`` is missing or fails (no NVIDIA driver, a CPU actor) nothing is sampled and no
figure is given: the job never depends on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

__all__ = ["GpuUtilization", "visible_gpu"]

_QUERY = ("--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")


def visible_gpu(index: int = 0) -> str:
    """The ``nvidia-smi -i`` id of this process's CUDA device ``index``: the entry of ``CUDA_VISIBLE_DEVICES``
    (Ray sets it to the GPUs it gave the actor: physical indices or UUIDs), else ``index`` itself."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)


class GpuUtilization:
    """Samples one GPU's utilisation every ``interval`` seconds in a daemon thread; :meth:`mean` so far."""

    def __init__(self, gpu: str, interval: float = 1.0, command: str = "nvidia-smi") -> None:
        self.gpu, self.interval, self.command = gpu, interval, command
        self._sum, self._n = 0.0, 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> float | None:
        """One reading in percent, or None when ``nvidia-smi`` is missing, fails or prints something else."""
        exe = shutil.which(self.command)
        if exe is None:
            return None
        try:
            out = subprocess.run([exe, *_QUERY, "-i", self.gpu], capture_output=True, text=True, timeout=10)
            return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def start(self) -> bool:
        """Take a first reading and, if it worked, keep sampling in the background; False where it cannot be read."""
        first = self.read()
        if first is None:
            return False
        self._add(first)
        self._thread = threading.Thread(target=self._run, name="nstray-gpu-utilization", daemon=True)
        self._thread.start()
        return True

    def _add(self, value: float) -> None:
        with self._lock:
            self._sum += value
            self._n += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self.read()
            if value is not None:
                self._add(value)

    def mean(self) -> float | None:
        """Mean utilisation in percent over the readings so far (None before the first)."""
        with self._lock:
            return round(self._sum / self._n, 1) if self._n else None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 11)
