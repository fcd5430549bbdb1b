"""The fonts every figure and overlay of the project draws class names with (training's confusion matrices,
tune's plots, recognize's timelines and overlays).

matplotlib's default (DejaVu Sans) and Pillow's have no Hangul (or other CJK) glyphs, so Korean class
names came out as identical boxes. font_for finds an installed font with the characters DejaVu Sans lacks (for
matplotlib, which falls back to it glyph by glyph) or with every character (for Pillow, one font per text):
$RECOGNIZER_FONT (a font file, or an installed family name) first, then DejaVu Sans, then the usual Korean /
CJK fonts (Debian's fonts-noto-cjk and fonts-nanum, Windows' Malgun Gothic, macOS' AppleGothic, ...), then any
other installed font. Where none has them, drawable_names warns once and draws such a class as its index (#2).
"""
from __future__ import annotations

import functools
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

FONT_ENV = "RECOGNIZER_FONT"
# Family names (as matplotlib reads them) of fonts with Hangul, Korean ones first, and the file names their
# packages install (matplotlib's font list is cached when it is first built: a font installed later is only
# found by its file)
CJK_FAMILIES = ("Noto Sans CJK KR", "Noto Sans KR", "Source Han Sans KR", "NanumGothic", "NanumBarunGothic",
                "Malgun Gothic", "Apple SD Gothic Neo", "AppleGothic", "UnDotum", "Noto Sans CJK JP",
                "Noto Sans CJK SC", "Noto Sans CJK TC", "Source Han Sans")
CJK_FILES = re.compile(r"notosanscjk|notosanskr|sourcehansans|nanum|malgun|applegothic|applesdgothicneo|undotum",
                       re.I)
_WARNED: set[str] = set()


def _warn_once(msg: str, key: str | None = None) -> None:
    if (key or msg) not in _WARNED:   # one line per process, not one per frame or figure
        _WARNED.add(key or msg)
        log.warning(msg)


@functools.lru_cache(maxsize=None)
def _cmap(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for (the first face of a .ttc); none for a file it cannot read."""
    try:
        from fontTools.ttLib import TTFont

        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or ())
    except Exception:   # a broken or unsupported font file: skipped like a font without the glyphs
        return frozenset()


@functools.lru_cache(maxsize=1)
def default_font() -> str:
    from matplotlib import font_manager

    return str(font_manager.findfont("DejaVu Sans"))   # matplotlib >= 3.10: a FontPath, not a str


@functools.lru_cache(maxsize=None)
def _env_fonts(value: str) -> tuple[str, ...]:
    """$RECOGNIZER_FONT's font: a file, or an installed family's regular face; none (warned) if there is none."""
    from matplotlib import font_manager

    if os.path.isfile(value):
        return (value,)
    try:
        return (str(font_manager.findfont(font_manager.FontProperties(family=value), fallback_to_default=False)),)
    except ValueError:
        _warn_once(f"{FONT_ENV}={value}: no such font file or installed font family; looking for another font")
        return ()


@functools.lru_cache(maxsize=1)
def _installed_fonts() -> tuple[str, ...]:
    """The known CJK fonts first, then every other installed one; never Last Resort (it draws a placeholder box for
    every code point, so it 'has' them all)."""
    from matplotlib import font_manager

    listed = [f for f in font_manager.fontManager.ttflist if not f.name.startswith("Last Resort")]
    by_family = [f.fname for name in CJK_FAMILIES for f in listed if f.name == name]
    files = sorted(font_manager.findSystemFonts())
    by_file = [p for p in files if CJK_FILES.search(Path(p).name)]
    return tuple(dict.fromkeys([*by_family, *by_file, *(f.fname for f in listed), *files]))


def font_for(texts: Iterable[str], fallback: bool = True) -> str | None:
    """The file of a font (module docstring: which, in which order) with a glyph for every character of `texts`
    that DejaVu Sans lacks (`fallback`: matplotlib draws with DejaVu Sans and falls back glyph by glyph), or for
    every character (Pillow draws a text in one font; Droid Sans Fallback, say, has CJK but no digits)."""
    need = {ord(c) for t in texts for c in t if c.isprintable() and not c.isspace()}
    env = os.environ.get(FONT_ENV, "").strip()
    if not env and all(c < 128 for c in need):   # ASCII: DejaVu Sans, without reading any font file
        return default_font()
    if fallback:
        need -= _cmap(default_font())
    for path in [*(_env_fonts(env) if env else ()), default_font(), *_installed_fonts()]:
        if need <= _cmap(path):
            return path
    return None


def drawable_names(names: Sequence[str], alone: bool = False) -> tuple[list[str], str | None]:
    """(the class names to draw, the font that has their glyphs: font_for; `alone`: for Pillow, with the score's
    characters too). Without such a font, a name with a character DejaVu Sans lacks is drawn as its index (#i)
    rather than as boxes (in DejaVu Sans), and a warning (once) says what to install."""
    path = font_for([*names, "#0123456789."] if alone else names, fallback=not alone)
    if path is not None:
        return list(names), path
    default = _cmap(default_font())
    missing = [n for n in names if any(ord(c) not in default for c in n if c.isprintable() and not c.isspace())]
    _warn_once(f"no installed font has every glyph of the class names {missing}: they are drawn as class indices "
               f"(#i); install a font with them (Debian/Ubuntu: apt-get install fonts-noto-cjk or fonts-nanum) or "
               f"name a font file in ${FONT_ENV}", key="glyphs")
    return [f"#{i}" if n in missing else n for i, n in enumerate(names)], None


def drawable_text(text: str, font: str | None) -> str:
    """`text` with the characters neither DejaVu Sans nor `font` has as '?' (a video's name in a title)."""
    have = _cmap(default_font()) | (_cmap(font) if font else frozenset())
    return "".join(c if ord(c) in have or c.isspace() else "?" for c in text)


@contextmanager
def fonts_for(font: str | None) -> Iterator[None]:
    """matplotlib draws, in this block, with its default fonts and `font` as the fallback for the glyphs they
    lack (matplotlib >= 3.6 falls back glyph by glyph through font.family)."""
    import matplotlib

    family = list(matplotlib.rcParams["font.family"])
    name = _mpl_family(font) if font and font != default_font() else None
    with matplotlib.rc_context({"font.family": family + [name] if name else family}):
        yield


@functools.lru_cache(maxsize=None)
def _mpl_family(font: str) -> str | None:
    from matplotlib import font_manager

    try:
        font_manager.fontManager.addfont(font)   # a file matplotlib did not list ($RECOGNIZER_FONT); once per file
        return font_manager.FontProperties(fname=font).get_name()
    except Exception as err:   # a font matplotlib cannot read: the figure is still drawn, without it
        _warn_once(f"{font}: matplotlib cannot use this font ({err})")
        return None
