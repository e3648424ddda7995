"""``torch.compile`` with inductor's weight freezing that really freezes, for the inference copies.

Freezing turns the weights into constants, so inductor prepacks them for oneDNN (fp32, bf16, int8) and fuses
conv + SiLU / conv + add epilogues. But dynamo decides whether parameters are constants from the *global*
``torch._inductor.config.freezing`` when it traces, at the first call, and again at each recompile (a new batch
size): ``torch.compile(m, options={"freezing": True})`` leaves them as graph inputs, so nothing is prepacked, and
PT2E int8 graphs fail to compile (``onednn.qconv_prepack`` on fake tensors). :class:`FrozenCompiled` runs every call
under the global flag instead.

It also compiles with inductor's C++ wrapper (``cpp_wrapper``): the generated code calls its kernels from C++ rather
than Python, which saves the Python cost of each of a few hundred kernel calls per image. On an AMX Xeon
(BENCHMARKS.md, ``scripts/cpp_wrapper_ab.py``) that is 4-11 % at batch 1 and 1-5 % at batch 8, with the same
outputs; int8 compiles as fast, bf16 took 8-19 s longer for rw_m in one run. CUDA graphs, which
``"max-autotune"`` and ``"reduce-overhead"`` ask for, do not apply on the CPU (and the C++ wrapper warns that it
skips them): they are left out of those modes' options.

``compile=`` of :func:`effnetv2.optimize_for_inference` takes ``True`` or one of ``torch.compile``'s modes
(:func:`compile_mode`): ``"max-autotune"`` lets inductor time its own C++ GEMM kernels against oneDNN's for the
linear layers (squeeze-excite, classifier) and keep the faster; in three runs on an AMX Xeon (BENCHMARKS.md) up to
24 % more images per second (bf16 3-12 %; int8 from nothing at batch 8 to 24 % at batch 1), for 1.6 to 3.5 times the
compile time.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Union

import torch
from torch import nn


def freezing() -> contextlib.AbstractContextManager:
    """Inductor's global freezing flag, for the duration of a call that may compile."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


def compile_mode(compile: Union[bool, str, None]) -> Optional[str]:
    """The ``torch.compile`` mode that ``compile=`` asks for: None (do not compile), ``"default"`` for ``True``, or
    the mode named (``"max-autotune"``, ...: ``torch._inductor.list_mode_options()``)."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if not isinstance(compile, str):
        raise TypeError(f"compile takes True, False or a torch.compile mode name, got {compile!r}")
    modes = list(torch._inductor.list_mode_options())
    if compile not in modes:
        raise ValueError(f"compile={compile!r} is not a torch.compile mode; use True, False or one of {modes}")
    return compile


def cpu_inductor_options(mode: str) -> dict[str, Any]:
    """Inductor's options for ``mode`` on the CPU: the mode's own, less CUDA graphs, with the C++ wrapper."""
    options = dict(torch._inductor.list_mode_options(mode))
    options.pop("triton.cudagraphs", None)
    options["cpp_wrapper"] = True
    return options


class FrozenCompiled(nn.Module):
    """``torch.compile(module)`` whose calls run with weight freezing on; for inference (``torch.no_grad`` or
    ``torch.inference_mode``: freezing applies to graphs compiled without autograd only).

    ``_orig_mod`` is the uncompiled module, as for ``torch.compile``'s own wrapper; other attributes
    (``num_classes``, ``pretrained_cfg``, ``forward_features``, ...) come from it (uncompiled).
    """

    def __init__(self, module: nn.Module, mode: Union[bool, str] = "default") -> None:
        super().__init__()
        self._orig_mod = module
        self.mode = compile_mode(mode)
        if self.mode is None:
            raise ValueError(f"FrozenCompiled compiles: mode takes True or a torch.compile mode name, got {mode!r}")
        # not a submodule: _orig_mod holds the weights
        object.__setattr__(self, "_compiled", torch.compile(module, options=cpu_inductor_options(self.mode)))

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

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


__all__ = ["FrozenCompiled", "compile_mode", "cpu_inductor_options", "freezing"]
