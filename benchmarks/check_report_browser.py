"""Render a `featcache report` folder's report.html in headless Chromium and check what a reader's browser sees.

    python benchmarks/check_report_browser.py runs/sweeps/decoders/report [--chromium /usr/bin/chromium]

Checks, from inside the rendered page: every <img> finished loading with a non-zero natural size, and every resource
the page fetched (the Resource Timing entries: images, styles, scripts, fonts) is a file inside the report folder.
The network is cut off (every host name resolves to nothing), so a remote reference cannot load either. The page is
rendered from a temporary copy next to report.html with one measuring <script> appended (the copy is deleted after);
Chromium prints the measured DOM (``--dump-dom``) and the script's verdict is read back from it. Exit 0 when every
check passes, 1 otherwise (the failures are listed), 2 when no Chromium is found.

Chromium: Debian's ``chromium`` package (``apt-get install chromium``) works; Playwright's bundled browser is not needed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Runs after the page's load event (every image either loaded or failed), writes its findings into the DOM.
_PROBE = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (image) {
    return {src: image.getAttribute("src"), url: image.currentSrc || image.src, complete: image.complete,
            width: image.naturalWidth, height: image.naturalHeight};
  });
  var resources = performance.getEntriesByType("resource").map(function (entry) { return entry.name; });
  var links = Array.prototype.map.call(document.querySelectorAll("link[href], script[src], iframe[src], object[data]"),
                                       function (node) { return node.outerHTML.slice(0, 120); });
  var out = document.createElement("pre");
  out.id = "featcache-probe";
  out.textContent = JSON.stringify({images: images, resources: resources, links: links, page: location.href});
  document.body.appendChild(out);
});
</script>
"""
_PROBE_PATTERN = re.compile(r'<pre id="featcache-probe">(.*?)</pre>', re.S)


def find_chromium(explicit: str | None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render(chromium: str, page: Path, timeout: float = 60.0) -> dict:
    """Load ``page`` headless (no network) and return the probe's findings."""
    with tempfile.TemporaryDirectory(prefix="featcache-chromium-") as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000",
            "--allow-file-access-from-files", "--dump-dom", page.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    found = _PROBE_PATTERN.search(result.stdout)
    if not found:
        raise RuntimeError(f"Chromium printed no probe result (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
    import html

    return json.loads(html.unescape(found.group(1)))


def check_report(folder: Path, chromium: str) -> tuple[list[str], dict]:
    """(problems, findings) for ``folder``/report.html."""
    folder = folder.resolve()
    source = folder / "report.html"
    text = source.read_text()
    probe_page = folder / f".report-probe-{int(time.time() * 1000)}.html"
    probe_page.write_text(text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE)
    try:
        findings = render(chromium, probe_page)
    finally:
        probe_page.unlink(missing_ok=True)
    problems = []
    root = folder.as_uri() + "/"
    for image in findings["images"]:
        if not image["complete"] or image["width"] == 0 or image["height"] == 0:
            problems.append(f"image {image['src']!r} did not load ({image['url']})")
        if not image["url"].startswith(root):
            problems.append(f"image {image['src']!r} is outside the report folder ({image['url']})")
    for url in findings["resources"]:
        if not url.startswith(root):
            problems.append(f"the page fetched {url} (outside the report folder)")
    problems += [f"the page references {node}" for node in findings["links"]]
    if not findings["images"]:
        problems.append("report.html shows no image")
    return problems, findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a folder written by `featcache report` (holds report.html)")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: the first on PATH)")
    arguments = parser.parse_args()
    chromium = find_chromium(arguments.chromium)
    if chromium is None:
        print("no Chromium found (apt-get install chromium, or pass --chromium PATH)", file=sys.stderr)
        return 2
    if not (arguments.report / "report.html").is_file():
        print(f"{arguments.report} has no report.html; expected a folder written by `featcache report`", file=sys.stderr)
        return 1
    problems, findings = check_report(arguments.report, chromium)
    loaded = sum(1 for image in findings["images"] if image["complete"] and image["width"] > 0)
    print(f"{arguments.report / 'report.html'}: {loaded}/{len(findings['images'])} images loaded, "
          f"{len(findings['resources'])} resources fetched, all inside the folder: {not problems}")
    for image in findings["images"]:
        print(f"  {image['src']}: {image['width']}x{image['height']}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
