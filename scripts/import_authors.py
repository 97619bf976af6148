"""Turn the paper authors' released LM and SAEs (their HF format) into run directories of this suite (issue 6).

    python scripts/import_authors.py lm  <folder | owner/name>            --out runs/imported/ts-lm
    python scripts/import_authors.py sae <folder | owner/name/<sae dir>>  --lm runs/imported/ts-lm \\
        --out runs/imported/ts-sae-l3-mlp_in

e.g. ``lm tdooms/ts-medium`` and ``sae tdooms/ts-medium-scope/3-mlp-in-x4-k30`` when online. Prints the run
directory. Bad input is one ``error: ...`` line and exit status 2. The mapping is in bilinear/importer.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without `pip install -e .`

from bilinear.config import run_command  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    lm = sub.add_parser("lm", help="a language model (config.json + model.safetensors)")
    lm.add_argument("src", help="local folder or hub repo id, e.g. tdooms/ts-medium")
    lm.add_argument("--tokenizer", default=None,
                    help="their tokenizer.json (file, folder or repo id); default: beside the weights, else the repo "
                         "their config names (ts-4096 -> tdooms/ts-tokenizer-4096)")
    lm.add_argument("--task", choices=("tinystories", "fineweb"), default=None,
                    help="the corpus the run evaluates on (default: config.json's dataset, else tinystories)")
    sae = sub.add_parser("sae", help="an SAE, tied to an imported LM run")
    sae.add_argument("src", help="local folder or hub path, e.g. tdooms/ts-medium-scope/3-mlp-in-x4-k30")
    sae.add_argument("--lm", required=True, help="the LM run directory the SAE reads (made by `lm`)")
    lm.add_argument("--data-root", default="data", help="the run's data root (corpus and token cache)")
    sae.add_argument("--data-root", default=None, help="where the LM's token cache lives (default: the LM run's)")
    for p in (lm, sae):
        p.add_argument("--out", required=True, help="the run directory to write")
        p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from bilinear import importer

    if args.kind == "lm":
        out = importer.import_lm(args.src, args.out, tokenizer=args.tokenizer, data_root=args.data_root,
                                 task=args.task, revision=args.revision, overwrite=args.overwrite)
    else:
        out = importer.import_sae(args.src, args.out, args.lm, data_root=args.data_root, revision=args.revision,
                                  overwrite=args.overwrite)
    from bilinear import checkpoint

    for note in checkpoint.read_json(out / checkpoint.METRICS).get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    return out


if __name__ == "__main__":
    print(run_command(main))
