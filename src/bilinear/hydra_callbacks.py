"""Hydra callbacks of ``python -m train`` (registered in conf/train.yaml under ``hydra.callbacks``).

Hydra creates the run folder itself, before our code runs, so a folder that cannot be written would end in
Hydra's traceback. Checking it here, before Hydra touches it, turns that into our one-line error.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def _writable_or_exit(folder: str, option: str) -> None:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        print(f"error: cannot write {path}: {reason}; choose a writable {option}=<folder>", file=sys.stderr)
        sys.exit(2)


class CheckOutputDir(Callback):
    """Refuse an output folder that cannot be created or written, with one line and exit status 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable_or_exit(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable_or_exit(str(config.hydra.sweep.dir), "hydra.sweep.dir")
