"""Data errors a user can fix (the CLI prints them without a traceback)."""

from binexp.errors import BinexpError


class DatasetNotFoundError(BinexpError, FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says where binexp looked."""


class DatasetLayoutError(BinexpError, ValueError):
    """A dataset on disk that binexp cannot read as it is laid out; the message says what to change."""


def not_found(name: str, looked_in: list[str], cause: object = None, fix: str | None = None) -> DatasetNotFoundError:
    """`fix`: what to do about it, where it is not a copy under dataset.root or a download (an image folder)."""
    places = "\n".join(f"  {p}" for p in looked_in)
    why = f" ({cause})" if cause else ""
    fix = fix or ("Point dataset.root (or the BINEXP_DATA environment variable) at a folder holding a copy, "
                  "or run where dataset.download (on unless set false) can reach the internet.")
    return DatasetNotFoundError(f"{name} not found{why}. Looked in:\n{places}\n{fix}")
