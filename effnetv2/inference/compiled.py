"""``torch.compile`` with inductor's weight freezing that really freezes, for the inference copies.

Freezing turns the weights into constants, so inductor prepacks them for oneDNN (fp32, bf16, int8) and fuses
conv + SiLU / conv + add epilogues. But dynamo decides whether parameters are constants from the *global*
``torch._inductor.config.freezing`` when it traces, at the first call, and again at each recompile (a new batch
size): ``torch.compile(m, options={"freezing": True})`` leaves them as graph inputs, so nothing is prepacked, and
PT2E int8 graphs fail to compile (``onednn.qconv_prepack`` on fake tensors). :class:`FrozenCompiled` runs every call
under the global flag instead.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


def freezing() -> contextlib.AbstractContextManager:
    """Inductor's global freezing flag, for the duration of a call that may compile."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


class FrozenCompiled(nn.Module):
    """``torch.compile(module)`` whose calls run with weight freezing on; for inference (``torch.no_grad`` or
    ``torch.inference_mode``: freezing applies to graphs compiled without autograd only).

    ``_orig_mod`` is the uncompiled module, as for ``torch.compile``'s own wrapper; other attributes
    (``num_classes``, ``pretrained_cfg``, ``forward_features``, ...) come from it (uncompiled).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module
        object.__setattr__(self, "_compiled", torch.compile(module))  # not a submodule: _orig_mod holds the weights

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with freezing():
            return self._compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # read __dict__ directly: while copying or unpickling, _modules may not exist yet
            original = self.__dict__.get("_modules", {}).get("_orig_mod")
            if original is None:
                raise
            return getattr(original, name)

    def train(self, mode: bool = True) -> FrozenCompiled:
        self._orig_mod.train(mode)  # the inference copies refuse mode=True with their own message
        self.training = mode
        return self


__all__ = ["FrozenCompiled", "freezing"]
