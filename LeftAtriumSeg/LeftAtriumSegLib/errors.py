"""Errors that are the user's to fix; the command line prints them as one line."""

import re


class LeftAtriumSegError(Exception):
    """Base of every error caused by input or model files rather than by a bug."""


class InputImageError(LeftAtriumSegError):
    """An image file that is missing, unreadable or unusable for segmentation."""


class ModelFileError(LeftAtriumSegError):
    """A model file that is missing, corrupt, unsafe or not a LeftAtriumSeg model."""


def error_line(error: Exception, *paths) -> str:
    """``PATH: problem`` on one line, naming one file once: the message (ITK's run over several
    lines) as it is when it names one of ``paths`` already, else with the first of them in front."""
    message = re.sub(r"\s*\n\s*", " ", str(error).strip())  # spaces within a path stay as they are
    message = re.sub(r"\(0x[0-9a-f]+\)", "", message)  # ITK's object addresses: NrrdImageIO(0x55dc...)
    return message if any(str(path) in message for path in paths if path) else f"{paths[0]}: {message}"


def some_names(names: list[str], shown: int = 10) -> str:
    """``a, b, c`` and, past ``shown`` names, ``..., and N more``: case names for a message."""
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
