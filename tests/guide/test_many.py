"""Many identities: in one run, one after another (the ledger), resumed, verified; and bad input refused
before anything is written."""
import json

import pytest
import torch
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.guide import ledger
from guide_engine.guide.config import UnlearnConfig
from guide_engine.guide.target import ufo_target
from guide_engine.guide.unlearn import run_unlearning

SEEDS = (51, 52, 53, 54, 55)  # identities no other test forgets


def _targets(generator, w_u):
    return torch.cat([ufo_target(w_u[i:i + 1], generator.average_latent(), 10.0) for i in range(len(w_u))])


def _moved(generator, G_u, identity, w):
    with torch.no_grad():
        return identity.distance(identity.descriptors(generator.synthesize(w)), identity.descriptors(G_u.synthesize(w)))


def test_two_identities_both_move_away(generator, identity):
    w_u = generator.latents_for_seeds(SEEDS[:2])
    G_u, hist = run_unlearning(generator, identity, w_u, _targets(generator, w_u),
                               UnlearnConfig(iters=30, alpha_max=5.0), progress=False)
    moved = _moved(generator, G_u, identity, w_u)
    bystander = _moved(generator, G_u, identity, generator.latents_for_seeds([77]))
    assert (moved > 0.15).all() and (moved > 3 * bystander).all(), (moved, bystander)
    assert hist[-1]["local"] < hist[0]["local"]


def test_resume_mid_run_equals_uninterrupted(generator, identity, tmp_path):
    w_u = generator.latents_for_seeds(SEEDS)  # 5 identities, 2 per iteration
    cfg = UnlearnConfig(iters=6, alpha_max=5.0, checkpoint_every=3, identities_per_iter=2)
    a, _ = run_unlearning(generator, identity, w_u, _targets(generator, w_u), cfg, progress=False)
    ck = tmp_path / "ck.pt"
    run_unlearning(generator, identity, w_u, _targets(generator, w_u), cfg, checkpoint=ck, progress=False, stop_after=3)
    b, _ = run_unlearning(generator, identity, w_u, _targets(generator, w_u), cfg, checkpoint=ck, resume=True,
                          progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def _unlearn(*args):
    return CliRunner().invoke(main, ["unlearn", "--iters", "2", "--target-search", "4", *map(str, args)])


def test_sequential_runs_carry_weights_and_ledger(tmp_path):
    from safetensors.torch import load_file

    a, b = tmp_path / "a", tmp_path / "b"
    r = _unlearn("--seeds", "51,52", "--seed", "51", "--out", a)
    assert r.exit_code == 0, r.output
    assert "seed 51: the same identity as seed 51; counted once" in r.output  # CliRunner mixes stderr in
    r = _unlearn("--generator", a, "--seeds", "52,53", "--out", b)
    assert r.exit_code == 0, r.output
    assert "seed 52: already forgotten" in r.output
    book = ledger.read(b)
    assert [e["key"] for e in book["identities"]] == ["seed:51", "seed:52", "seed:53"]
    assert [e["run"] for e in book["identities"]] == ["a", "a", "b"]
    cfg = json.loads((b / "config.json").read_text())
    assert cfg["job"]["continued_from"] == str(a) and cfg["job"]["identities_trained"] == 3
    man_a, man_b = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert man_b["continued_from"]["result_sha256"] == man_a["result_sha256"] != man_b["result_sha256"]
    assert man_b["base_sha256"] == man_a["base_sha256"] and len(man_b["identities"]) == 3
    # B started from A's weights: after 2 more iterations B is much closer to A than to the base
    wa, wb = load_file(str(a / "generator.safetensors")), load_file(str(b / "generator.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_verify_checks_every_identity(tmp_path):
    run = tmp_path / "run"
    assert _unlearn("--seeds", "51,52,53", "--out", run).exit_code == 0
    r = CliRunner().invoke(main, ["verify", str(run), "--n-preserve", "8", "--no-reinversion", "--json"])
    assert r.exit_code == 1  # 2 iterations forget no one
    report = json.loads((run / "report.json").read_text())
    assert report["n_identities"] == 3 and [x["key"] for x in report["identities"]] == ["seed:51", "seed:52", "seed:53"]
    assert report["identity"]["judge_id_dist"] == min(x["judge_id_dist"] for x in report["identities"])  # the worst
    assert report["target"]["n_identities"] == 3 and -1 <= report["target"]["collapse_sim"] <= 1  # automatic
    r = CliRunner().invoke(main, ["verify", str(run), "--n-preserve", "8", "--no-reinversion"])
    assert "worst of 3 identities" in r.output and "seed:53" in r.output


def test_bad_many_inputs(tmp_path, generator):
    from guide_engine.engine.images import save_png

    empty, mixed = tmp_path / "empty", tmp_path / "mixed"
    empty.mkdir(), mixed.mkdir()
    with torch.no_grad():
        save_png(generator.synthesize(generator.latents_for_seeds([51])), mixed / "a.png")
    (mixed / "notes.txt").write_text("not a face")
    for args, msg in ((["--images", empty], "no files in it"),
                      (["--images", mixed], "notes.txt: not a readable image")):
        out = tmp_path / "run"
        r = _unlearn(*args, "--out", out)
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not out.exists() and not (tmp_path / "run.partial").exists()
    (mixed / "notes.txt").unlink()
    (mixed / "copy.png").write_bytes((mixed / "a.png").read_bytes())  # the same photo twice
    run = tmp_path / "ok"
    r = _unlearn("--images", mixed, "--invert-steps", "2", "--out", run)
    assert r.exit_code == 0 and "copy.png: the same identity as" in r.output, r.output
    assert len(ledger.read(run)["identities"]) == 1


def test_continuing_a_tampered_or_foreign_run_is_refused(tmp_path, tiny_run_factory):
    run = tiny_run_factory(56)
    w = run / "generator.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(w))
    state["main.0.weight"] = state["main.0.weight"] * 1.01
    save_file(state, str(w))
    out = tmp_path / "next"
    r = _unlearn("--generator", run, "--seed", "57", "--out", out)
    assert r.exit_code == 2 and "is not the" in r.output and "manifest records" in r.output
    assert not out.exists() and not (tmp_path / "next.partial").exists()

    other = tiny_run_factory(58)
    book = json.loads((other / "identities.json").read_text())
    book["base_sha256"] = "0" * 64
    (other / "identities.json").write_text(json.dumps(book))
    r = _unlearn("--generator", other, "--seed", "57", "--out", out)
    assert r.exit_code == 2 and "made for base generator" in r.output and not out.exists()


def test_truncated_checkpoint_on_resume_is_one_line(generator, identity, tmp_path):
    from guide_engine.engine.errors import GuideEngineError

    w_u = generator.latents_for_seeds(SEEDS[:1])
    cfg = UnlearnConfig(iters=4, alpha_max=5.0, checkpoint_every=2)
    ck = tmp_path / "ck.pt"
    run_unlearning(generator, identity, w_u, _targets(generator, w_u), cfg, checkpoint=ck, progress=False, stop_after=2)
    ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(GuideEngineError, match="does not load .* it is damaged") as e:
        run_unlearning(generator, identity, w_u, _targets(generator, w_u), cfg, checkpoint=ck, resume=True,
                       progress=False)
    assert "\n" not in str(e.value)
