"""Errors that are the user's to fix: the CLI prints them without a traceback."""


class ConfigError(ValueError):
    """An invalid configuration value. The message names the key and what is allowed."""


class TooFewRows(ConfigError):
    """A rule gets fewer rows per round than its definition needs: ``requirement`` says what
    it needs (``"defense=krum needs n > 2f + 2 (...)"``), ``minimum`` how many rows, ``lower``
    which parameter would relax it. ``received`` describes the rows it gets; ``clients`` is
    the clients per round that would give ``minimum`` rows (``minimum`` itself, unless a
    pre-aggregator reduces the rows)."""

    def __init__(
        self, requirement: str, received: str, minimum: int, lower: str, clients: int | None = None
    ) -> None:
        self.requirement, self.received, self.minimum, self.lower = (
            requirement,
            received,
            minimum,
            lower,
        )
        self.clients = minimum if clients is None else clients
        super().__init__(
            f"{requirement}, but {received}: raise fl.clients_per_round to at least "
            f"{self.clients} or lower {lower}."
        )


class DataError(FileNotFoundError):
    """A data set's files are missing or malformed. The message names the path and the fix."""
