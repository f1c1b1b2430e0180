"""Exception and warning types that users can catch or filter."""


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
