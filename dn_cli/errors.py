"""The errors `dn` reports to users: one line each, turned into a message at the CLI edge."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if the message is empty)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def reason(error: BaseException, unexpected: str = "") -> str:
    """One line for an error: dn's own message, or the kind and message of any other
    (``unexpected`` before it, for errors dn did not foresee)."""
    if isinstance(error, DnError):
        return first_line(error)
    return f"{unexpected}{type(error).__name__}: {first_line(error)}"


def plural(count: int, noun: str) -> str:
    """``1 input``, ``3 inputs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


class DnError(Exception):
    """Base of every error that is the user's input, not a bug in dn."""


class GeometryError(DnError):
    """Tile size, margin and model stride do not fit together."""


class ModelError(DnError):
    """A model file that cannot be loaded or is not a generator dn knows."""


class InputError(DnError):
    """An input image that cannot be read."""


class OutputError(DnError):
    """An output that cannot or may not be written."""


class DeviceMemoryError(DnError):
    """A batch of tiles does not fit in the device's memory."""
