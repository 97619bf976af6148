"""``python -m analyze ckpt=<run dir>``: run the analyses that fit a run; figures and metrics go to <run>/analysis/."""

import hydra
from omegaconf import DictConfig

from bilinear.commands import analyze_command
from bilinear.config import run_command


@hydra.main(version_base=None, config_path="../conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    out_dir = run_command(lambda: analyze_command(cfg), write_hint="write the analyses elsewhere with out=<folder>")
    print(out_dir)


if __name__ == "__main__":
    main()
