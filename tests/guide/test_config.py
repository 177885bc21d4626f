"""guide/config.py: each setting declared once, the CLI built from it, resolution of what the job works out."""
import dataclasses

import pytest
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.guide.config import DEFAULT_ITERS, UnlearnConfig, default_iters, resolve
from guide_engine.guide.robust import RobustConfig

REQUEST_OPTIONS = {"--seed", "--seeds", "--image", "--face", "--images", "--out", "--resume", "--trust-pickle",
                   "--nvlabs-code", "--quiet", "-q", "--help"}  # who to forget and where: not settings of the run


def test_every_setting_is_one_option_of_unlearn_and_nothing_else_is():
    """A new setting is one field of UnlearnConfig: the option appears with the field's help and default."""
    cmd = main.commands["unlearn"]
    options = {o for p in cmd.params for o in p.opts}
    flagged = [f for f in dataclasses.fields(UnlearnConfig) if "flag" in f.metadata]
    declared = {f.metadata["flag"] or "--" + f.name.replace("_", "-") for f in flagged}
    assert declared <= options and options - declared <= REQUEST_OPTIONS
    assert all(p.default is None or p.opts[0] in REQUEST_OPTIONS for p in cmd.params)  # "not given" by default
    help_text = CliRunner().invoke(main, ["unlearn", "--help"]).output
    assert "--run-seed" in help_text and "[default: 0.0001]" in help_text


def test_flags_not_given_keep_the_declared_defaults():
    assert UnlearnConfig.from_flags({}) == UnlearnConfig()
    cfg = UnlearnConfig.from_flags({"lr": None, "losses": "local, adj", "robust": True, "push_past": False,
                                    "seed": 7, "reference_loop": None})
    assert cfg.losses == ("local", "adj") and cfg.robust == RobustConfig() and cfg.seed == 7
    assert cfg.lr == UnlearnConfig().lr and not cfg.push_past and not cfg.reference_loop
    assert cfg.flag_of("seed") == "--run-seed" and cfg.flag_of("push_margin") == "--push-past"
    assert cfg.flag_of("alpha_max") == "--alpha-max-rel" and cfg.flag_of("lr") == "--lr"


def test_resolve_fills_in_what_the_generator_decides():
    strangers = {"strangers_dist_median": 0.5, "quantiles": [i / 1000 for i in range(1001)]}
    cfg = resolve(UnlearnConfig(), base="g", device="cpu", radius=10.0, n_identities=1, perceptual="p",
                  strangers=None)
    assert (cfg.iters, cfg.target_distance, cfg.alpha_max, cfg.target_search) == (DEFAULT_ITERS, 10.0, 5.0, 64)
    assert cfg.fused_adam and cfg.push_weight == 0.0 and cfg.robust is None and cfg.radius == 10.0
    cfg = resolve(UnlearnConfig(target="average", target_distance_rel=2.0, reference_loop=True, push_past=True,
                                robust=RobustConfig()), base="g", device="cpu", radius=10.0, n_identities=9,
                  perceptual="p", strangers=strangers)
    assert cfg.target_distance == 20.0 and cfg.target_search == 0 and not cfg.fused_adam
    assert cfg.iters == default_iters(9, 4) > DEFAULT_ITERS
    assert cfg.push_margin == pytest.approx(1.85 * 0.5) and cfg.robust.margin == pytest.approx(0.075)
    dataclasses.replace(cfg, reference_loop=False).validate()


def test_bad_settings_are_one_line_errors():
    from guide_engine.engine.errors import GuideEngineError

    for bad in ({"iters": 0}, {"lr": 0.0}, {"losses": ("nope",)}, {"target_angle": 120.0}, {"micro_batch": -1},
                {"robust": RobustConfig(), "reference_loop": True}):
        with pytest.raises(GuideEngineError):
            UnlearnConfig(**bad).validate()
