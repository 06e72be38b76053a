"""The command line of the Hydra commands: overrides Hydra's grammar cannot read (a path holding `=`,
parentheses or brackets, as in Lightning's `epoch=3-step=120.ckpt` or a folder `Chest X-Ray (2)`) are
caught before Hydra starts and answered with the quoted form that works; values are quoted the same way
where medtransfer writes overrides itself (resume). An experiment preset's data values meet a data source
chosen on the command line (`data=folder experiment=pneumonia`): what is used and what not is said."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict

from medtransfer.utils.console import print_error, print_warning
from medtransfer.utils.errors import ConfigError


def quoted_override(key: str, value: object) -> str:
    """`key="value"`: an override Hydra reads as the literal string `value`, whatever it holds (`=`,
    spaces, parentheses, brackets, commas). Hydra's quoted strings take the other quote character inside;
    a value holding both gets its double quotes escaped."""
    text = str(value)
    if '"' not in text:
        return f'{key}="{text}"'
    if "'" not in text:
        return f"{key}='{text}'"
    return '{}="{}"'.format(key, text.replace('"', '\\"'))


def parse_error(override: str) -> str | None:
    """The first line of Hydra's error for an override it cannot parse; None when it parses."""
    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException as err:
        return str(err).splitlines()[0]
    return None


def unreadable_override_message(override: str, reason: str) -> str:
    """What to tell the user about one override Hydra cannot parse: the value, why, and the quoted form
    to paste (quoted once more for the shell)."""
    key, sep, value = override.partition("=")
    if not sep:
        return (
            f"{override!r} is not a Hydra override (key=value).\n"
            f"Hydra says: {reason}\nWrite it as key=value, e.g. data.root=my_images."
        )
    fixed = quoted_override(key, value)
    if parse_error(fixed) is not None:
        return f"{key}={value!r}: Hydra cannot read this value ({reason})."
    return (
        f"{key}: Hydra cannot read the value {value!r} as written (characters such as = ( ) [ ] , or "
        "spaces have a meaning in its override grammar).\n"
        f"Quote the value for Hydra, and the whole override for the shell:\n  {shlex.quote(fixed)}"
    )


def check_overrides(overrides: Sequence[str]) -> None:
    """Raise ConfigError, with the quoted form that works, for the first override Hydra cannot parse."""
    for override in overrides:
        reason = parse_error(override)
        if reason is not None:
            raise ConfigError(unreadable_override_message(override, reason))


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Called by each Hydra command's console entry point before Hydra starts: an override Hydra cannot
    parse prints medtransfer's message (no traceback) and exits with code 2. `argv` defaults to
    sys.argv[1:]; Hydra's own flags (-m, --cfg job, -cn NAME ...) are told apart by Hydra's parser."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        overrides = get_args_parser().parse_known_args(args)[0].overrides
    except SystemExit:  # a malformed Hydra flag: Hydra's own parser reports it when it runs
        return
    try:
        check_overrides(overrides)
    except ConfigError as err:
        print_error(str(err), title="medtransfer: cannot read the command line")
        raise SystemExit(2) from None


def user_override(key: str) -> str | None:
    """The value the user gave `key` on the command line of the running Hydra job (the last one), or None
    when not given or outside a Hydra run."""
    if not HydraConfig.initialized():
        return None
    given = [
        o.split("=", 1)[1] for o in HydraConfig.get().overrides.task if o.lstrip("+~").startswith(f"{key}=")
    ]
    return given[-1] if given else None


def config_file(group: str, option: str) -> Path | None:
    """The YAML file of `option` in config group `group`, from the running Hydra app's file search path
    (the package's conf/ and hydra.searchpath folders), or None."""
    for source in HydraConfig.get().runtime.config_sources:
        path = Path(source.path) / group / f"{option}.yaml"
        if source.schema == "file" and path.is_file():
            return path
    return None


def experiment_source(experiment: DictConfig) -> str | None:
    """The data source an experiment file selects (`- override /data: medmnist` in its defaults), or None."""
    for entry in experiment.get("defaults") or []:
        if isinstance(entry, DictConfig):
            for key, value in entry.items():
                if str(key).replace("override", "").strip().lstrip("/") == "data":
                    return str(value)
    return None


def reconcile_experiment_data(
    data_cfg: DictConfig,
    experiment: str,
    experiment_data: DictConfig,
    made_for: str | None,
    chosen: str,
    source_keys: set[str] | None,
    user_keys: set[str],
) -> str | None:
    """When the data source chosen on the command line (`chosen`) is not the one experiment=`experiment` is
    made for (`made_for`; None: it names none): the experiment's `data:` values that the chosen source has
    no option for (`source_keys`; None: unknown) are removed from `data_cfg`, in place; those it does
    take, unless the user set them (`user_keys`), stay. Returns the message that says both, or None."""
    if made_for == chosen:
        return None
    dropped = sorted(k for k in experiment_data if source_keys is not None and k not in source_keys)
    kept = sorted(k for k in experiment_data if k not in dropped and k not in user_keys)
    with open_dict(data_cfg):
        for key in dropped:
            data_cfg.pop(key, None)
    if not dropped and not kept:
        return None
    lines = [
        f"experiment={experiment} sets data values"
        + (f" for data={made_for}" if made_for else "")
        + f"; the data is data={chosen}, as the command line chose:"
    ]
    if dropped:
        values = ", ".join(f"data.{k}={OmegaConf.to_container(experiment_data)[k]}" for k in dropped)
        lines.append(f"  not used (data={chosen} has no such option): {values}")
    if kept:
        values = ", ".join(f"data.{k}={data_cfg[k]}" for k in kept)
        lines.append(f"  taken from the experiment: {values}; set data.KEY=VALUE to change one")
    return "\n".join(lines)


def check_experiment_data(cfg: DictConfig) -> None:
    """In a Hydra run with experiment=NAME and data=SOURCE both given: `reconcile_experiment_data` on
    cfg.data, its message shown in a yellow panel."""
    if not HydraConfig.initialized():
        return
    runtime = HydraConfig.get().runtime
    experiment, chosen = runtime.choices.get("experiment"), runtime.choices.get("data")
    user = [o.lstrip("+~") for o in HydraConfig.get().overrides.task]
    if not experiment or not chosen or not any(o.startswith("data=") for o in user):
        return
    experiment_path = config_file("experiment", experiment)
    if experiment_path is None:
        return
    preset = OmegaConf.load(experiment_path)
    source_path = config_file("data", chosen)
    message = reconcile_experiment_data(
        cfg.data,
        experiment,
        preset.get("data") or OmegaConf.create({}),
        experiment_source(preset),
        chosen,
        set(OmegaConf.load(source_path)) if source_path else None,
        {o.split("=", 1)[0].removeprefix("data.") for o in user if o.startswith("data.")},
    )
    if message:
        print_warning(message, title="medtransfer: experiment and data")
