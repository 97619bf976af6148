"""``python -m train task=mnist ...``: train one model; the run directory's path is the last line printed."""

import hydra
from omegaconf import DictConfig

from bilinear.commands import train_command
from bilinear.config import run_command


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = run_command(lambda: train_command(cfg), write_hint="choose a writable hydra.run.dir=<folder>")
    print(run_dir)


if __name__ == "__main__":
    main()
