"""gcshim's settings from environment variables (for `import gcshim.auto` and `gcshim run`).

Values are parsed strictly: anything unexpected is one GcshimConfigError naming the variable,
the value and what it may be. Nothing is evaluated.

    GCSHIM_LAYERS     auto | comma-separated class-name globs and module paths, as
                      apply(layers=...) reads a string ("*DecoderLayer,GPT2Block", "blocks.*")
    GCSHIM_REENTRANT  1/0, true/false, yes/no, on/off
    GCSHIM_EVERY      a positive integer
    GCSHIM_BUDGET     a size: 12GiB, 1.5GB, 800MiB, or bytes
    GCSHIM_OFFLOAD    a boolean, as GCSHIM_REENTRANT
    GCSHIM_DISABLE    a boolean: true turns `import gcshim.auto` into a no-op
    GCSHIM_LOG        debug | info | warning | error: the level of the "gcshim" logger,
                      printed to stderr
    GCSHIM_QUIET      a boolean: true hides the one line printed when gcshim is applied

A GCSHIM_* variable that gcshim does not know is reported once (a GcshimWarning), as is a
setting that ends up doing nothing (layers that match nothing, offload without CUDA, ...).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from ..budget.memory import parse_bytes
from ..errors import GcshimConfigError

VARIABLES = ("GCSHIM_LAYERS", "GCSHIM_REENTRANT", "GCSHIM_EVERY", "GCSHIM_BUDGET",
             "GCSHIM_OFFLOAD", "GCSHIM_DISABLE", "GCSHIM_LOG", "GCSHIM_QUIET")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_LEVELS = ("debug", "info", "warning", "error")


def _bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise GcshimConfigError(f"{name}={text!r}: must be one of {', '.join(_TRUE + _FALSE)}")


def _positive_int(name: str, text: str) -> int:
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise GcshimConfigError(f"{name}={text!r}: must be a positive integer")
    return int(value)


def _layers(name: str, text: str) -> str:
    """The value as given (apply() reads it with the same grammar), once it parses."""
    from ..core.spec import parse_layer_string

    try:
        parse_layer_string(text)
    except ValueError as error:
        raise GcshimConfigError(f"{name}{str(error)[len('layers'):]}") from None
    return text.strip()


def _budget(name: str, text: str) -> int:
    try:
        return parse_bytes(text)
    except (TypeError, ValueError) as error:
        raise GcshimConfigError(f"{name}={text!r}: {error}") from None


def _level(name: str, text: str) -> str:
    value = text.strip().lower()
    if value not in _LEVELS:
        raise GcshimConfigError(f"{name}={text!r}: must be one of {', '.join(_LEVELS)}")
    return value


@dataclass(frozen=True)
class Settings:
    """What the environment asked for; None means "not set" (the caller's choice stands)."""

    layers: Optional[str] = None
    use_reentrant: Optional[bool] = None
    every: Optional[int] = None
    budget: Optional[int] = None
    offload: Optional[bool] = None
    disable: bool = False
    log: Optional[str] = None
    quiet: bool = False

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> Settings:
        env = os.environ if environ is None else environ

        def read(name: str, parse: Any) -> Any:
            text = env.get(name)
            return None if text is None or text == "" else parse(name, text)

        settings = cls(
            layers=read("GCSHIM_LAYERS", _layers),
            use_reentrant=read("GCSHIM_REENTRANT", _bool),
            every=read("GCSHIM_EVERY", _positive_int),
            budget=read("GCSHIM_BUDGET", _budget),
            offload=read("GCSHIM_OFFLOAD", _bool),
            disable=bool(read("GCSHIM_DISABLE", _bool)),
            log=read("GCSHIM_LOG", _level),
            quiet=bool(read("GCSHIM_QUIET", _bool)),
        )
        if settings.every is not None and settings.budget is not None:
            raise GcshimConfigError("GCSHIM_EVERY and GCSHIM_BUDGET: give one or the other")
        return settings

    def given(self) -> Dict[str, str]:
        """The settings that choose what gcshim does, as NAME=value, for messages."""
        named = (("GCSHIM_LAYERS", self.layers), ("GCSHIM_REENTRANT", self.use_reentrant),
                 ("GCSHIM_EVERY", self.every), ("GCSHIM_BUDGET", self.budget),
                 ("GCSHIM_OFFLOAD", self.offload))
        return {name: str(value) for name, value in named if value is not None}

    def apply_options(self, use_reentrant: Optional[bool] = None) -> Dict[str, Any]:
        """Keyword arguments for `gcshim.apply`. `use_reentrant` is the script's own choice
        (e.g. gradient_checkpointing_kwargs); GCSHIM_REENTRANT, when set, overrides it."""
        options: Dict[str, Any] = {"layers": self.layers or "auto"}
        reentrant = self.use_reentrant if self.use_reentrant is not None else use_reentrant
        if reentrant is not None:
            options["use_reentrant"] = reentrant
        if self.every is not None:
            options["every"] = self.every
        if self.offload is not None:
            options["offload"] = self.offload
        return options

    def configure_logging(self) -> None:
        if self.log is None:
            return
        logger = logging.getLogger("gcshim")
        logger.setLevel(self.log.upper())
        if not any(getattr(h, "_gcshim", False) for h in logger.handlers):
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
            handler._gcshim = True  # type: ignore[attr-defined]
            logger.addHandler(handler)


def unknown_variables(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """GCSHIM_* names in the environment that gcshim does not read (a typo does nothing)."""
    env = os.environ if environ is None else environ
    return sorted(name for name in env if name.startswith("GCSHIM_") and name not in VARIABLES
                  and name not in _INTERNAL)


# read by the test suite and tools, not by gcshim itself
_INTERNAL = ("GCSHIM_OLD_TRANSFORMERS", "GCSHIM_MORE_TRANSFORMERS", "GCSHIM_STRESS_CYCLES")
