"""Exception types. Each also subclasses the built-in a timm or PyTorch user would catch for the same fault."""


class UnknownModelError(ValueError, RuntimeError):
    """An unknown model name or pretrained tag (timm raises RuntimeError here)."""


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint that cannot be read, or does not fit the model (torch's load_state_dict raises RuntimeError)."""


class ExportError(RuntimeError):
    """An export that failed, or whose outputs differ from the eager model's beyond the tolerance."""


class ClassifierNotLoadedWarning(UserWarning):
    """A checkpoint's classifier did not fit the model and was not loaded: the model keeps a fresh one.

    ``checkpoint_classes`` and ``model_classes`` say why; the command line turns this warning into an error, since
    predictions from a fresh classifier are meaningless.
    """

    def __init__(self, message: str, checkpoint_classes: int = 0, model_classes: int = 0) -> None:
        super().__init__(message)
        self.checkpoint_classes = checkpoint_classes
        self.model_classes = model_classes


class DistributedEnvError(ValueError):
    """An incomplete or malformed torchrun environment (``WORLD_SIZE=2`` without ``MASTER_ADDR``...), or a process
    group that cannot be joined (torch raises ValueError for a missing variable)."""
