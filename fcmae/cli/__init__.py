"""Command-line entry points (Hydra) and what they share.

Each job is a thin ``@hydra.main`` function in ``fcmae/cli/<job>.py`` over an importable
function. :func:`run_hydra_job` wraps it so that configuration errors (an unknown group option,
an unknown key, a bad value found by the job's validator) end in one clear line on stderr and
exit status 2, *before* Hydra creates a run directory or any work starts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fcmae.registry import MODEL_SIZES

# conf/ lives at the repository root; the package is installed editable.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
HYDRA_VERSION_BASE = "1.3"

_registered = False


def register_configs() -> None:
    """Register the ``model`` group from the registry: one option per size, naming only it.

    Depths and widths stay in :data:`fcmae.MODEL_SIZES`; the FCMAE settings shared by all sizes
    (mask ratio, decoder, ...) live under ``model:`` in each job's primary config.
    """
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name in MODEL_SIZES:
        cs.store(group="model", name=name, node={"size": name})
    _registered = True


def _is_flag(arg: str) -> bool:
    return arg.startswith("-")


def _one_line(err: BaseException, group_options: Callable[[str], list[str]]) -> str:
    """The first line of a Hydra/OmegaConf error, plus the valid options when useful."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if first.startswith("In '") and "': " in first:  # "In 'pretrain': Could not find ..."
        first = first.split("': ", 1)[1]
    if "Could not find '" in first:
        missing = first.split("Could not find '", 1)[1].split("'", 1)[0]
        group, _, option = missing.rpartition("/")
        options = group_options(group) if group else []
        if options:
            return f"unknown {group} option {option!r}; choose one of: {', '.join(options)}"
    if first.startswith("Could not override '") or first.startswith("Could not append"):
        key = first.split("'")[1]
        return f"unknown config key {key!r}; check the spelling (+{key}=VALUE adds a new key)"
    return first


def preflight(
    config_name: str, overrides: list[str], validate: Callable[[dict[str, Any]], Any]
) -> Any:
    """Compose ``config_name`` with ``overrides`` and run ``validate`` on the plain dict.

    Raises ``ValueError`` with one line for any configuration error; returns what
    ``validate`` returns.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base=HYDRA_VERSION_BASE):
        loader = GlobalHydra.instance().config_loader()

        def options(group: str) -> list[str]:
            found = loader.get_group_options(group)
            if group == "model":  # registry order: smallest to largest
                return [n for n in MODEL_SIZES if n in found]
            return sorted(found)

        try:
            cfg = compose(config_name, overrides=overrides)
            plain = OmegaConf.to_container(cfg, resolve=True)
        except (Exception, OmegaConfBaseException) as err:
            raise ValueError(_one_line(err, options)) from err
    return validate(plain)


def run_hydra_job(
    prog: str,
    config_name: str,
    hydra_main: Callable[[], Any],
    validate: Callable[[Mapping], Any],
    argv: list[str] | None = None,
) -> None:
    """Validate the command line, then hand it to the ``@hydra.main`` function.

    Command lines with Hydra flags (``--help``, ``--cfg``, ``--multirun``...) go to Hydra
    unchecked. A configuration error exits with status 2 and one line on stderr.
    """
    register_configs()
    args = sys.argv[1:] if argv is None else argv
    if not any(_is_flag(a) for a in args):
        try:
            preflight(config_name, args, validate)
        except ValueError as err:
            sys.stderr.write(f"{prog}: error: {err}\n")
            raise SystemExit(2) from None
    hydra_main()
