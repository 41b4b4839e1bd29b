"""The HTML report (`captioner.report`, `evaluate --html`, `caption --html`): the page itself, and in a real browser."""

import base64
import io
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser

import pytest
import torch
from conftest import moving_square
from PIL import Image

from captioner import evaluate as ev
from captioner.cli.caption import main as caption_command
from captioner.cli.evaluate import main as evaluate_main
from captioner.report import MIN_THUMB_HEIGHT, THUMB_HEIGHT, Card, per_video_metrics, render, strip_height, strip_jpeg

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class Page(HTMLParser):
    """The cards of a report page (in document order) and every tag and URL on it."""

    def __init__(self, html: str):
        super().__init__()
        self.cards: list[dict] = []
        self.tags: Counter = Counter()
        self.urls: list[str] = []
        self.options: list[str] = []
        self._field = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        self.urls += [a[k] for k in ("src", "href", "action", "data") if k in a and tag != "article"]
        if tag == "article":
            self.cards.append({"attrs": a, "caption": None, "error": None, "imgs": [], "text": ""})
        elif tag == "img" and self.cards:
            self.cards[-1]["imgs"].append(a["src"])
        elif tag == "option":
            self.options.append(a["value"])
        elif tag == "p" and a.get("class") in ("caption", "error"):
            self._field = a["class"]
            self.cards[-1][self._field] = ""

    def handle_endtag(self, tag):
        if tag == "p":
            self._field = None

    def handle_data(self, data):
        if self._field:
            self.cards[-1][self._field] += data
        if self.cards:
            self.cards[-1]["text"] += data


def jpeg(src: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert src.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))
    assert image.format == "JPEG"
    return image


# --- the page itself -------------------------------------------------------------------------------------------


def test_strip_jpeg_puts_the_frames_side_by_side_at_thumbnail_height():
    frames = torch.from_numpy(moving_square(8, 32)).repeat(1, 2, 3, 1)  # (8, 64, 96, 3)
    image = Image.open(io.BytesIO(strip_jpeg(frames, height=32)))
    assert image.size == (8 * 48, 32) and image.format == "JPEG"
    assert image.convert("L").getextrema()[1] > 200  # the white square survived
    assert Image.open(io.BytesIO(strip_jpeg(frames[:, :48, :64]))).size == (8 * 85, 64)  # 4:3, 8 frames: full height
    assert strip_height(20, 4 / 3) == MIN_THUMB_HEIGHT and strip_height(12, 16 / 9) == 40 < strip_height(8, 1.5)


def test_page_is_self_contained_escaped_and_lists_every_card():
    strip = base64.b64encode(strip_jpeg(torch.from_numpy(moving_square(8, 32)))).decode()
    cards = [Card("a", "/v/a.mp4", caption="a <script>alert(1)</script> dog", references=["a dog runs"], bleu4=0.5,
                  cider=1.5, score=-0.25, familiarity=0.9, in_domain=True, strip=strip),
             Card("b", "/v/b.mp4", caption="a cat sits", score=-1.0, familiarity=0.1, in_domain=False, strip=strip),
             Card("c", "/v/c.mp4", error="not a readable video (Invalid data)")]
    html = render(cards, "t & <title>", [("checkpoint", "x.ckpt")], {"bleu4": 0.5}, ["a note"])
    page = Page(html)
    assert [c["caption"] for c in page.cards] == ["a <script>alert(1)</script> dog", "a cat sits", None]
    assert page.cards[2]["error"] == "not a readable video (Invalid data)" and not page.cards[2]["imgs"]
    assert page.tags["script"] == 1 and page.tags["link"] == 0 and page.tags["iframe"] == 0
    assert all(u.startswith("data:image/jpeg;base64,") for u in page.urls) and len(page.urls) == 2
    assert jpeg(page.cards[0]["imgs"][0]).size[1] == THUMB_HEIGHT
    assert "out of domain" in page.cards[1]["text"] and "out of domain" not in page.cards[0]["text"]
    assert page.cards[0]["attrs"]["data-score"] == "-0.25" and "data-score" not in page.cards[2]["attrs"]
    # a sort is offered for every value at least one card has
    assert page.options == ["order-asc", "score-asc", "score-desc", "familiarity-asc", "familiarity-desc",
                            "bleu4-asc", "bleu4-desc", "cider-asc", "cider-desc"]
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from anywhere


def test_no_sort_by_values_no_card_has():
    page = Page(render([Card("a", caption="x", score=-1.0), Card("b", error="missing")], "t"))
    assert page.options == ["order-asc", "score-asc", "score-desc"]


def test_per_video_metrics_rank_captions_and_average_to_corpus_cider():
    hyps = ["a red circle grows", "a blue square moves left", "a dog"]
    refs = [["a red circle grows", "the red circle gets bigger"], ["a blue square moves right"],
            ["a green cross shrinks"]]
    bleu4, cider = per_video_metrics(hyps, refs)
    assert bleu4[0] == pytest.approx(1.0) and bleu4[0] > bleu4[1] > bleu4[2] >= 0
    assert cider[2] == pytest.approx(0.0) and min(cider[:2]) > 1.0  # "a dog" shares no n-gram but "a"
    if ev._coco_available():  # the same numbers as coco-caption's corpus CIDEr-D, clip by clip
        corpus, _ = ev.coco_scores(hyps, refs, meteor=False)
        assert sum(cider) / 3 == pytest.approx(corpus["cider"])


# --- the commands ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated_html(trained, tmp_path_factory):
    """`captioner evaluate --html` on the tiny trained checkpoint's test split (features from the cache)."""
    _, _, best = trained
    out = tmp_path_factory.mktemp("eval html")
    assert evaluate_main(["--checkpoint", str(best), "--out", str(out), "--no-progress", "--no-meteor", "--html"]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["html"] == str(out / "report.html")
    return out / "report.html", predictions


def test_evaluate_html_has_a_card_per_clip_with_frames_and_metrics(evaluated_html):
    path, predictions = evaluated_html
    page = Page(path.read_text(encoding="utf-8"))
    assert [c["caption"] for c in page.cards] == [p["caption"] for p in predictions] and len(predictions) == 4
    for card, p in zip(page.cards, predictions):
        assert len(card["imgs"]) == 1 and jpeg(card["imgs"][0]).size[1] == THUMB_HEIGHT
        assert float(card["attrs"]["data-score"]) == pytest.approx(p["score"], abs=1e-5)
        assert "data-bleu4" in card["attrs"] and all(r in card["text"] for r in p["references"])
    assert "generation" in path.read_text() and "beam_size=2" in path.read_text()


def test_evaluate_html_decodes_each_clip_once_and_shows_unreadable_ones(trained, tiny_dataset, tmp_path,
                                                                        monkeypatch):
    import captioner.video as video

    _, _, best = trained
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    ann = json.loads((data / "annotations.json").read_text())
    test = [v for v in ann["videos"] if v["split"] == "test"]
    (data / test[1]["path"]).write_bytes(b"not a video")
    reads = Counter()
    read_frames = video.read_frames

    def counting_read_frames(path, *args, **kwargs):
        reads[str(path)] += 1
        return read_frames(path, *args, **kwargs)

    monkeypatch.setattr(video, "read_frames", counting_read_frames)
    report = ev.evaluate(best, "test", data_dir=str(data), features_dir=str(tmp_path / "no cache"),
                         out_dir=tmp_path / "out", meteor=False, progress=False, html=tmp_path / "r.html")
    assert report["features_from_video"] == 3 and len(report["skipped"]) == 1
    assert sorted(reads.values()) == [1, 1, 1, 1]  # the report reused the frames captioning read
    page = Page((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert len(page.cards) == 4 and sum(bool(c["imgs"]) for c in page.cards) == 3
    assert page.cards[-1]["error"] == report["skipped"][0]["reason"] and test[1]["id"] in page.cards[-1]["text"]


def test_caption_html_shows_every_video_and_its_error(trained, tiny_dataset, tmp_path, capsys):
    _, _, best = trained
    videos = sorted((tiny_dataset / "videos").glob("*.mp4"))[:2]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"junk")
    out = tmp_path / "captions.html"
    code = caption_command([*map(str, videos), str(bad), "-c", str(best), "--html", str(out), "--json"])
    assert code == 1
    records = json.loads(capsys.readouterr().out)
    page = Page(out.read_text(encoding="utf-8"))
    assert [c["caption"] for c in page.cards] == [r.get("caption") for r in records]
    assert page.cards[2]["error"] == records[2]["error"] and str(bad) in page.cards[2]["text"]
    assert [len(c["imgs"]) for c in page.cards] == [1, 1, 0]


def test_html_path_in_a_missing_folder_is_refused_before_any_work(trained, tmp_path, capsys):
    _, _, best = trained
    target = tmp_path / "nowhere" / "r.html"
    assert caption_command(["x.mp4", "-c", str(best), "--html", str(target)]) == 2
    assert evaluate_main(["--checkpoint", str(best), "--html", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"captioner caption: error: --html {target}: the folder {target.parent} does not exist "
                   "(create it first)",
                   f"captioner evaluate: --html {tmp_path} is a folder: give a file name such as "
                   f"{tmp_path / 'report.html'}"]


# --- in a real browser -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> str:
    found = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if found is None:
        pytest.skip("no headless browser to check the report in: install Debian's `chromium` (apt-get install "
                    "chromium; .ci/run does when it runs as root)")
    return found


def run_browser(browser: str, url: str, tmp_path, *flags: str) -> tuple[str, list[str]]:
    """Load `url` headless; returns (stdout, the page's console messages from Chromium's log on stderr)."""
    proc = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *flags, url],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_console_messages_are_caught(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><script>undefinedFunction();</script>")
    _, console = run_browser(browser, page.as_uri(), tmp_path, "--dump-dom")
    assert len(console) == 1 and "Uncaught ReferenceError: undefinedFunction is not defined" in console[0]


def test_report_in_a_browser_loads_cleanly_and_sorts(browser, evaluated_html, tmp_path):
    path, predictions = evaluated_html
    dom, console = run_browser(browser, path.as_uri(), tmp_path, "--dump-dom")
    assert console == []
    page = Page(dom)
    assert [c["caption"] for c in page.cards] == [p["caption"] for p in predictions]
    assert "4 of 4 videos" in dom

    dom, console = run_browser(browser, path.as_uri() + "#sort=score-asc", tmp_path, "--dump-dom")
    assert console == []
    by_score = sorted(predictions, key=lambda p: p["score"])
    assert [c["caption"] for c in Page(dom).cards] == [p["caption"] for p in by_score]

    word = predictions[0]["references"][0].split()[-1]  # a word of one clip's references: filters the cards
    dom, console = run_browser(browser, f"{path.as_uri()}#sort=score-desc&q={word}", tmp_path, "--dump-dom")
    assert console == []
    cards = Page(dom).cards
    shown = [c for c in cards if "hidden" not in c["attrs"]]
    assert [c["caption"] for c in cards] == [p["caption"] for p in by_score[::-1]]
    assert shown and all(word in c["text"].lower() for c in shown)
    assert len(shown) == sum(any(word in r.lower() for r in p["references"]) or word in p["caption"]
                             for p in predictions)


def test_report_screenshot(browser, evaluated_html, tmp_path):
    path, _ = evaluated_html
    shot = tmp_path / "report.png"
    _, console = run_browser(browser, path.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1000,700",
                             "--hide-scrollbars")
    assert console == []
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 700)
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # text and frames, not a blank page
