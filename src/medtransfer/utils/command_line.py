"""The command line of the Hydra commands: overrides Hydra's grammar cannot read (a path holding `=`,
parentheses or brackets, as in Lightning's `epoch=3-step=120.ckpt` or a folder `Chest X-Ray (2)`) are
caught before Hydra starts and answered with the quoted form that works; values are quoted the same way
where medtransfer writes overrides itself (resume)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from medtransfer.utils.console import print_error
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


def _parses(override: str) -> bool:
    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return False
    return True


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
    if not _parses(fixed):
        return f"{key}={value!r}: Hydra cannot read this value ({reason})."
    return (
        f"{key}: Hydra cannot read the value {value!r} as written (characters such as = ( ) [ ] , or "
        "spaces have a meaning in its override grammar).\n"
        f"Quote the value for Hydra, and the whole override for the shell:\n  {shlex.quote(fixed)}"
    )


def check_overrides(overrides: Sequence[str]) -> None:
    """Raise ConfigError, with the quoted form that works, for the first override Hydra cannot parse."""
    try:
        OverridesParser.create().parse_overrides(list(overrides))
        return
    except OverrideParseException:
        pass
    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except OverrideParseException as err:
            raise ConfigError(unreadable_override_message(override, str(err).splitlines()[0])) from None


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
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    given = [
        o.split("=", 1)[1] for o in HydraConfig.get().overrides.task if o.lstrip("+~").startswith(f"{key}=")
    ]
    return given[-1] if given else None
