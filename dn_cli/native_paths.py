"""Paths for the C libraries (libvips, OpenSlide), which take names as UTF-8 text.

File systems keep names as bytes: a Windows share can hold ``caf\\xe9.svs`` (latin-1), which
Python carries as a string with a surrogate and libvips cannot be given. Such a path is handed
to the libraries through a symbolic link with a UTF-8 name in a private temporary folder: to its
folder where only the folder's name is the problem (so an MRXS slide still finds its data
folder, and a temporary written there lands beside its final name), to the file itself otherwise.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading

_lock = threading.Lock()
_links: dict[str, str] = {}
_folder: list[str] = []  # the private folder, made on first need


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _link(target: str, suffix: str = "") -> str:
    with _lock:
        if target not in _links:
            if not _folder:
                _folder.append(tempfile.mkdtemp(prefix="dn-names-"))
                atexit.register(shutil.rmtree, _folder[0], True)
            link = os.path.join(_folder[0], f"{len(_links)}{suffix}")
            os.symlink(target, link)
            _links[target] = link
        return _links[target]


def native(path: os.PathLike | str) -> str:
    """``path`` as text libvips and OpenSlide take: itself, or a UTF-8 link to it."""
    text = os.fspath(path)
    if _utf8(text):
        return text
    folder, name = os.path.split(os.path.abspath(text))
    if _utf8(name):
        return os.path.join(_link(folder), name)
    suffix = os.path.splitext(name)[1]
    return _link(os.path.abspath(text), suffix if _utf8(suffix) else "")


def printable(path: os.PathLike | str) -> str:
    """``path`` as text that can be printed and stored as UTF-8: bytes that are not UTF-8 shown as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
