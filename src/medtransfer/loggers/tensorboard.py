"""A TensorBoard logger for comparing runs: one event file per run (fit, test and the HPARAMS entry all
go to it), named in a multirun by the job's swept overrides, and an HPARAMS entry written once, at the
end, with the run's real metrics (Lightning's writes it at the start, with a placeholder `hp_metric`).

Lightning closes the event writer at the end of `fit` and of `test`; the next write then opens a new
event file, so a run used to leave three (fit, test, HPARAMS). Here `finalize` only flushes, and the
command closes the writer once, with `close()`, when the run is done."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from medtransfer.utils.run_name import file_safe, job_naming


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
    """name_by_overrides: in a multirun, events go to `<save_dir>/<name>/<swept overrides>/`, so that
    `tensorboard --logdir <sweep dir>` lists each job by what differs (`0/tensorboard/finetune=full,…`);
    a single run keeps `<save_dir>/<name>/` (its directory gives task name and time)."""

    def __init__(self, save_dir: str | Path, *args, name_by_overrides: bool = True, **kwargs):
        kwargs.setdefault("default_hp_metric", False)
        self.run_name, self.swept_keys = job_naming(save_dir) if name_by_overrides else (None, [])
        if self.run_name:
            kwargs["version"] = file_safe(self.run_name)
        super().__init__(save_dir, *args, **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        """Kept for hparams.yaml; the HPARAMS summary waits for `log_hparams_with_metrics`."""
        self.hparams.update(params if isinstance(params, dict) else vars(params))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush (and write hparams.yaml), but keep the event file open for the test and HPARAMS; a run
        that failed or was interrupted closes it."""
        if self._experiment is not None:
            self.experiment.flush()
            if status != "success":
                self.close()
        if status == "success":
            self.save()

    @rank_zero_only
    def close(self) -> None:
        if self._experiment is not None:
            self._experiment.close()
            self._experiment = None

    @rank_zero_only
    def log_hparams_with_metrics(
        self, params: Mapping, metrics: Mapping[str, float], swept: Iterable[str] = ()
    ) -> None:
        """The HPARAMS tab entry: `params` (flattened, in their order) against `metrics`, whose values
        TensorBoard reads from the scalars of the same tags (logged during the run). The `swept` keys are
        marked as differing: TensorBoard lists those first, then the others, each part by name."""
        from tensorboard.plugins.hparams import plugin_data_pb2
        from torch.utils.tensorboard.summary import hparams

        writer = self.experiment._get_file_writer()
        exp, ssi, sei = hparams(flatten(params), dict(metrics))
        data = exp.value[0].metadata.plugin_data
        content = plugin_data_pb2.HParamsPluginData.FromString(data.content)
        swept = set(swept)
        for info in content.experiment.hparam_infos:
            info.differs = info.name in swept
        data.content = content.SerializeToString()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        writer.flush()
