"""What an analysis gets: one run directory loaded once, with its decomposition computed once and cached.

The per-class decomposition is stored in <run>/analysis/decomposition.safetensors, keyed by the hash of
the weights, so several analyses (and several ``python -m analyze`` calls) share it. Before it is
handed out it is checked against the model's own logits on the test set (claim C1, DESIGN principle 3).

Every exactness check, passed or failed, is recorded in ``RunContext.exactness_checks`` BEFORE a failure
raises, and the analysis runner writes those records to analysis/metrics.json even when the call fails: C1
counts every decomposition attempted, not only those that passed.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from bilinear import checkpoint
from bilinear.config import resolve_device
from bilinear.decompose import BilinearForm, Eigen, decompose_outputs, exactness, reconstruct
from bilinear.errors import ExactnessError
from bilinear.models import load_run_model

DECOMPOSITION = "decomposition.safetensors"


class RunContext:
    """A run directory opened for analysis. Everything heavy is computed lazily, at most once."""

    def __init__(self, run_dir: Path, cfg: DictConfig):
        self.run_dir = Path(run_dir)
        self.cfg = cfg  # the analyze config
        self.run_cfg = checkpoint.load_config(self.run_dir)
        if cfg.get("data_root"):
            OmegaConf.update(self.run_cfg, "data.root", cfg.data_root, force_add=True)
        self.kind: str = self.run_cfg.task.get("kind", "unknown")
        self.device = resolve_device(cfg.get("device", "cpu"))
        # ckpt=<run> out=<dir> puts the analyses elsewhere (reproduce keeps SAE analyses apart from the LM's own)
        self.analysis_dir = Path(cfg.out) if cfg.get("out") and cfg.get("ckpt") else self.run_dir / "analysis"
        self.shared_metrics: dict[str, Any] = {}
        # what -> {rel_error, max_abs_error, tol, passed, run[, error]}: every check made, including failed ones
        self.exactness_checks: dict[str, dict[str, Any]] = {}
        self.model  # noqa: B018 - load now so a bad checkpoint fails before any analysis starts
        if cfg.get("saes"):
            self.saes  # noqa: B018 - and so does an SAE that does not belong to this LM

    @cached_property
    def model(self) -> torch.nn.Module:
        return load_run_model(self.run_dir, self.run_cfg, self.device)

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """The run's training metrics (metrics.json)."""
        return checkpoint.read_json(self.run_dir / checkpoint.METRICS)

    @cached_property
    def image_data(self):
        """The run's dataset (ImageData) on the analysis device, with the run's own subsetting."""
        from bilinear.tasks.image import load_data

        return load_data(self.run_cfg, self.device)

    # --- language-model runs (task kind "lm") ---------------------------------------------------------
    @cached_property
    def tokenizer(self):
        """The run's own tokenizer (<run>/tokenizer.json), so decoding needs no corpus."""
        from bilinear.dataio.tokenizer import load_tokenizer

        return load_tokenizer(self.run_dir)

    @cached_property
    def token_data(self):
        """The run's token cache (held-out tokens in ``.val``); refused if made with another tokenizer."""
        from bilinear.tasks.lm import load_run_tokens

        # build a missing cache only where the analyst named the data root, never where the run says
        return load_run_tokens(self.run_dir, self.run_cfg, self.tokenizer, may_build=bool(self.cfg.get("data_root")))

    @cached_property
    def saes(self):
        """The SAE runs of ``saes=[...]``, each checked against this LM (d_model, layer, weights hash)."""
        from bilinear.analyses.sae_context import open_saes

        return open_saes(self.cfg.get("saes"), self.run_dir, self.model, self._weights_hash, self.device)

    @cached_property
    def form(self) -> BilinearForm:
        """The model's bilinear weights in float64 (the decomposition space is the embedding's output).

        Non-finite weights are an ExactnessError (recorded for C1): NaN would pass the tolerance test."""
        try:
            return self.model.bilinear_form().to(dtype=torch.float64)
        except ExactnessError as e:
            self.record_failure("the model's weights", e)

    def record_failure(self, what: str, err: Exception) -> None:
        """Record a decomposition that could not even be attempted (non-finite weights or eigenvalues), then raise
        ExactnessError naming the run."""
        msg = f"{self.run_dir}: {err}"
        self.exactness_checks[what] = {"run": str(self.run_dir), "rel_error": None, "max_abs_error": None,
                                       "tol": self.exactness_tol, "passed": False, "error": msg}
        raise ExactnessError(msg) from err

    @cached_property
    def class_eigen(self) -> Eigen:
        """Eigendecomposition of Q_c for every class c (output direction = unit vector e_c), checked exact."""
        eig = self._cached_eigen()
        if eig is None:
            form = self.form  # non-finite weights fail here, recorded as such
            try:
                eig = decompose_outputs(form, torch.eye(form.n_outputs, dtype=torch.float64, device=self.device))
            except ExactnessError as e:  # non-finite interaction matrices or eigenvalues
                self.record_failure("the class logits", e)
            self._save_eigen(eig)
        self._check_exactness(eig)
        return eig

    def _cached_eigen(self) -> Eigen | None:
        path = self.analysis_dir / DECOMPOSITION
        if not path.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("weights_sha256") != self._weights_hash:
                    return None
            t = load_file(str(path), device=str(self.device))
        except Exception:  # noqa: BLE001 - a broken cache is recomputed, never trusted
            return None
        return Eigen(t["values"], t["vectors"], t.get("input_vectors"))

    def _save_eigen(self, eig: Eigen) -> None:
        tensors = {"values": eig.values, "vectors": eig.vectors}
        if eig.input_vectors is not None:
            tensors["input_vectors"] = eig.input_vectors
        with checkpoint.atomic_path(self.analysis_dir / DECOMPOSITION) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                      metadata={"weights_sha256": self._weights_hash})

    @cached_property
    def _weights_hash(self) -> str:
        return checkpoint.file_sha256(self.run_dir / checkpoint.WEIGHTS)

    def _check_exactness(self, eig: Eigen) -> None:
        """Logits of the model against sum_i lambda_i (v_i . z)^2 on the real test set (claim C1)."""
        x = self.image_data.test_x
        preds, actual = [], []
        with torch.no_grad():
            for i in range(0, len(x), 1024):
                xb = x[i : i + 1024]
                actual.append(self.model(xb).double())
                preds.append(reconstruct(eig, self.form.to_z(xb)))
        predicted, actual = torch.cat(preds), torch.cat(actual)
        err = exactness(predicted, actual)
        # the top-level numbers first, so a failing check replaces an earlier call's passing ones before it raises
        self.shared_metrics.update({"exactness_max_abs_error": err["max_abs_error"], "exactness_rel_error": err["rel_error"],
                                    "exactness_n_inputs": len(actual)})
        self.require_exact(err, "the class logits")

    @property
    def exactness_tol(self) -> float:
        return float(self.cfg.get("exactness_tol", 1e-4))

    def require_exact(self, err: dict[str, float], what: str) -> None:
        """Record a decomposition's error (``decompose.exactness``) for C1, then raise ExactnessError when its
        relative error exceeds exactness_tol. NaN fails too (``NaN > tol`` would be False)."""
        tol = self.exactness_tol
        rel = err["rel_error"]
        passed = bool(rel <= tol)  # False for NaN
        self.exactness_checks[what] = {"run": str(self.run_dir), "rel_error": rel, "max_abs_error": err["max_abs_error"],
                                       "tol": tol, "passed": passed}
        if not passed:
            msg = (f"{self.run_dir}: the decomposition of {what} does not reproduce the model (relative error {rel:.2e} > "
                   f"{tol:.0e}); refusing to analyse")
            self.exactness_checks[what]["error"] = msg
            raise ExactnessError(msg)

    def check_exact(self, predicted: torch.Tensor, actual: torch.Tensor, what: str) -> dict[str, float]:
        """Compare a reconstruction with the model's own outputs on real inputs (DESIGN principle 3); the error
        goes into the analysis metrics (recorded before a failure raises), and above tolerance the analysis stops."""
        err = exactness(predicted, actual)
        self.require_exact(err, what)
        return {"exactness_max_abs_error": err["max_abs_error"], "exactness_rel_error": err["rel_error"],
                "exactness_n_inputs": len(actual)}
