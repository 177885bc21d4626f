"""The verification report, as a reader sees it: the summary table (text), report.png and report.html.

report.json's format, its verdict rule and its checks live in engine/reports.py; verify (guide/verify.py)
writes it, its figures come from guide/metrics.py.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import torch

from ..engine import reports, rundir
from ..engine.files import atomic_write


def save_report_picture(report: dict, pictures: list[dict], random_faces: dict, attack_images: dict | None,
                        path: Path) -> None:
    """report.png: the worst identity (photo, pretrained and unlearned at w_u, the attack's best faces), the
    thresholds and the verdict in words; below it, pretrained vs unlearned at each w_u (up to 8), the
    worst identity's neighbours, and random latents."""
    from ..engine.images import make_grid, save_stack

    t, i, k = report["training_network"], report["identity"], report["worst_identity"]
    short = t["name"].split("-")[0]  # dlib, arcface
    worst = pictures[k]
    top = [worst["x_pre"], worst["x_un"]]
    titles = ["pretrained w_u\n ", f"unlearned w_u\njudge {i['judge_id_dist']:.2f} {short} {i['id_dist']:.2f}"]
    if attack_images is not None:
        a = report["attack"]
        top = [attack_images["photo"], *top, attack_images["unlearned"]]
        by = a["judge_attacker"]
        titles = ["attacker's photo\n ", *titles,
                  f"{by} attack, unlearned\njudge {a['judge_best']:.2f} {short} {a['attackers'][by]['train_best']:.2f}"]
        if "pretrained" in attack_images:
            top.append(attack_images["pretrained"])
            titles.append(f"attack, pretrained\njudge {a['judge_pretrained']:.2f} {short} {a['train_pretrained']:.2f}")
        for kind, face in attack_images.get("attackers", {}).items():  # each attacker's best face, for a person to see
            k_ = a["attackers"][kind]
            top.append(face)
            titles.append(f"{kind[:14]}\njudge {k_['judge_best']:.2f} ({k_['judge_starts_closer_than_p1']} in)")
    n_near = min(4, len(worst["xn_pre"]))
    pre = torch.cat([*(p["x_pre"] for p in pictures[:8]), worst["xn_pre"][:n_near], random_faces["pre"]])
    un = torch.cat([*(p["x_un"] for p in pictures[:8]), worst["xn_un"][:n_near], random_faces["un"]])
    rows = report["identities"][:8]
    captions = [f"judge {r['judge_id_dist']:.2f}" for r in rows] + ["neighbour"] * n_near \
        + ["random"] * len(random_faces["pre"])
    grid = make_grid(torch.cat([pre, un]), nrow=len(pre), scale=2, row_labels=["pretrained", "unlearned"],
                     captions=[""] * len(pre) + captions)
    head = f"worst of {report['n_identities']} identities: #{k}" if report["n_identities"] > 1 else "the identity"
    save_stack([[head], make_grid(torch.cat(top), nrow=len(top), scale=2, captions=titles), verdict_lines(report),
                ["below: each w_u (judge distance, pretrained vs unlearned), neighbours of the worst, random faces"],
                grid], path)


def outcome(report: dict) -> str:
    """One phrase for the whole report: "not drawn" (some person's photo was never drawn by the pretrained
    generator: nothing about forgetting them can be claimed), "not found" (the generator draws them, but the run's
    w_u is someone else), "robust", "forgotten" or "not forgotten"."""
    if any(r.get("drawn") is False for r in report["identities"]):
        return "not drawn"
    if any(r.get("found") is False for r in report["identities"]):
        return "not found"
    if report["levels"].get("robust"):
        return "robust"
    return "forgotten" if report["levels"]["forgotten"] else "not forgotten"


def not_drawn_line(report: dict) -> str | None:
    """The not-drawn (or not-found) verdict in words, or None when every person was drawn and found (or it could
    not be told)."""
    rows = [(k, r) for k, r in enumerate(report["identities"]) if r.get("drawn") is False]
    if not rows:
        missed = [(k, r) for k, r in enumerate(report["identities"]) if r.get("found") is False]
        if not missed:
            return None
        k, r = missed[0]
        who = "this person" if report.get("n_identities", 1) == 1 else \
            f"{len(missed)} of the people (#{k}: {r.get('key')})"
        return (f"NOT FOUND: the pretrained generator draws {who} (its attack came "
                f"{r['photo_judge_dist_pretrained_attack']:.3f} from the photo to the judge), but the run's w_u is "
                f"someone else ({r['photo_judge_dist_at_w_u']:.3f}; same person below {r['drawn_line']:.3f}): it "
                f"forgot another face, and no forgetting of this person is claimed. Unlearn again with more "
                f"--invert-steps, or a clearer photo")
    k, r = rows[0]
    who = "this person" if report.get("n_identities", 1) == 1 else f"{len(rows)} of the people (#{k}: {r.get('key')})"
    best = min(v for v in (r.get("photo_judge_dist_at_w_u"),
                           r.get("photo_judge_dist_pretrained_attack")) if v is not None)
    return (f"NOT DRAWN: the pretrained generator did not draw {who} before unlearning: its closest face is "
            f"{best:.3f} from the photo to the judge (same person below {r['drawn_line']:.3f}). No forgetting is "
            f"claimed: a generator cannot forget a face it never drew (is the photo of someone else, or the wrong "
            f"face in it?)")


def verdict_lines(report: dict) -> list[str]:
    """The two verdict levels in words, with the thresholds they were decided by."""
    t, j, i, p = report["training_network"], report["judge"], report["identity"], report["preservation"]
    lines = [f"judge {j['name']}: same person below p1 {j['strangers']['p1']:.3f}, p5 {j['strangers']['p5']:.3f}; "
             f"strangers' median {j['strangers']['p50']:.3f}",
             f"training network {t['name']}: p1 {t['strangers']['p1']:.3f}, p5 {t['strangers']['p5']:.3f}, "
             f"median {t['strangers']['p50']:.3f}"]
    yes = lambda b: "YES" if b else "NO"  # noqa: E731
    if (line := not_drawn_line(report)) is not None:
        lines.append(line)
    n = report.get("n_identities", 1)
    forgotten = sum(r["forgotten"] for r in report["identities"])
    who = "the person" if n == 1 else f"the person (the worst of {n}: {forgotten} forgotten at w_u)"
    lines.append(f"forgotten: {yes(report['levels']['forgotten'])}, the judge puts the unlearned face "
                 f"{i['judge_id_dist']:.3f} from {who} (forgotten from {j['strangers']['p50']:.3f}); "
                 f"{p['same_person_frac']:.1%} of random faces kept (need "
                 f"{report['thresholds']['min_same_person_frac']:.0%})")
    if "attack" in report:
        a = report["attack"]
        own = f"{t['name']}, the attackers' own network (white-box): best {a['train_best']:.3f}, " \
              f"{a['train_starts_closer_than_p1']} of {a['starts']} starts under its p1 {t['strangers']['p1']:.3f}"
        if report["levels"]["robust"] is None:
            lines.append(f"robust to re-inversion: not measured (attackers run: {a['loss']}; the level needs "
                         f"{'+'.join(a.get('required_attackers') or ['every attacker'])})")
        elif a["robust"]:
            lines.append(f"robust to re-inversion: {yes(report['levels']['robust'])}, no attacker's face comes within "
                         f"the judge's same-person line {j['strangers']['p1']:.3f}: the closest is "
                         f"{a['judge_best']:.3f} ({a['judge_attacker']} attacker, {a['starts']} starts each); {own}"
                         + ("" if report["levels"]["forgotten"] else "; but not forgotten (above)"))
        else:
            lines.append(f"robust to re-inversion: NO, the {a['judge_attacker']} attacker reaches "
                         f"{a['judge_best']:.3f} (judge), same person below {j['strangers']['p1']:.3f}; attack success "
                         f"{a['judge_success']:.0%} ({a['judge_starts_closer_than_p1']} of {a['starts']} starts get "
                         f"there); to the judge its face is closer than {1 - a['judge_strangers_closer_frac']:.1%} of "
                         f"strangers are; {own}")
    else:
        lines.append("robust to re-inversion: not measured (--no-reinversion)")
    lines += face_warnings(report)
    return lines


def face_warnings(report: dict) -> list[str]:
    """A warning line for each identity whose unlearned image at w_u is not a face the generator draws well
    (guide/faceness.py): forgetting by a smear, not by someone else."""
    out = []
    for k, r in enumerate(report["identities"]):
        f = r.get("unlearned_face")
        if f and f["is_face"] is False:
            who = "the person" if report.get("n_identities", 1) == 1 else f"#{k} ({r.get('key')})"
            out.append(f"warning: at {who}'s w_u the unlearned generator draws no face the generator draws well "
                       f"({f['what']}): the person became a smear, not someone else")
    return out


def yes_no(b) -> str:
    return "-" if b is None else ("yes" if b else "no")


def summary_rows(report: dict) -> list[tuple]:
    """(what, training network's figure, judge's figure) rows; the first is the header."""
    t, j, i, p, th = (report[k] for k in ("training_network", "judge", "identity", "preservation", "thresholds"))
    rows = [("", f"{t['name'][:22]} (trains)", f"{j['name'][:22]} (judge)"),
            ("at w_u: distance, pretrained vs unlearned", i["id_dist"], i["judge_id_dist"]),
            ("  forgotten from (strangers' median)", th["forgotten_if_id_dist_at_least"],
             th["judge_forgotten_if_id_dist_at_least"]),
            ("  forgotten", i["train_forgotten"], i["forgotten"]),
            (f"neighbours forgotten (K={i['neighbors_k']})", i["neighbors_forgotten_frac"],
             i["judge_neighbors_forgotten_frac"]),
            ("random faces kept", p["train_same_person_frac"], p["judge_same_person_frac"]),
            ("  kept below (strangers' p5)", th["kept_if_dist_below"], th["judge_kept_if_dist_below"]),
            ("embedding Frechet distance (not FID)", p["fd_embedding"], p["judge_fd_embedding"])]
    if i.get("photo_judge_dist_at_w_u") is not None:  # a photo identity: did the pretrained generator draw them?
        rows += [("photo to the pretrained face at w_u", None, i["photo_judge_dist_at_w_u"]),
                 ("  w_u is the person (below strangers' p1)", None, i.get("found")),
                 ("  drawn before unlearning (w_u or the attack)", None, i["drawn"])]
    if "attack" in report:
        a = report["attack"]
        rows += [(f"attacks ({a['loss'].replace('+', ' + ')}; {a['starts']} starts x {a['steps']} steps each)",
                  "white-box", "the level"),
                 ("  best face, unlearned generator", a["train_best"], a["judge_best"]),
                 ("  by the attacker", a["train_attacker"], a["judge_attacker"])]
        for kind, k in a.get("attackers", {}).items():
            rows += [(f"  {kind} attacker: best", k["train_best"], k["judge_best"]),
                     (f"  {kind} attacker: success (starts under p1)", k["train_success"], k["judge_success"])]
            if k.get("outside_network"):
                rows.append((f"    {k['outside_network']} (outside its loss) agrees: starts", None,
                             f"{k['agreed_starts']} of {k['judge_starts_closer_than_p1']}"))
        rows += [("  pretrained generator at the best face's latent", a.get("train_best_pretrained_there"),
                  a.get("judge_best_pretrained_there")),
                 ("  that latent's distance from w_u (radii)", a.get("train_best_from_w_u"),
                  a.get("judge_best_from_w_u")),
                 ("  identity attack on the pretrained generator", a.get("train_pretrained"),
                  a.get("judge_pretrained")),
                 ("  same person below (strangers' p1)", th["robust_if_attack_dist_at_least"]["train"],
                  th["robust_if_attack_dist_at_least"]["judge"]),
                 ("  strangers closer than the best face", a["train_strangers_closer_frac"],
                  a["judge_strangers_closer_frac"])]
    return rows


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def summary_table(report: dict) -> str:
    """Two columns, the training network's and the judge's, then the verdict in words."""
    t, i, p, rows = report["training_network"], report["identity"], report["preservation"], summary_rows(report)
    n = report.get("n_identities", 1)
    out = [f"worst of {n} identities: #{report['worst_identity']} ({i.get('key')})"] if n > 1 else []
    out += [f"{a:<46} {fmt(b):>30} {fmt(c):>30}" for a, b, c in rows]
    out += [f"{'random faces kept by both networks':<46} {fmt(p['same_person_frac']):>30}",
            f"{'pixel L1 on random faces':<46} {fmt(p['pixel_l1']):>30}"]
    if n > 1:  # a row each
        out += ["", f"{'#':>3} {'identity':<24} {'judge at w_u':>12} {'forgotten':>9} {'attack: judge':>13} "
                    f"{'attack: ' + t['name'][:5]:>13} {'robust':>6}"]
        for k, r in enumerate(report["identities"]):
            a = r.get("attack", {})
            out.append(f"{k:>3} {str(r.get('key'))[:24]:<24} {r['judge_id_dist']:>12.3f} {yes_no(r['forgotten']):>9} "
                       f"{fmt(a.get('judge_best')):>13} {fmt(a.get('train_best')):>13} {yes_no(a.get('robust')):>6}")
    if "target" in report:
        out.append(f"{'target collapse (' + report['target']['network'] + ' cos)':<46} "
                   f"{fmt(report['target']['collapse_sim']):>30}")
    out += [""] + verdict_lines(report)[2:]
    out.append(f"{'PASSED' if report['passed'] else 'FAILED'} (required level: {report['required']}; outcome: "
               f"{report.get('outcome', outcome(report))})")
    return "\n".join(out)


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
    """report.html's text."""
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
    out += ["<tr><td>random faces kept by both networks</td><td class='n' "
            f"colspan='2'>{p['same_person_frac']:.1%}</td></tr>",
            f"<tr><td>pixel L1 on random faces</td><td class='n' colspan='2'>{p['pixel_l1']:.4f}</td></tr>", "</table>",
            "<p class='note'>" + e(lines[0]) + "<br>" + e(lines[1]) + "</p>",
            "<h2>What the thresholds mean</h2><table>"]
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in MEANING] + ["</table>", "<h2>Pictures</h2>"]
    for name, alt in ((reports.REPORT_PNG,
                       "the person: photo, pretrained and unlearned faces, the attack's best faces"),
                      (rundir.BEFORE_AFTER,
                       "pretrained (top) and unlearned (bottom): the person, neighbours, random faces"),
                      (rundir.LOSSES, "the unlearning losses over iterations")):
        if (run / name).is_file():
            out.append(_img(run / name, alt))
    # marks how many images the browser could decode (the report test reads it back from the DOM)
    out.append("<script>addEventListener('load', () => { const im = [...document.images]; document.body.dataset."
               "imagesLoaded = im.filter(i => i.complete && i.naturalWidth > 0).length + '/' + im.length; });</script>")
    out.append("</body></html>")
    return "\n".join(out)


def write_html(report: dict, run: Path) -> Path:
    """report.html: the verdict, the figures and the pictures in one self-contained page."""
    page = render(report, run)
    atomic_write(run / reports.REPORT_HTML, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return run / reports.REPORT_HTML
