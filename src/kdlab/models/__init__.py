"""Model zoo. Builders have the signature ``fn(*, num_classes, input_shape, **kwargs) -> nn.Module``.

Importing this package registers the CIFAR zoo (resnet, wrn, vgg, mobilenetv2, shufflenet) and the small
models in ``kdlab.registry.MODELS``. ``build_model`` also resolves ``timm:NAME``, ``torchvision:NAME`` and
``package.module:function``. Each family module documents its hookable module paths (stage ends,
penultimate layer == the input of ``fc``).
"""

from kdlab.models import (  # noqa: F401  (registration)
    hf,  # noqa: F401  (text models: hf_classifier, text_transformer, text_cnn, bag_of_embeddings)
    mobilenetv2,
    resnet,
    shufflenet,
    small,
    vgg,
    wrn,
)
from kdlab.models.build import build_model

__all__ = ["build_model"]
