"""Progress of the long offline tools (perplexity, calibration, conversion, quantization,
profiling, predictor training): one tqdm bar on stderr with a total, a rate and an ETA.

    with progress.bar(total=len(chunks), desc="perplexity", unit="chunk", enabled=show) as b:
        for c in chunks:
            ...
            b.update(1)

A disabled bar is tqdm's own no-op (``update``, ``set_postfix`` and ``close`` still work),
so callers never test for None. Lines meant for stdout while a bar is drawn go through
:func:`write`, which lifts the bar, prints the line and redraws it.
"""
from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int, desc: str, unit: str = "it", enabled: bool = True, *, nbytes: bool = False) -> tqdm:
    """A progress bar on stderr counting to `total` `unit`s ("12/40 [00:30<01:00, ...]");
    with `nbytes`, sizes in KiB/MiB/GiB. A no-op bar when not `enabled`."""
    kw = dict(unit="B", unit_scale=True, unit_divisor=1024) if nbytes else dict(unit=unit)
    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kw)


def write(line: str) -> None:
    """Print `line` on stdout without tearing a bar drawn on the same terminal."""
    tqdm.write(line, file=sys.stdout)
