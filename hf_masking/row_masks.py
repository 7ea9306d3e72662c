"""Which mask each row of a mixed-mask batch uses, as the masked layers see it (see `mixed_batch`)."""

from __future__ import annotations

from typing import Any

import torch

# The rows of the trainable mask compute with its current scores (never cached: they change).
SCORES = "scores"


class RowMasks:
    """Which mask each row uses: ``sources`` maps each name to None (no mask), `SCORES`, or
    ``{layer: FixedMask}``; `groups` gives the rows of each name for a layer's input."""

    def __init__(self, names: list[str | None], sources: dict[str | None, Any], kernel: str) -> None:
        self.names = list(names)
        self.sources = sources
        self.kernel = kernel
        self._unique = list(dict.fromkeys(self.names))
        self._ids = torch.tensor([self._unique.index(name) for name in self.names], dtype=torch.long)
        self._groups: dict[tuple[int, str], list[tuple[str | None, torch.Tensor | None]]] = {}
        # Each name's examples as one run, in batch order (the batch sorted by mask), or None.
        runs: list[tuple[str | None, int, int]] = []
        for index, name in enumerate(self.names):
            if runs and runs[-1][0] == name:
                runs[-1] = (name, runs[-1][1], index + 1)
            else:
                runs.append((name, index, index + 1))
        self._runs = runs if len(runs) == len(self._unique) else None

    def spans(self, rows: int) -> list[tuple[str | None, int, int]] | None:
        """(name, first row, end row) per mask in batch order, for an input of `rows` rows, where the batch
        holds each mask's examples together (sorted by mask: then layers take slices, not gathers); else None."""
        if self._runs is None or rows % len(self.names):
            return None
        scale = rows // len(self.names)
        return [(name, start * scale, end * scale) for name, start, end in self._runs]

    def groups(self, rows: int, device: torch.device) -> list[tuple[str | None, torch.Tensor | None]]:
        """(name, row indices) per mask for an input of `rows` rows; indices are None when one mask has them all."""
        key = (rows, str(device))
        if key not in self._groups:
            examples = len(self.names)
            if rows % examples:
                raise ValueError(
                    f"A masked layer got an input of {rows} rows for {examples} mask names; mask_names needs one "
                    "name per example, and the model must keep each example's rows together."
                )
            ids = self._ids.repeat_interleave(rows // examples) if rows != examples else self._ids
            if len(self._unique) == 1:
                self._groups[key] = [(self._unique[0], None)]
            else:
                self._groups[key] = [
                    (name, torch.nonzero(ids == index).view(-1).to(device)) for index, name in enumerate(self._unique)
                ]
        return self._groups[key]
