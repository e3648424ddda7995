"""Opening image files as 8-bit RGB: the one decoder the command line and training share.

What :func:`open_image` does beyond timm's ``Image.open(f).convert('RGB')``:

- **Bit depth**: 16-bit grayscale images (Pillow modes ``I;16``, ``I;16L``, ``I;16B``) and 32-bit integer ones
  (mode ``I``, taken as 16-bit samples, as older Pillow opened 16-bit PNGs) are scaled to 8 bits
  (``round(value / 257)``) rather than clipped at 255, which turns most pixels of such an image white. Float
  images (mode ``F``) are read as [0, 1] when all values lie in [0, 1], else as [0, 255]; values outside
  [0, 255] are refused. 48/64-bit RGB(A) PNGs are reduced to 8 bits by Pillow itself (the high byte, within one
  level of ``value / 257``).
- **EXIF orientation**: a photo whose EXIF says it is rotated or mirrored (phone cameras) is turned upright
  (:func:`PIL.ImageOps.exif_transpose`). timm's loader ignores EXIF, so on such photos effnetv2 sees the upright
  image and timm the stored one.
- **Non-regular files** (FIFOs, sockets, devices) are refused with :class:`NotRegularFileError` instead of hanging
  on an ``open`` that waits for a writer.
- **Decompression bombs**: an image above Pillow's warning limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 megapixels
  by default) is decoded, with a :class:`LargeImageWarning` naming the file; one above twice that limit (Pillow's
  error limit) raises :class:`ImageTooLargeError` and is not decoded.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from effnetv2.data.tar_images import TarMember

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


class NotRegularFileError(OSError):
    """A path that is not a regular file (a FIFO, socket, device or folder): reading it could block forever."""


class ImageTooLargeError(Image.DecompressionBombError, ValueError):
    """An image above Pillow's decompression-bomb error limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``)."""


class LargeImageWarning(Image.DecompressionBombWarning):
    """An image above Pillow's decompression-bomb warning limit (``PIL.Image.MAX_IMAGE_PIXELS``), decoded anyway.

    ``detail`` is the message without the path, for callers that print paths their own way.
    """

    def __init__(self, path: Union[str, os.PathLike, TarMember], detail: str) -> None:
        super().__init__(f"{os.fsdecode(path)}: {detail}")
        self.detail = detail


def _file_kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "a special file")


def _size_text(width: int, height: int) -> str:
    return f"{width}x{height} = {width * height:,} pixels"


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit samples: 16-bit, 32-bit integer and float grayscale scaled (see the module docstring);
    8-bit modes unchanged."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"a 32-bit integer image with values in [{values.min()}, {values.max()}]: effnetv2 reads mode 'I' "
                "images as 16-bit samples (0 to 65535); convert it to 8 or 16 bits"
            )
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))  # round(v / 257), exact
    if image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(values).all() and low >= 0 and high <= 255):
            raise ValueError(
                f"a float image with values in [{low:g}, {high:g}]: effnetv2 reads float images as [0, 1] or [0, 255]"
            )
        scale = 255.0 if high <= 1 else 1.0
        return Image.fromarray(np.rint(values * scale).astype(np.uint8))
    return image


def _open_regular_file(path: Union[str, os.PathLike]) -> BinaryIO:
    # O_NONBLOCK: opening a FIFO without a writer returns at once instead of blocking; regular files ignore it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"not a regular file but {_file_kind(mode)}; skipped without reading it")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_image(path: Union[str, os.PathLike, TarMember]) -> Image.Image:
    """The image at ``path``, upright (EXIF orientation applied), as 8-bit RGB.

    Raises :class:`NotRegularFileError` (an ``OSError``) for FIFOs, sockets, devices and folders,
    :class:`ImageTooLargeError` (a ``ValueError``) above Pillow's decompression-bomb error limit,
    ``PIL.UnidentifiedImageError`` for files Pillow cannot read, and ``ValueError`` for integer or float images
    whose values are out of range. Warns with :class:`LargeImageWarning` above Pillow's warning limit.
    """
    if isinstance(path, TarMember):  # an image inside a tar file (WebDataset)
        f = io.BytesIO(path.read_bytes())
    else:
        f = _open_regular_file(path)
    limit = Image.MAX_IMAGE_PIXELS
    # Pillow checks sizes on opening and, for some formats, again while decoding: both are reported here instead.
    with f, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(f)
            width, height = image.size
            image = ImageOps.exif_transpose(image)  # loads the pixels; a copy even without an EXIF orientation
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(
                f"not decoded: {str(e).rstrip('.')}; that is above Pillow's decompression-bomb error limit, twice "
                "PIL.Image.MAX_IMAGE_PIXELS"
            ) from None
        except UnidentifiedImageError:  # Pillow names the file object (``<_io.BufferedReader name=4>``): name the path
            raise UnidentifiedImageError(
                f"cannot identify image file {os.fsdecode(path)!r}: not an image, or in a format Pillow cannot read"
            ) from None
    if limit and width * height > limit:
        warnings.warn(
            LargeImageWarning(
                path,
                f"{_size_text(width, height)}, above Pillow's decompression-bomb warning limit of {limit:,} pixels "
                "(PIL.Image.MAX_IMAGE_PIXELS); decoded anyway",
            ),
            stacklevel=2,
        )
    return to_8bit(image).convert("RGB")
