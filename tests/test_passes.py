"""The pass contract (passes/base.py) against every pass, built-in and the plug-in tests/clip_pass.py,
and the plug-in picked up by the profile, the pipeline, the report and the recipe with no edit elsewhere."""
from __future__ import annotations

import dataclasses
import json
import sys
import types

import numpy as np
import pytest

import fake_backend as fake
import test_contract
from edgekit import passes, pipeline, targets
from edgekit.errors import EdgekitError
from edgekit.passes.base import Pass, problems
from edgekit.recipe import Recipe
from edgekit.schema import from_dict

BUILTIN = [p.NAME for p in passes.builtin_passes()]  # every built-in pass, found as the pipeline finds them
PROFILE = test_contract.PROFILE + "[clip]\nsigmas = {sigmas}\n"  # the fake backend's profile + the plug-in's table


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.setenv("EDGEKIT_PASSES", "clip_pass")


@pytest.mark.parametrize("name", [*BUILTIN, "clip"])
def test_every_pass_follows_the_contract(name, plugin):
    module = passes.get(name)
    assert isinstance(module, Pass) and problems(module) == []
    assert module.__name__.rsplit(".", 1)[-1] == name or module.__name__ == "clip_pass"
    assert from_dict(module.Config, {}) == module.Config()  # every field has a default: a profile may omit it
    profile = targets.get_target("cpu").profile
    config = module.configure(profile, None)
    assert isinstance(config, module.Config)
    off = Recipe({p.NAME: p.Config() for p in passes.all_passes()})
    assert not module.applies(off, None), "a recipe of Config defaults runs no pass"
    if module.search_space is not None:
        import optuna
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        chosen = module.search_space(trial, types.SimpleNamespace(keras=True, candidates=["conv"]))
        assert set(chosen) <= set(passes.flag_fields(module))
        assert isinstance(Recipe.resolve(profile, chosen)[name], module.Config)


def test_passes_are_ordered_by_stage_and_the_recipe_round_trips(plugin):
    assert [p.NAME for p in passes.all_passes()] == ["distill", "prune", "quantize", "mixed", "pow2", "clip", "vela"]
    recipe = Recipe.resolve(targets.get_target("fpga-int8-pot").profile, {"prune": "channels:0.5", "clip_sigmas": 2.0})
    assert recipe["pow2"].enabled and recipe["quantize"].per_channel is False  # the accelerator decides both
    assert (recipe["prune"].method, recipe["clip"].sigmas) == ("channels", 2.0)
    assert Recipe.from_json(json.loads(json.dumps(recipe.to_json()))) == recipe


def test_a_plugin_that_breaks_the_contract_is_one_line(monkeypatch):
    broken = types.ModuleType("broken_pass")
    broken.NAME, broken.STAGE = "broken", "middle"
    monkeypatch.setitem(sys.modules, "broken_pass", broken)
    monkeypatch.setenv("EDGEKIT_PASSES", "broken_pass")
    with pytest.raises(EdgekitError, match="does not follow the pass contract .missing: ORDER, DESCRIPTION"):
        passes.all_passes()
    for name in ("ORDER", "DESCRIPTION", "Flags", "FORMATS", "search_space", "needs_training", "configure", "run"):
        setattr(broken, name, getattr(sys.modules["clip_pass"] if "clip_pass" in sys.modules else
                                      __import__("clip_pass"), name))
    broken.Config, broken.applies = dataclasses.make_dataclass("Config", [("x", int)]), lambda recipe, source: False
    with pytest.raises(EdgekitError, match="STAGE 'middle' is not one of source, artifact; Config is not frozen; "
                                           "Config.x has no default"):
        passes._checked(("broken_pass",))


def _plumb(tmp_path, precision="fp32", sigmas=0.0):
    d = tmp_path / "profiles"
    d.mkdir(exist_ok=True)
    (d / "plumb.toml").write_text(PROFILE.format(precision=precision, sigmas=sigmas))
    return fake.save_model(tmp_path / "fake.npz", (1, 2, 3), classes=4), str(d)


def test_a_plugin_pass_runs_from_the_profile_and_is_in_the_report(plugin, tmp_path):
    model, profiles = _plumb(tmp_path, sigmas=1.0)
    result = pipeline.convert(model, target="plumb", targets_dirs=[profiles], out=tmp_path / "o")
    [artifact] = result["artifacts"]
    assert artifact["status"] == "ok" and artifact["clip"]["clipped"] > 0 and "sigma" in artifact["notes"][-1]
    with np.load(tmp_path / "o" / "model.npz") as built, np.load(model) as source:
        assert np.abs(built["w"]).max() < np.abs(source["w"]).max()
    assert result["recipe"]["passes"]["clip"] == {"sigmas": 1.0}
    assert {"name": "clip", "stage": "artifact", "description": passes.get("clip").DESCRIPTION,
            "applies": True} in result["passes"]
    assert json.loads((tmp_path / "o" / "recipe.json").read_text()) == result["recipe"]
    assert f"Passes: clip ({passes.get('clip').DESCRIPTION})" in (tmp_path / "o" / "report.md").read_text()


def test_a_recipe_file_replays_the_run_byte_for_byte(plugin, tmp_path):
    model, profiles = _plumb(tmp_path, precision="int8", sigmas=1.5)
    first = pipeline.convert(model, target="plumb", targets_dirs=[profiles], out=tmp_path / "a", calib="random")
    _plumb(tmp_path)  # the profile no longer quantizes or clips: the recipe alone does
    again = pipeline.convert(model, target="plumb", targets_dirs=[profiles], out=tmp_path / "b", calib="random",
                             recipe=tmp_path / "a" / "recipe.json")
    assert again["recipe"] == first["recipe"] and again["artifacts"][1]["precision"] == "int8"
    assert (tmp_path / "a" / "model.npz").read_bytes() == (tmp_path / "b" / "model.npz").read_bytes()
    with pytest.raises(EdgekitError, match="--recipe replays every pass's settings, and --precision was given too"):
        pipeline.convert(model, target="plumb", targets_dirs=[profiles], out=tmp_path / "c", calib="random",
                         recipe=tmp_path / "a" / "recipe.json", precision="int8")


def test_tune_searches_a_plugin_pass_and_convert_recipe_replays_a_trial_byte_for_byte(plugin, tmp_path):
    """A trial's child gets the resolved recipe as JSON; the recipe.json beside its artifact, given to
    `edgekit convert --recipe` with the same model, data and target, rebuilds the same bytes."""
    import optuna
    from click.testing import CliRunner

    from edgekit import tune
    from edgekit.cli import cli
    model, profiles = _plumb(tmp_path)
    x = np.random.default_rng(0).random((48, 2, 3), dtype=np.float32)
    np.savez(tmp_path / "tune.npz", x=x, y=np.arange(48) % 4)
    setup = tune.TuneSetup(model=model, target="plumb", fmt="fake", tune_data=tmp_path / "tune.npz",
                           holdout_data=tmp_path / "tune.npz", out=tmp_path / "t", budget_points=1.0, objective="size",
                           candidates=[], keras=False, source_accuracy=1.0, trials_budget=1, storage="",
                           targets_dirs=[profiles])
    params = {"precision": "int8", "per_channel": True, "calib_method": "minmax", "calib_samples": 32, "keep_float": 0,
              "mixed": "off", "prune": "none", "clip_sigmas": 2.0}
    choices = tune.recipe_space(optuna.trial.FixedTrial(params), setup)
    assert choices["clip_sigmas"] == 2.0 and "clip_sigmas=2.0" in tune.recipe_text(choices)
    figures = tune.run_trial(setup, choices)
    assert figures["ok"], figures
    trial_dir = (tmp_path / "t" / figures["file"]).parent
    recipe = json.loads((trial_dir / "recipe.json").read_text())
    assert recipe["passes"]["clip"] == {"sigmas": 2.0} and recipe["passes"]["quantize"]["calib_samples"] == 32
    result = CliRunner().invoke(cli, ["convert", str(model), "--target", "plumb", "--targets-dir", profiles,
                                      "--format", "fake", "--data", str(tmp_path / "tune.npz"), "--recipe",
                                      str(trial_dir / "recipe.json"), "--out", str(tmp_path / "again"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "model.npz").read_bytes() == (tmp_path / "t" / figures["file"]).read_bytes()


def test_a_plugin_pass_flag_is_on_the_command_line(plugin, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli
    model, profiles = _plumb(tmp_path)
    shown = CliRunner().invoke(cli, ["convert", "--help"])
    assert "--clip-sigmas" in shown.output and "standard deviations" in shown.output
    assert "clip (artifact)" in shown.output and "quantize (artifact)" in shown.output  # the passes, described
    result = CliRunner().invoke(cli, ["convert", str(model), "--target", "plumb", "--targets-dir", profiles,
                                      "--clip-sigmas", "1", "--out", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["recipe"]["passes"]["clip"] == {"sigmas": 1.0} and report["artifacts"][0]["clip"]["clipped"] > 0
