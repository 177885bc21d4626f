"""report.html beside report.json: one self-contained page (images inline), for a reader who does not
know what a raw dlib cosine means. The verdict in words first; then both identity networks' figures with
the thresholds they are judged by and what each means; then the pictures (report.png, before/after,
losses.png when the run has them)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from guide_engine.guide.verify import fmt, summary_rows, verdict_lines

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 24px auto; padding: 0 16px; color: #222 }
h1 { font-size: 22px } h2 { font-size: 18px; margin-top: 28px }
.verdict { padding: 12px 16px; border-radius: 6px; font-size: 17px }
.pass { background: #e6f4ea; border: 1px solid #5a9 } .fail { background: #fdecea; border: 1px solid #d66 }
table { border-collapse: collapse; margin: 8px 0 } td, th { padding: 4px 10px; border-bottom: 1px solid #ddd }
td.n { text-align: right; font-variant-numeric: tabular-nums } th { text-align: left; background: #f4f4f4 }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc } .note { color: #555; font-size: 13px }
"""

MEANING = [
    ("distance", "How far apart two faces are to a network, in its own distance (dlib: euclidean; SFace: 1 - cos). "
                 "A raw number means nothing alone: strangers drawn by this generator set the scale."),
    ("strangers' median", "Half of all pairs of different generated people are at least this far apart. The "
                          "unlearned face at the person's latent must be at least this far from the pretrained one."),
    ("strangers' p5", "Only 5% of stranger pairs are closer than this: below it, two faces are the same person. A "
                      "random face is kept when both networks put its pretrained and unlearned images below it."),
    ("strangers' p1", "Only 1% of stranger pairs are closer: an attack whose best face is closer than this has found "
                      "the person again."),
    ("judge", "A network the unlearning never trained against (it cannot have been fooled by the loss); it decides."),
]


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption class="note">' \
           f'{html.escape(alt)}</figcaption></figure>'


def render(report: dict, run: Path) -> str:
    e = html.escape
    passed = report["passed"]
    lines = verdict_lines(report)
    rows = summary_rows(report)
    p = report["preservation"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>guide-engine report: {e(run.name)}</title>"
           f"<style>{STYLE}</style></head><body>",
           f"<h1>Unlearning report: {e(run.name)}</h1>",
           f"<div class='verdict {'pass' if passed else 'fail'}'><b>{'PASSED' if passed else 'FAILED'}</b> "
           f"(required level: {e(report['required'])}).<br>" + "<br>".join(e(x) for x in lines[2:]) + "</div>",
           "<h2>Figures from both identity networks</h2><table>",
           "<tr>" + "".join(f"<th>{e(c)}</th>" for c in rows[0]) + "</tr>"]
    for what, a, b in rows[1:]:
        out.append(f"<tr><td>{e(what.strip())}</td><td class='n'>{e(fmt(a))}</td><td class='n'>{e(fmt(b))}</td></tr>")
    out += [f"<tr><td>random faces kept by both networks</td><td class='n' colspan='2'>{p['same_person_frac']:.1%}</td></tr>",
            f"<tr><td>pixel L1 on random faces</td><td class='n' colspan='2'>{p['pixel_l1']:.4f}</td></tr>", "</table>",
            "<p class='note'>" + e(lines[0]) + "<br>" + e(lines[1]) + "</p>",
            "<h2>What the thresholds mean</h2><table>"]
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in MEANING] + ["</table>", "<h2>Pictures</h2>"]
    for name, alt in (("report.png", "the person: photo, pretrained and unlearned faces, the attack's best faces"),
                      ("before_after.png", "pretrained (top) and unlearned (bottom): the person, neighbours, random faces"),
                      ("losses.png", "the unlearning losses over iterations")):
        if (run / name).is_file():
            out.append(_img(run / name, alt))
    # marks how many images the browser could decode (the report test reads it back from the DOM)
    out.append("<script>addEventListener('load', () => { const im = [...document.images]; document.body.dataset."
               "imagesLoaded = im.filter(i => i.complete && i.naturalWidth > 0).length + '/' + im.length; });</script>")
    out.append("</body></html>")
    return "\n".join(out)


def write(report: dict, run: Path) -> Path:
    from guide_engine.engine.files import atomic_write

    page = render(report, run)
    atomic_write(run / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return run / "report.html"
