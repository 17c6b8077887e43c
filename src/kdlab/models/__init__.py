"""Model zoo. Builders have the signature ``fn(*, num_classes, input_shape, **kwargs) -> nn.Module``."""
