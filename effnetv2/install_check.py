"""Is the installed torchvision built for the installed torch? Asked at ``import effnetv2``, before torchvision loads.

A torchvision built for another torch does not fail politely: ``import torchvision`` raises ``RuntimeError:
operator torchvision::nms does not exist`` deep in its own code (a CPU-only torch beside a CUDA torchvision, or the
other way round, fails the same way, or with "compiled with different CUDA major versions"). Two checks turn that
into one :class:`TorchvisionMismatchError` (an ``ImportError``) whose message names both versions and the command
that fixes it:

- :func:`check_install`, at ``import effnetv2``: the versions that ``importlib.metadata`` reads from the installed
  packages, against torchvision's published pairs (:data:`TORCHVISION_FOR_TORCH`), without importing either;
- a guard on the first ``import torchvision``, wherever it happens, for the pairs whose versions match but whose
  builds do not.

Left uncaught (``effnetv2 info``, a script), the error prints as that one line, not as a traceback.
"""

from __future__ import annotations

import importlib.abc
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from types import ModuleType
from typing import Any, Optional

# torchvision's README table (github.com/pytorch/vision, "Installation"): torch 2.m pairs with torchvision 0.(m+15)
# since torch 2.1 (2.0 went with 0.15), and each patch release with the same patch (2.13.0 ↔ 0.28.0, 2.14.1 ↔ 0.29.1).
# One row for every torch that pyproject.toml admits; a torch outside the table is not judged by its version.
TORCHVISION_FOR_TORCH: dict[str, str] = {f"2.{m}": f"0.{m + 15}" for m in range(1, 15)}

# The pair effnetv2 is tested with: docs/install.md pins it, and the fix for a torch the table does not know.
TESTED_PAIR: tuple[str, str] = ("2.14.1", "0.29.1")

PYTORCH_INDEX = "https://download.pytorch.org/whl"  # + "/cpu", "/cu128", ...: one index per build

_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


class TorchvisionMismatchError(ImportError):
    """torchvision is built for another torch (version or build); the message is one line with the fix."""


def check_versions(torch_version: str, torchvision_version: str) -> None:
    """Raise :class:`TorchvisionMismatchError` unless the two versions are a published pair.

    Versions as ``importlib.metadata`` gives them (``"2.13.0+cpu"``); a torch the table does not know passes.
    """
    expected = TORCHVISION_FOR_TORCH.get(_minor(torch_version))
    if expected is None or _minor(torchvision_version) == expected:
        return
    raise TorchvisionMismatchError(
        f"torchvision {torchvision_version} is installed beside torch {torch_version}, which needs torchvision "
        f"{expected}.x; fix it with: {fix_command(torch_version)}"
    )


def matching_torchvision(torch_version: str) -> Optional[str]:
    """The torchvision release built for ``torch_version`` (``"2.13.0+cpu"`` → ``"0.28.0"``); None if unknown."""
    minor = TORCHVISION_FOR_TORCH.get(_minor(torch_version))
    match = _RELEASE.match(torch_version)
    if minor is None or match is None:
        return None
    return f"{minor}.{match.group(3) or 0}"


def fix_command(torch_version: str, *, reinstall: bool = False) -> str:
    """The pip command that installs the torchvision built for the installed torch, from the index torch came from.

    ``reinstall``: the versions match but the builds do not (pip would keep the wrong build otherwise).
    """
    torchvision = matching_torchvision(torch_version)
    if torchvision is None:  # a torch the table does not know: the tested pair
        pins = f"torch=={TESTED_PAIR[0]} torchvision=={TESTED_PAIR[1]}"
    elif reinstall:
        pins = f"--force-reinstall --no-deps torchvision=={torchvision}"
    else:
        pins = f"torch=={_public(torch_version)} torchvision=={torchvision}"
    build = torch_version.partition("+")[2]  # "cpu", "cu128", "rocm6.4"; none for PyPI's own builds
    return f"pip install {pins}" + (f" --index-url {PYTORCH_INDEX}/{build}" if build else "")


def installed_versions() -> Optional[tuple[str, str]]:
    """(torch, torchvision) as installed, read without importing them; None when either is not installed."""
    try:
        return metadata.version("torch"), metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return None  # import torch / torchvision will say so in their own words


def check_install() -> None:
    """What ``import effnetv2`` checks: the installed versions now, the builds at the first ``import torchvision``."""
    versions = installed_versions()
    if versions is None:
        return
    try:
        check_versions(*versions)
    except TorchvisionMismatchError:
        _print_uncaught_in_one_line()
        raise
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionImportGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionImportGuard(*versions))


class _TorchvisionImportGuard(importlib.abc.MetaPathFinder):
    """Finds torchvision as the other finders do, and turns a RuntimeError while it loads into the one-line error."""

    def __init__(self, torch_version: str, torchvision_version: str) -> None:
        self.versions = (torch_version, torchvision_version)

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None) -> Any:
        if fullname != "torchvision":
            return None
        spec = None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is not self and find_spec is not None:
                spec = find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader.exec_module = self._guarded(spec.loader)  # this loader object only: no trace once loaded
        return spec

    def _guarded(self, loader: Any) -> Any:
        run = type(loader).exec_module

        def exec_module(module: ModuleType) -> None:
            try:
                run(loader, module)
            except RuntimeError as e:  # the C++ operators of another torch (or of CUDA beside a CPU-only torch)
                _print_uncaught_in_one_line()
                raise TorchvisionMismatchError(_load_failure(*self.versions, e)) from e
            finally:
                del loader.exec_module
            if self in sys.meta_path:
                sys.meta_path.remove(self)  # loaded: torchvision is not looked up again

        return exec_module


def _load_failure(torch_version: str, torchvision_version: str, error: RuntimeError) -> str:
    cause = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return (
        f"torchvision {torchvision_version} does not load with torch {torch_version} ({cause}): it was built for "
        f"another torch, or for CUDA beside a CPU-only torch; fix it with: {fix_command(torch_version, reinstall=True)}"
    )


def _print_uncaught_in_one_line() -> None:
    """If the error is never caught (a command, a script), Python prints its message alone, not a traceback."""
    previous = sys.excepthook
    if getattr(previous, "_effnetv2_install_check", False):
        return

    def excepthook(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
        if isinstance(error, TorchvisionMismatchError):
            print(f"effnetv2: error: {error}", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    excepthook._effnetv2_install_check = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def _minor(version: str) -> str:
    match = _RELEASE.match(version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


def _public(version: str) -> str:
    """The release without its build label: "2.13.0+cpu" → "2.13.0" (pip's == ignores labels)."""
    return version.partition("+")[0]
