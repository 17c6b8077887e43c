"""A network from a recipe's model block: the named model, its initial weights, then its inserted layers.

One function for every place that makes a student or teacher network (the training driver, teacher loading,
export/predict/eval from a run's ``preprocess.json``), so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kdlab.engine.checkpoint import fit_weights, read_weights
from kdlab.errors import KDLabError
from kdlab.layers import insert_layers
from kdlab.models import build_model
from kdlab.recipe import ModelSpec


def build_network(
    spec: ModelSpec, num_classes: int, input_shape: Sequence[int], *, initial_weights: bool = True
) -> nn.Module:
    """The untrained network ``spec`` names. ``initial_weights=False`` skips ``spec.weights`` (a run's own
    weights replace them anyway, and the file may be gone when a finished run is exported)."""
    try:
        model = build_model(spec.name, num_classes=num_classes, input_shape=tuple(input_shape), **spec.kwargs)
    except (TypeError, ValueError, OverflowError) as e:
        if ":" in spec.name:  # a user's own factory: its traceback is the useful report
            raise
        first = (str(e).splitlines() or [type(e).__name__])[0]  # torch appends C++ frames on later lines
        raise KDLabError(f"model {spec.name!r} rejects kwargs {spec.kwargs}: {first}") from None
    if spec.weights and initial_weights:  # before inserted layers; a resumed run loads its checkpoint instead
        fit_weights(model, read_weights(spec.weights), f"weights {spec.weights}")
    if spec.insert:
        insert_layers(model, spec.insert, input_shape=tuple(input_shape), num_classes=num_classes)
    return model
