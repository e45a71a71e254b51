"""One calibration batch through a model, whatever form the user's loader gives it in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn


def run_batch(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping (a Hugging Face ``BatchEncoding`` too), ``model(*batch)`` for
    a tuple or list of positional inputs, ``model(batch)`` otherwise."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)
