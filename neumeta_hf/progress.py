"""Progress bars: tqdm, redrawn at most every few seconds when the output is a log file rather than a terminal."""

import sys

from tqdm.auto import tqdm


def progress_bar(*args, **kwargs) -> tqdm:
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 10.0)
    return tqdm(*args, **kwargs)
