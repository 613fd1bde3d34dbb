"""The HTML reports in a real browser (issue 17): headless Chromium (Debian's `chromium` package) opens the
audit report (`thresher audit report`) and the A/B report (`thresher compare`'s compare.html).

Each page must load with no console errors (uncaught exceptions, console.error, failed resource loads),
every plot must be decoded and drawn (its part of a full-page screenshot is not blank), every thumbnail
of the audit report's galleries decoded and drawn as its JPEG holds it (its part of the screenshot is
the JPEG's pixels: a thumbnail may be of a nearly blank image, so "not blank" is not the test), and the
numbers of the matching JSON must be in the rendered text. The browser is driven over the DevTools protocol on
a pipe (`--remote-debugging-pipe`: commands on fd 3, replies and events on fd 4, NUL-separated JSON), with
the standard library only. Chromium's stderr log (`--enable-logging=stderr`) was not enough: it prints
console messages but not failed resource loads. Negative controls (a page with a JS error, a missing
image, a blank page, a blank plot...) run through the same checks, so none of them can pass vacuously.

Without Chromium the tests are skipped, unless THRESHER_REQUIRE_BROWSER=1 (as in .ci/run): then they fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw
from test_compare import BASE, NOISE, PLANTED, simulated_table

from benchmarks import ab_calibration as sim
from thresher.app import cli
from thresher.audit import gallery
from thresher.stages.subset import subset

WIDTH = 1280
AUDIT_PLOTS = {"funnel", "domains", "languages", "sizes", "scores"}
COMPARE_PLOTS = {"curves", "difference"}

TRAMPOLINE = """import fcntl, os, sys
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
os.dup2(high[0], 3)
os.dup2(high[1], 4)
os.execv(sys.argv[3], sys.argv[3:])"""

# after the load event: wait for a frame to be painted, then report what a reader sees
PAGE_INFO = """new Promise(done => requestAnimationFrame(() => setTimeout(() => done(JSON.stringify({
  text: document.body ? document.body.innerText : "",
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  tables: [...document.querySelectorAll("table")].map(t => ({
    cls: t.className,
    rows: [...t.rows].map(r => [...r.cells].map(c => c.innerText)),
  })),
  images: [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {alt: i.alt, cls: i.className, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
            box: [r.left + scrollX, r.top + scrollY, r.width, r.height]};
  }),
})), 50)))"""


@dataclass
class Page:
    errors: list[str]  # console errors, uncaught exceptions and failed loads, as the DevTools console lists them
    text: str  # document.body.innerText: what is rendered, not what is in the source
    tables: list[dict]
    images: list[dict]
    screenshot: Image.Image  # the full page

    def table(self, cls: str) -> list[list[str]]:
        return next(t["rows"] for t in self.tables if t["cls"] == cls)


class DevTools:
    """One headless Chromium and its DevTools pipe."""

    def __init__(self, exe: str, profile: Path, timeout: float = 60.0):
        self.timeout, self.events, self.buf, self.next_id = timeout, [], b"", 0
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()
        args = [
            "--headless",
            "--no-sandbox",  # we run as root in CI
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--hide-scrollbars",
            "about:blank",
        ]
        # a small Python trampoline puts our pipe ends on fds 3 and 4, by way of fds >= 10 so that neither
        # overwrites the other (dash takes no fd above 9; preexec_fn is unsafe here, the test process has threads)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(cmd_r), str(out_w), exe, *args],
            pass_fds=(cmd_r, out_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(out_w)

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            ready, _, _ = select.select([self.out_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no reply from Chromium over the DevTools pipe")
            chunk = os.read(self.out_r, 1 << 20)
            if not chunk:
                raise EOFError(f"Chromium closed the DevTools pipe (exit code {self.proc.poll()})")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, **params) -> None:
        """Until an event `method` with these params has come (or has already come)."""
        deadline = time.monotonic() + self.timeout

        def seen():
            return any(
                e.get("method") == method and all(e["params"].get(k) == v for k, v in params.items())
                for e in self.events
            )

        while not seen():
            self.events.append(self._recv(deadline))

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=20)
        except (OSError, EOFError, TimeoutError, RuntimeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.cmd_w)
            os.close(self.out_r)


def console_errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"{d.get('text', '')} {d.get('exception', {}).get('description', '')} at {d.get('url', '')}")
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"{p['entry']['text']} ({p['entry'].get('url', '')})")
    return out


def open_page(exe: str, path: Path, profile: Path) -> Page:
    """Load `path` in a fresh browser with its own profile; collect console errors, the rendered text, tables
    and images, and a full-page screenshot."""
    b = DevTools(exe, profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            b.send(f"{domain}.enable", session=s)
        b.send("Page.setLifecycleEventsEnabled", {"enabled": True}, session=s)
        b.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=s,
        )
        nav = b.send("Page.navigate", {"url": path.resolve().as_uri()}, session=s)
        # the load of this navigation (its loaderId), not a late one of the initial about:blank
        b.wait_for("Page.lifecycleEvent", name="load", loaderId=nav["loaderId"])
        info = json.loads(
            b.send(
                "Runtime.evaluate", {"expression": PAGE_INFO, "awaitPromise": True, "returnByValue": True}, session=s
            )["result"]["value"]
        )
        clip = {"x": 0, "y": 0, "width": info["width"], "height": info["height"], "scale": 1}
        shot = b.send(
            "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}, session=s
        )
    finally:
        b.close()
    errors = console_errors(b.events) + ([f"navigation failed: {nav['errorText']}"] if nav.get("errorText") else [])
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    return Page(errors, info["text"], info["tables"], info["images"], image)


def drawn(im: Image.Image) -> tuple[float, int]:
    """(share of pixels not of the most common colour, number of distinct colours)."""
    colours = im.getcolors(im.width * im.height)
    return 1 - max(n for n, _ in colours) / (im.width * im.height), len(colours)


def problems(page: Page, plots: set[str], source: str = "") -> list[str]:
    """Everything a reader would see as broken: console errors, a blank page, any expected plot that
    is missing, not decoded, or blank where it is drawn, and any thumbnail of the page's `source` that is
    not shown as its JPEG."""
    out = list(page.errors)
    share, colours = drawn(page.screenshot)
    if share < 0.01 or colours < 8:
        out.append(f"blank page ({share:.2%} drawn, {colours} colours)")
    out += thumbnail_problems(page, source)
    shown = {i["alt"]: i for i in page.images if i["cls"] != "thumb"}
    if set(shown) != plots:
        out.append(f"plots {sorted(shown)}, expected {sorted(plots)}")
    for alt, i in shown.items():
        x, y, w, h = (round(v) for v in i["box"])
        if not i["complete"] or min(i["natural"]) == 0 or w < 200 or h < 100:
            out.append(f"plot {alt!r} not shown (natural size {i['natural']}, box {w}x{h})")
            continue
        share, colours = drawn(page.screenshot.crop((x, y, x + w, y + h)))
        if share < 0.03 or colours < 16:
            out.append(f"plot {alt!r} is blank ({share:.2%} drawn, {colours} colours)")
    return out


def thumbnail_problems(page: Page, source: str) -> list[str]:
    """Each thumbnail (img.thumb) not decoded, not at its natural size (at most the gallery's side), or not
    drawn as its JPEG (from `source`, the page's HTML): the screenshot where it is shown, against the JPEG
    decoded by PIL, must differ by under 8 levels on average at the best of the nine one-pixel shifts (a box
    at a fractional position is rounded; decoders differ by a level or two)."""
    out = []
    thumbs = [i for i in page.images if i["cls"] == "thumb"]
    jpegs = re.findall(r'<img class="thumb"[^>]* src="data:image/jpeg;base64,([^"]+)"', source)
    if len(jpegs) != len(thumbs):
        return [f"{len(thumbs)} thumbnails shown, {len(jpegs)} in the page's source"]
    for i, data in zip(thumbs, jpegs):
        x, y, w, h = (round(v) for v in i["box"])
        if not i["complete"] or min(i["natural"]) == 0 or [w, h] != i["natural"]:
            out.append(f"thumbnail {i['alt']!r} not shown (natural size {i['natural']}, box {w}x{h})")
            continue
        jpeg = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")  # the browser decoded it: so can PIL
        if max(jpeg.size) > gallery.THUMB_SIDE:
            out.append(f"thumbnail {i['alt']!r} is {jpeg.size}, over {gallery.THUMB_SIDE} px")
        want = np.asarray(jpeg, dtype=np.float32)
        diff = min(
            float(
                np.abs(
                    np.asarray(page.screenshot.crop((x + dx, y + dy, x + dx + w, y + dy + h)), np.float32) - want
                ).mean()
            )
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
        )
        if diff >= 8:
            out.append(f"thumbnail {i['alt']!r} is not drawn as its JPEG (mean difference {diff:.1f} levels)")
    return out


@pytest.fixture
def browser(chromium, tmp_path):
    """open(path) -> Page, each in a fresh Chromium with a profile under this test's tmp_path."""
    count = iter(range(1000))
    return lambda path: open_page(chromium, path, tmp_path / f"profile-{next(count)}")


# --- negative controls: each broken page must be caught by the checks the reports pass --------------------


def png_data(draw: bool) -> str:
    im = Image.new("RGB", (400, 300), "white")
    if draw:
        d = ImageDraw.Draw(im)
        for k in range(0, 400, 20):
            d.line([(k, 300), (400 - k, 0)], fill=(k % 256, 80, 200 - k // 2), width=3)
        d.text((20, 20), "a drawn plot 0.123", fill="black")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def page_with(body: str) -> str:
    return f"<!doctype html><html><head><meta charset='utf-8'></head><body><h1>Report 0.123</h1>{body}</body></html>"


def jpeg_data() -> str:
    """A drawn thumbnail, as the galleries embed one."""
    im = Image.open(io.BytesIO(base64.b64decode(png_data(True)))).resize((120, 90))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def thumb(src: str, style: str = "") -> str:
    return f'<figure><img class="thumb" alt="sample x" src="data:image/jpeg;base64,{src}"{style}></figure>'


PLOT = f"<img alt='plot' src='data:image/png;base64,{png_data(True)}'>"
THUMB = thumb(jpeg_data())
CONTROLS = {  # name: (page, what the checks must say about it)
    "js-error": (page_with(PLOT + "<script>no_such()</script>"), "ReferenceError"),
    "console-error": (page_with(PLOT + "<script>console.error('bad')</script>"), "console.error: bad"),
    "missing-image": (page_with("<img alt='plot' src='missing.png'>"), "ERR_FILE_NOT_FOUND"),
    "corrupt-image": (page_with("<img alt='plot' src='data:image/png;base64,iVBORw0KGgoAAAA='>"), "not shown"),
    "blank-plot": (page_with(f"<img alt='plot' src='data:image/png;base64,{png_data(False)}'>"), "is blank"),
    "blank-page": ("<!doctype html><html><body></body></html>", "blank page"),
    "corrupt-thumbnail": (page_with(PLOT + thumb("/9j/4AAQSkZJRgABAQ==")), "thumbnail 'sample x' not shown"),
    "hidden-thumbnail": (page_with(PLOT + thumb(jpeg_data(), ' style="opacity:0.3"')), "not drawn as its JPEG"),
    "resized-thumbnail": (page_with(PLOT + thumb(jpeg_data(), ' width="200"')), "thumbnail 'sample x' not shown"),
}


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_a_broken_page_is_caught(browser, tmp_path, name):
    html, expected = CONTROLS[name]
    (tmp_path / "page.html").write_text(html)
    found = problems(browser(tmp_path / "page.html"), {"plot"}, html)
    assert any(expected in p for p in found), found


def test_a_sound_page_passes(browser, tmp_path):
    """The positive control: the same page as the negative ones, with nothing wrong in it."""
    (tmp_path / "page.html").write_text(page_with(PLOT + THUMB))
    page = browser(tmp_path / "page.html")
    assert problems(page, {"plot"}, page_with(PLOT + THUMB)) == [] and "Report 0.123" in page.text


# --- the reports ------------------------------------------------------------------------------------------

RECIPE = "datacomp-clip-b32-30pct"  # ranked by the tiny CLIP scorer's score: every section of the report


@pytest.fixture(scope="module")
def audited_subset(featured_pool, tmp_path_factory, ray_local) -> Path:
    out = tmp_path_factory.mktemp("browser") / RECIPE
    cfg = subset.SubsetConfig(size=500, seed=3, samples_per_shard=200)
    subset.run(str(featured_pool), [RECIPE], cfg, str(out), {"scorer": "clip_tiny"}, log=lambda *_: None)
    return out


@pytest.mark.usefixtures("chromium")  # first, so that a missing browser skips before the pool is built
def test_the_audit_report_renders_with_its_numbers(browser, audited_subset, featured_pool, tmp_path):
    page_path = tmp_path / "report.html"
    assert cli.main(["audit", "report", str(audited_subset), "--out", str(page_path)]) == 0
    page = browser(page_path)
    assert problems(page, AUDIT_PLOTS, page_path.read_text()) == []
    m = json.loads((audited_subset / "manifest.json").read_text())
    # the galleries: 8 kept, and up to 8 per filter step's dropped, every one a thumbnail shown as its JPEG
    dropped = [min(8, f["in"] - f["out"]) for f in m["funnel"] if f["stage"].startswith("filter:")]
    assert sum(i["cls"] == "thumb" for i in page.images) == 8 + sum(dropped) > 8
    step = m["funnel"][1]
    assert f"Dropped by {step['stage'][7:]} ({step['filter']}): {step['in'] - step['out']:,} samples" in page.text
    assert f"Subset {RECIPE}: {m['size']:,} samples" in page.text
    funnel = page.tables[0]["rows"]
    assert funnel[0] == ["stage", "in", "out", "removed"]
    assert funnel[1:] == [[f["stage"], f"{f['in']:,}", f"{f['out']:,}", f"{f['in'] - f['out']:,}"] for f in m["funnel"]]
    assert funnel[-1][2] == f"{m['size']:,}"
    # opt-out compliance, against the pool's own count of samples refused at download
    opted = sum(
        pc.sum(pc.equal(pq.read_table(p, columns=["failure"]).column("failure"), "opted_out")).as_py() or 0
        for p in (featured_pool / "shards").glob("*.parquet")
    )
    compliance = dict(page.tables[1]["rows"])
    assert opted > 0 and compliance["pool samples opted out at download (X-Robots-Tag)"] == str(opted)
    assert compliance["opted-out samples in this subset"] == "0" and compliance["compliant"] == "yes"


@pytest.mark.parametrize("case", ["no-difference", "b-better"])
def test_the_compare_report_renders_with_its_numbers(browser, tmp_path, case):
    if case == "no-difference":
        table, extra = simulated_table(7, BASE), []
    else:  # a planted difference far above the noise, with the backtest section
        quiet = {**NOISE, "replicate": 0.005, "run": 0.005, "checkpoint": 0.005}
        table = simulated_table(11, PLANTED, noise=quiet)
        extra = ["--backtest", str(sim.WIDTH_GFLOPS[1] * sim.WIDTH_SAMPLES[1])]
    table.to_csv(tmp_path / "r.csv", index=False)
    args = ["compare", str(tmp_path / "r.csv"), "--a", "a", "--b", "b", "--metric", "acc", "--target-compute", "10x"]
    assert cli.main(args + extra + ["--out", str(tmp_path / "ab")]) == 0
    r = json.loads((tmp_path / "ab" / "compare.json").read_text())
    assert (r["measured"]["better"] == "b") == (case == "b-better")
    page = browser(tmp_path / "ab" / "compare.html")
    assert problems(page, COMPARE_PLOTS) == []
    for text in [r["verdict"], r["measured"]["verdict"], *r["flags"]] + ([r["resolve"]] if r.get("resolve") else []):
        assert text in page.text
    summary = dict(page.table("summary"))
    assert summary["confidence"] == f"{r['confidence']:.0%}"
    assert summary["target compute"].startswith(f"{r['target_compute']:.4g} ")
    assert summary["predicted error A"].startswith(f"{r['error_a']:.4f}")
    assert summary["predicted error B"].startswith(f"{r['error_b']:.4f}")
    p = next(v for k, v in summary.items() if k.startswith("P(B better at target)"))
    assert p == ("-" if r["p_b_better"] is None else f"{r['p_b_better']:.2f}")
    units = r["units"]
    assert summary["independent units"] == (
        f"A: {units['a']['count']} {units['a']['kind']}(s), B: {units['b']['count']} {units['b']['kind']}(s)"
    )
    assert len(page.table("runs")) == 1 + len(r["runs"]) == 1 + 2 * 3 * 3  # every (recipe, scale, replicate)
    if case == "b-better":
        assert f"outcome: {r['backtest']['outcome']}" in page.text
