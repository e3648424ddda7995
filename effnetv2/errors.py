"""Exception types. Each also subclasses the built-in a timm or PyTorch user would catch for the same fault."""


class UnknownModelError(ValueError, RuntimeError):
    """An unknown model name or pretrained tag (timm raises RuntimeError here)."""


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint that cannot be read, or does not fit the model (torch's load_state_dict raises RuntimeError)."""


class ExportError(RuntimeError):
    """An export that failed, or whose outputs differ from the eager model's beyond the tolerance."""
