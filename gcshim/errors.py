"""Exception and warning types that users can catch or filter."""


def add_context(error: BaseException, context: str) -> None:
    """Say where an error from the user's own code passed through gcshim, leaving its type,
    message and traceback alone (a note where Python has them, 3.11+)."""
    if hasattr(error, "add_note"):
        error.add_note(context)
    elif error.args and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]} [{context}]", *error.args[1:])


def annotate(error: BaseException, context: str) -> None:
    """Prefix an exception's message with where it happened, keeping its type and traceback."""
    if error.args and isinstance(error.args[0], str):
        error.args = (f"{context}: {error.args[0]}", *error.args[1:])
    elif not error.args:
        error.args = (context,)


class GcshimWarning(UserWarning):
    """A behaviour change gcshim made on the user's behalf (e.g. a cache it disabled)."""


class UnsupportedOptionError(TypeError):
    """A checkpoint option that the installed torch does not have."""


class BudgetError(ValueError):
    """A memory budget that no plan can meet; `.plan` holds the measurements."""

    def __init__(self, message: str, plan: object = None) -> None:
        super().__init__(message)
        self.plan = plan


class GcshimConfigError(ValueError):
    """A GCSHIM_* environment variable (or `gcshim run` option) with a value gcshim can't use."""


class PatchedOverError(RuntimeError):
    """remove() refused: another tool wrapped a layer's forward on top of gcshim's, so taking
    gcshim's out would leave checkpointing running inside that tool's wrapper."""


class SideChannelError(RuntimeError):
    """A layer passes a tensor that needs a gradient to later layers other than through its
    outputs, so reentrant checkpointing would lose that gradient, and gcshim may not switch the
    layer to non-reentrant (strict=True, or offload on a torch without non-reentrant offload)."""
