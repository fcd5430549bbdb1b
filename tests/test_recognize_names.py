"""Korean (and other non-ASCII) names through recognize: evaluation matches videos by their real names (every
Hangul character was `_`, so 싸움_01 and 낙상_01 were one video, and an s3 video's escaped key matched no label),
output names keep Hangul (and stay under 255 bytes), the CSVs carry a BOM for Korean Excel, class names are drawn
in a font that has their glyphs or as their index (Pillow's and matplotlib's default fonts have no Hangul: 싸움
and 낙상 were the same boxes), and `--set thresholds.<Korean class>=` is accepted. No Ray."""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest

from recognizer_core.recognize.evaluation import evaluate, read_labels, video_key
from recognizer_core.recognize.events import Event
from recognizer_core.recognize.outputs import (MAX_STEM, UniqueStems, events_csv, rel_path_stem, safe_name,
                                               write_video_outputs)
from recognizer_core.recognize.spec import ModelSpec
from recognizer_core.recognize.windows import Window
from recognizer_core.skeleton.transforms import PipelineConfig

NAMES = ["정상", "싸움", "낙상"]


def _touch(root: Path, *rels: str) -> Path:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


# ---- 1. evaluation's video keys ----

def test_hangul_video_names_are_distinct_keys_and_a_labels_csv_scores_each(tmp_path):
    assert video_key("낙상_01.mp4") == "낙상_01" and video_key("싸움_01.mp4") == "싸움_01"
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("video,label,start_s,end_s\n싸움_01.mp4,싸움,10,14\n낙상_01.mp4,낙상,3,5\n", encoding="utf-8")
    labels, intervals = read_labels(labels_csv, NAMES, background=0)
    assert labels == {"싸움_01": "싸움", "낙상_01": "낙상"}
    ev = {"/data/낙상_01.mp4": [Event("/data/낙상_01.mp4", "낙상", 3.0, 5.0, 0.9, class_index=2)]}
    r = evaluate(ev, labels, intervals, NAMES, 0)
    assert r["videos"] == 1 and r["accuracy"] == 1.0   # before: 싸움's label, accuracy 0.0
    assert r["events"]["per_class"]["낙상"]["tp"] == 1 and r["events"]["per_class"]["싸움"]["fn"] == 0


def test_a_labels_csv_saved_by_excel_with_a_bom_is_read(tmp_path):
    """Excel's 'CSV UTF-8' (what keeps Hangul readable there) starts the file with a BOM: its header is still
    video,label[,start_s,end_s], not '\\ufeffvideo' ('labels CSV needs a header')."""
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("video,label,start_s,end_s\n싸움_01.mp4,싸움,10,14\n", encoding="utf-8-sig")
    assert labels_csv.read_bytes().startswith(b"\xef\xbb\xbf")
    labels, intervals = read_labels(labels_csv, NAMES, background=0)
    assert labels == {"싸움_01": "싸움"} and intervals == {"싸움_01": [{"label": "싸움", "start_s": 10.0, "end_s": 14.0}]}


def test_a_labelled_folder_with_hangul_class_folders_keeps_same_named_videos_apart(tmp_path):
    root = _touch(tmp_path / "videos", "싸움/001.mp4", "정상/001.mp4", "낙상/002.mp4", "싸움/싸움영상1.mp4",
                  "싸움/폭행영상1.mp4")
    labels, _ = read_labels(root, NAMES, 0)   # before: "two videos share the name '_/001'"
    assert labels == {"싸움/001": "싸움", "정상/001": "정상", "낙상/002": "낙상", "싸움/싸움영상1": "싸움",
                      "싸움/폭행영상1": "싸움"}


def test_a_model_with_nfd_class_names_evaluates_on_its_own_folder_and_on_typed_labels(tmp_path):
    """A model trained from a Mac's folder by an older extraction has NFD class names; list_videos gives the
    folders' names NFC and a typed CSV is NFC: "labels ['싸움', '정상'] are not among the model's classes
    ['싸움', '정상']". The labels come back spelled as the model's classes, so evaluation scores them."""
    import unicodedata

    nfd = [unicodedata.normalize("NFD", n) for n in ("정상", "싸움")]
    assert nfd != ["정상", "싸움"]
    root = _touch(tmp_path / "videos", f"{nfd[1]}/a.mp4", f"{nfd[0]}/b.mp4")
    labels, _ = read_labels(root, nfd, 0)
    assert labels == {"싸움/a": nfd[1], "정상/b": nfd[0]}
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("video,label,start_s,end_s\na.mp4,싸움,1,3\nb.mp4,정상,,\n", encoding="utf-8")
    labels, intervals = read_labels(labels_csv, nfd, 0)
    assert labels == {"a": nfd[1], "b": nfd[0]} and intervals["a"][0]["label"] == nfd[1]
    a = str(root / nfd[1] / "a.mp4")
    ev = {a: [Event(a, nfd[1], 1.0, 3.0, 0.9, class_index=1)], str(root / nfd[0] / "b.mp4"): []}
    r = evaluate(ev, labels, intervals, nfd, 0)
    assert r["videos"] == 2 and r["accuracy"] == 1.0 and r["events"]["per_class"][nfd[1]]["tp"] == 1


def test_s3_videos_match_labels_by_their_decoded_key(tmp_path):
    # extraction lists s3 keys percent-encoded (sources._join_uri); a label names the file as it is
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("video,label\nNon Fight/cam 01.mp4,NonFight\nFight/cam 01.mp4,Fight\n")
    labels, intervals = read_labels(labels_csv, ["NonFight", "Fight"], 0)
    fight, calm = "s3://bkt/videos/Fight/cam%2001.mp4", "s3://bkt/videos/Non%20Fight/cam%2001.mp4"
    assert video_key(fight) == "videos/Fight/cam 01" and video_key("s3://bkt/%EC%8B%B8%EC%9B%80/a.mp4") == "싸움/a"
    ev = {fight: [Event(fight, "Fight", 1, 3, 0.9, class_index=1)], calm: []}
    r = evaluate(ev, labels, intervals, ["NonFight", "Fight"], 0)
    assert r["videos"] == 2 and r["accuracy"] == 1.0 and r["unlabelled"] == [] and r["missing"] == []


def test_nfd_and_nfc_spellings_of_a_name_are_one_key():
    nfd = unicodedata.normalize("NFD", "싸움/영상1.mp4")   # macOS file names
    assert nfd != "싸움/영상1.mp4" and video_key(nfd) == video_key("싸움/영상1.mp4") == "싸움/영상1"
    assert video_key("/data/50%20x.mp4") == "data/50%20x"   # a local name's '%' is a character, not an escape


# ---- 1 and 4. output names ----

def test_output_names_keep_hangul_and_ascii_names_are_unchanged():
    assert rel_path_stem("싸움/001.mp4") == "싸움__001.mp4" and rel_path_stem("정상/001.mp4") == "정상__001.mp4"
    assert safe_name(unicodedata.normalize("NFD", "/v/싸움.mp4")) == "싸움.mp4"   # NFC: one name per spelling
    # ASCII as before (earlier runs' outputs and resume records keep working)
    assert safe_name("/v/a b(1).mp4") == "a_b_1_.mp4" and rel_path_stem("cam1/2024-05-01.mp4") == "cam1__2024-05-01.mp4"
    assert safe_name("s3://bkt/v/cam%2001.mp4") == "cam_2001.mp4"
    assert safe_name("s3://bkt/v/%EC%8B%B8%EC%9B%80.mp4") == "싸움.mp4"   # escaped Hangul is decoded


def test_videos_that_differ_only_in_hangul_get_distinct_readable_names():
    stems = UniqueStems(rel_path_stem)
    assert [stems(v) for v in ("싸움/001.mp4", "정상/001.mp4", "낙상/001.mp4")] == \
        ["싸움__001.mp4", "정상__001.mp4", "낙상__001.mp4"]
    # names that still differ only in characters that become `_` (emoji) keep the hash rule
    a, b = stems("🔥/001.mp4"), stems("💥/001.mp4")
    assert a == "___001.mp4" and b == f"___001.mp4_{hashlib.sha1('💥/001.mp4'.encode()).hexdigest()[:8]}"


def test_a_long_hangul_name_is_cut_by_bytes():
    rel = "/".join(["카메라_북쪽_주차장_입구"] * 8) + "/영상.mp4"   # 3 bytes a character
    stem = rel_path_stem(rel)
    assert len(stem.encode()) <= MAX_STEM and stem.startswith("카메라_북쪽") and rel_path_stem(rel) == stem
    assert stem.endswith("_" + hashlib.sha1(rel.encode()).hexdigest()[:8])


# ---- 3. CSV encoding ----

def _spec(names=("Normal", "Fight")) -> ModelSpec:
    return ModelSpec(label_names=list(names), pipeline=PipelineConfig(), fps=30, window_frames=90)


def test_korean_events_and_windows_csvs_have_a_bom_and_read_back_with_utf8_sig(tmp_path):
    video = "/v/싸움/영상1.mp4"
    windows = [Window(video, "scene", 0.0, 3.0, [0, 1], None), Window(video, "scene", 0.5, 3.5, [0, 1], None)]
    events = [Event(video, "싸움", 1.5, 2.0, 0.9, [0, 1], 1)]
    files = write_video_outputs(tmp_path, video, windows, np.array([[0.2, 0.8], [0.1, 0.9]]), events,
                                _spec(["정상", "싸움"]), timeline=False)
    for kind, first in (("events_csv", "video"), ("windows_csv", "sequence")):
        raw = Path(files[kind]).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf"), kind   # Korean Excel (cp949) reads a BOM-less file as cp949
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
        assert list(rows[0])[0] == first
    assert list(csv.DictReader(io.StringIO(events_csv(events).encode().decode("utf-8-sig"))))[0]["label"] == "싸움"


def test_ascii_events_and_windows_csvs_have_no_bom_and_read_back_with_utf8(tmp_path):
    """Existing readers open the CSVs as "utf-8": a BOM on every file made their first column '\\ufeffvideo'
    (KeyError on row["video"]). Only a CSV with non-ASCII text (Korean names: Excel needs it) carries one."""
    video = "/v/Fight/cam1.mp4"
    windows = [Window(video, "scene", 0.0, 3.0, [0, 1], None)]
    events = [Event(video, "Fight", 1.5, 2.0, 0.9, [0, 1], 1)]
    files = write_video_outputs(tmp_path, video, windows, np.array([[0.2, 0.8]]), events, _spec(),
                                timeline=False)
    for kind, first in (("events_csv", "video"), ("windows_csv", "sequence")):
        raw = Path(files[kind]).read_bytes()
        assert raw.isascii(), kind
        with open(files[kind], encoding="utf-8", newline="") as f:
            assert list(next(csv.DictReader(f)))[0] == first
    assert next(csv.DictReader(io.StringIO(events_csv(events))))["video"] == video


# ---- 2. fonts ----

@pytest.fixture
def plots(monkeypatch):
    from recognizer_core import fonts as plots

    monkeypatch.delenv("RECOGNIZER_FONT", raising=False)
    monkeypatch.setattr(plots, "_WARNED", set(), raising=False)   # raising=False: the old code fails on its output
    return plots


@pytest.fixture
def no_cjk_font(plots, monkeypatch):
    """As on a bare image (here: no font with Hangul; `fc-list :lang=ko` is empty): only DejaVu Sans is tried."""
    monkeypatch.setattr(plots, "_installed_fonts", lambda: (), raising=False)
    return plots


def _drawn(text: str, font) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (220, 40))
    ImageDraw.Draw(img).text((8, 8), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def test_without_a_hangul_font_classes_are_drawn_as_indices_with_one_warning(no_cjk_font, caplog):
    from recognizer_core.recognize.overlay import overlay_font

    with caplog.at_level(logging.WARNING, logger=no_cjk_font.__name__):
        assert no_cjk_font.drawable_names(NAMES + ["Fight"]) == (["#0", "#1", "#2", "Fight"], None)
        shown, font = overlay_font(NAMES)
        no_cjk_font.drawable_names(NAMES)
    assert shown == {"정상": "#0", "싸움": "#1", "낙상": "#2"}
    assert not (_drawn(f"{shown['싸움']} 0.93", font) == _drawn(f"{shown['낙상']} 0.93", font)).all()
    assert len(caplog.records) == 1   # once, not per frame or figure
    msg = caplog.records[0].getMessage()
    assert "RECOGNIZER_FONT" in msg and "fonts-noto-cjk" in msg and "fonts-nanum" in msg and "싸움" in msg


def test_without_a_hangul_font_the_plots_draw_no_missing_glyphs(no_cjk_font, tmp_path):
    from recognizer_core.train.stgcn.plots import plot_confusion_matrix

    video = "/v/싸움/영상1.mp4"
    windows = [Window(video, "scene", 0.0, 3.0, [0], None), Window(video, "scene", 0.5, 3.5, [0], None)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix(np.eye(3, dtype=int), NAMES, tmp_path / "cm.png")
        write_video_outputs(tmp_path, video, windows, np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]), [],
                            _spec(NAMES), timeline=True)
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert missing == [] and (tmp_path / "cm.png").is_file() and (tmp_path / "영상1.mp4.timeline.png").is_file()


def test_a_configured_font_file_draws_the_names(plots, monkeypatch):
    import matplotlib

    from recognizer_core.recognize.overlay import overlay_font

    serif = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSerif.ttf")
    monkeypatch.setenv("RECOGNIZER_FONT", serif)
    monkeypatch.setattr(plots, "_installed_fonts", lambda: ())
    names = ["Норма", "Драка"]   # Cyrillic: in DejaVu, not in Pillow's default font
    assert plots.font_for(names) == serif and plots.drawable_names(names) == (names, serif)
    shown, font = overlay_font(names)
    assert shown == {n: n for n in names} and Path(font.path) == Path(serif)
    assert not (_drawn("Драка 0.93", font) == _drawn("Норма 0.93", font)).all()
    family = list(matplotlib.rcParams["font.family"])
    with plots.fonts_for(serif):   # matplotlib: the configured font as the fallback after its own
        assert matplotlib.rcParams["font.family"] == family + ["DejaVu Serif"]
    assert list(matplotlib.rcParams["font.family"]) == family
    # a font that does not exist: one warning, and the search goes on
    monkeypatch.setenv("RECOGNIZER_FONT", "/no/such/font.ttf")
    assert plots.font_for(["Fight"]) == plots.default_font()


def _font_with_only(chars: str, path: Path) -> str:
    """A TrueType font file with a glyph (a box) for each of `chars` and nothing else: no digits, no space (as
    Droid Sans Fallback has CJK but no digits)."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    glyphs = {c: f"uni{ord(c):04X}" for c in sorted(set(chars))}
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder([".notdef", *glyphs.values()])
    builder.setupCharacterMap({ord(c): g for c, g in glyphs.items()})
    pen = TTGlyphPen(None)
    pen.moveTo((100, 0))
    for corner in ((100, 700), (800, 700), (800, 0)):
        pen.lineTo(corner)
    pen.closePath()
    box = pen.glyph()
    builder.setupGlyf({g: box for g in [".notdef", *glyphs.values()]})
    builder.setupHorizontalMetrics({g: (1000, 100) for g in [".notdef", *glyphs.values()]})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "OnlyThese", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    builder.save(str(path))
    return str(path)


def test_a_configured_font_without_digits_draws_the_plots_but_not_the_overlay(plots, monkeypatch, tmp_path):
    """$RECOGNIZER_FONT names a font with the Hangul of the names but no digits: matplotlib takes it (it falls back
    to DejaVu Sans glyph by glyph), but Pillow draws '싸움 0.93' in one font, so the overlay must not pick it (the
    score would be boxes); without another font it draws the classes as indices, in DejaVu Sans."""
    from recognizer_core.recognize.overlay import overlay_font

    hangul = _font_with_only("".join(NAMES), tmp_path / "hangul_only.ttf")
    monkeypatch.setenv("RECOGNIZER_FONT", hangul)
    monkeypatch.setattr(plots, "_installed_fonts", lambda: ())
    assert plots.drawable_names(NAMES) == (NAMES, hangul)
    shown, font = overlay_font(NAMES)
    assert shown == {"정상": "#0", "싸움": "#1", "낙상": "#2"} and Path(font.path) == Path(plots.default_font())
    assert all(ord(c) in plots._cmap(font.path) for c in "".join(shown.values()) + "0123456789.")


def test_an_installed_font_with_the_glyphs_is_found_and_drawn_by_matplotlib(plots, tmp_path):
    """This machine has no Hangul font, but Droid Sans Fallback (Chinese): the same search, for Chinese names."""
    names = ["打架", "正常"]
    font = plots.font_for(names)
    if font is None:
        pytest.skip("no installed font has Chinese glyphs either")
    assert plots.drawable_names(names) == (names, font)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from recognizer_core.train.stgcn.plots import plot_confusion_matrix
        plot_confusion_matrix(np.eye(2, dtype=int), names, tmp_path / "cm.png")
    assert [str(w.message) for w in caught if "missing from font" in str(w.message)] == []
    # Pillow draws "打架 0.93" in one font: one with the digits too (Droid Sans Fallback has none), else indices
    from recognizer_core.recognize.overlay import overlay_font

    shown, pil_font = overlay_font(names)
    drawn = "".join(shown.values()) + "0123456789."
    assert all(ord(c) in plots._cmap(pil_font.path) for c in drawn), (shown, pil_font.path)


def test_tune_plots_draw_their_text_in_a_font_that_has_it(plots, tmp_path):
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.tune import stgcn_job
    from recognizer_core.tune.plots import write_plots
    from recognizer_core.tune.records import TrialRecord
    from recognizer_core.tune.search_space import load_search_space

    if plots.font_for(["打架"]) is None:
        pytest.skip("no installed font has Chinese glyphs")
    space = load_search_space(Path(__file__).resolve().parents[1] / "search_spaces" / "fight.yaml", TrainJobConfig,
                              job="stgcn", metrics=stgcn_job.METRICS)
    records = [TrialRecord(f"打架{i}", {"model.dropout": 0.1 + 0.1 * i},
                           [{"epoch": 1, "val/acc_top1": 0.5 + 0.1 * i}], created=i + 1) for i in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made, _ = write_plots(records, space, "val/acc_top1", "max", tmp_path)
    assert made and [str(w.message) for w in caught if "missing from font" in str(w.message)] == []


def test_ascii_class_names_keep_pillows_default_font():
    from PIL import ImageFont

    from recognizer_core.recognize.overlay import overlay_font

    shown, font = overlay_font(["NonFight", "Fight"])
    assert shown == {"NonFight": "NonFight", "Fight": "Fight"}
    assert (_drawn("Fight 0.93", font) == _drawn("Fight 0.93", ImageFont.load_default())).all()


# ---- 5. --set thresholds.<class> ----

def test_set_thresholds_takes_hangul_and_spaced_class_names_and_still_catches_typos():
    from recognizer_core.config import ConfigError, load_config, split_dotted
    from recognizer_core.recognize.runner import RecognizeConfig
    from recognizer_core.train.stgcn.config import TrainJobConfig

    cfg = load_config(RecognizeConfig, None, ["thresholds.싸움=0.7", "thresholds.정상 상황=0.6",
                                              "thresholds.Fight=0.5", "thresholds.Fall.down=0.4"])
    assert cfg.thresholds == {"싸움": 0.7, "정상 상황": 0.6, "Fight": 0.5, "Fall.down": 0.4}
    with pytest.raises(ConfigError, match="'싸움' is not a field name"):   # not a dict field: the key is a typo
        load_config(RecognizeConfig, None, ["thresholdz.싸움=0.7"])
    with pytest.raises(ConfigError, match="thresholds.싸움"):   # values still checked
        load_config(RecognizeConfig, None, ["thresholds.싸움=1.5"])
    with pytest.raises(ConfigError, match="did you mean `model.base_channels`"):
        load_config(TrainJobConfig, None, ["model.base_channelz=64"])
    with pytest.raises(KeyError):   # without the config class (search spaces), field names only, as before
        split_dotted("thresholds.싸움")
