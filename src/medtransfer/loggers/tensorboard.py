"""A TensorBoard logger whose HPARAMS entry is written once, at the end, with the run's real metrics
(Lightning's writes it at the start, with a placeholder `hp_metric` or none)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, int | float | str | bool) or v is None:
            out[key] = "null" if v is None else v
        else:
            out[key] = str(v)
    return out


class HParamsTensorBoardLogger(TensorBoardLogger):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(*args, **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        """Kept for hparams.yaml; the HPARAMS summary waits for `log_hparams_with_metrics`."""
        self.hparams.update(params if isinstance(params, dict) else vars(params))

    @rank_zero_only
    def log_hparams_with_metrics(self, params: Mapping, metrics: Mapping[str, float]) -> None:
        """The HPARAMS tab entry: `params` (flattened) against `metrics`, whose values TensorBoard reads
        from the scalars of the same tags (already logged during the run); tags with no scalar yet are
        logged here at the last step."""
        from torch.utils.tensorboard.summary import hparams

        writer = self.experiment._get_file_writer()
        exp, ssi, sei = hparams(flatten(params), dict(metrics))
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        writer.flush()
