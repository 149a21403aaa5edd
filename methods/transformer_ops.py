"""What the transformer PTQ methods (PTQ4ViT, RepQ-ViT) ask of a quantized model, without architecture names."""
from __future__ import annotations

import torch.nn as nn


def model_label(qmodel: nn.Module) -> str:
    """The registry name create_model recorded on the model, else its class name (for error messages)."""
    for attr in ("model_name", "registry_name"):
        name = getattr(qmodel, attr, None)
        if isinstance(name, str) and name:
            return name
    return type(qmodel).__name__
