"""Which classifier output a labelled folder's class folder stands for, as ``validate`` needs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from effnetv2.data.assets import imagenet_synsets


class ClassMapError(ValueError):
    """Class folder names that match none of the naming schemes a model's classes can be given in."""


def folder_class_indices(
    folders: Sequence[str], num_classes: int, label_names: Optional[Sequence[str]] = None
) -> tuple[list[int], str]:
    """The classifier index of each class folder in ``folders``, and the scheme that matched.

    Tried in order, the first scheme under which *every* folder names a class wins:

    - ``"label_names"``: the model's saved ``label_names`` (what ``effnetv2 train`` writes: the train folders' names);
    - ``"synsets"``: ImageNet-1k WordNet ids (``n01440764``) for a 1000-class model, mapped to the class index as
      timm's ImageNet class map does, so a folder with only some of the 1000 classes still scores correctly;
    - ``"indices"``: the class index itself (``0``, ``1``, ...).

    Raises :class:`ClassMapError` naming the folders that fit no scheme.
    """
    folders = list(folders)
    schemes: list[tuple[str, dict[str, int]]] = []
    if label_names is not None and len(label_names) == num_classes:
        schemes.append(("label_names", {str(name): i for i, name in enumerate(label_names)}))
    if num_classes == 1000:
        schemes.append(("synsets", {synset: i for i, synset in enumerate(imagenet_synsets())}))
    schemes.append(("indices", {str(i): i for i in range(num_classes)}))
    for scheme, index in schemes:
        if all(name in index for name in folders):
            return [index[name] for name in folders], scheme
    names = [name for name, _ in schemes]
    unknown = [name for name in folders if not any(name in index for _, index in schemes)]
    example = unknown or folders
    raise ClassMapError(
        f"class folders {example[:5]} match none of the model's {num_classes} classes by "
        f"{', '.join(names)}; name the folders after the model's label names "
        + ("(its config.json has none) " if "label_names" not in names else "")
        + f"or by class index 0..{num_classes - 1}"
        + (", or ImageNet synsets (n01440764, ...)" if num_classes == 1000 else "")
    )
