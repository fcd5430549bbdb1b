"""Names users give (class folders, labels, video paths, --set keys), compared in Unicode NFC.

A Mac writes file names in NFD (Hangul decomposed into jamo) and Linux keeps what was typed (NFC): the same 싸움
in two byte forms, which look equal and compared unequal (two classes; "labels ['싸움'] are not among the model's
classes ['싸움']"). Every comparison of such names goes through `nfc`; `spelled_as` maps a name back to the spelling
a model or dataset already holds, so older (NFD) artifacts keep working.
"""
from __future__ import annotations

import unicodedata
from typing import Callable, Iterable


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def spelled_as(names: Iterable[str]) -> Callable[[str], str]:
    """A function that gives a name as `names` spell it when it is one of them in NFC, else as given (a label
    typed on Linux for a model whose class names came from a Mac's folders)."""
    own = {nfc(n): n for n in names}
    return lambda name: own.get(nfc(name), name)
