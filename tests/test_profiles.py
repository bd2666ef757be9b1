"""Run profiles and the fast-path settings, without torch: what a profile sets, what flags override, what is
refused, and the CLI on a package exported without a distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instantid_edge.runtime.errors import ConfigError, PackageError
from instantid_edge.runtime.manifest import Manifest, RunProfile, read_manifest
from instantid_edge.runtime.profiles import UPSTREAM, apply_profile, describe
from instantid_edge.runtime.settings import GenerationSettings

HYPER_1 = {"sampler": "tcd", "timestep_spacing": None, "steps": 1, "guidance": 0.0, "eta": 1.0, "timesteps": None,
           "decoder": "tiny", "from": "Hyper-SD (hyper-1step), as asked"}  # fmt: skip
DMD2 = {"sampler": "lcm", "timestep_spacing": None, "steps": 4, "guidance": 0.0, "eta": None,
        "timesteps": [999, 749, 499, 249], "decoder": "full", "from": "DMD2"}  # fmt: skip


def _manifest(profiles: dict | None) -> Manifest:
    """A manifest's typed view with these profiles (as the manifest's JSON has them), nothing else."""
    typed = {name: RunProfile.from_dict(p) for name, p in profiles.items()} if profiles is not None else None
    return Manifest(root=Path("pkg"), data={}, graphs={}, architecture=None, static_size=None, tokenizer_folders=(),
                    profiles=typed)  # fmt: skip


def test_a_profile_sets_the_sampling_and_explicit_flags_win():
    base = GenerationSettings(prompt="p")
    fast = apply_profile(base, _manifest({"fast": HYPER_1, "quality": DMD2}), "fast").validate()
    assert (fast.sampler, fast.steps, fast.guidance, fast.eta, fast.decoder) == ("tcd", 1, 0.0, 1.0, "tiny")
    assert not fast.cfg  # guidance 0: batch 1
    chosen = GenerationSettings(prompt="p", eta=0.5, decoder="full")
    mixed = apply_profile(chosen, _manifest({"fast": HYPER_1}), "fast", {"eta", "decoder"}).validate()
    assert (mixed.eta, mixed.decoder, mixed.sampler) == (0.5, "full", "tcd")


def test_explicit_timesteps_come_from_the_profile_unless_the_step_count_is_given():
    dmd2 = apply_profile(GenerationSettings(prompt="p"), _manifest({"quality": DMD2}), "quality").validate()
    assert dmd2.timesteps == (999, 749, 499, 249) and dmd2.steps == 4
    two = apply_profile(GenerationSettings(prompt="p", steps=2), _manifest({"quality": DMD2}), "quality", {"steps"})
    assert two.validate().timesteps is None and two.steps == 2
    given = GenerationSettings(prompt="p", steps=2, timesteps=(999, 499))
    mine = apply_profile(given, _manifest({"quality": DMD2}), "quality", {"timesteps"}).validate()
    assert (mine.steps, mine.timesteps, mine.sampler) == (2, (999, 499), "lcm")


def test_fast_says_why_it_is_unavailable():
    manifest = _manifest({"fast": {"unavailable": "no few-step distillation is fused"}, "quality": DMD2})
    with pytest.raises(ConfigError, match="--profile fast is unavailable.*no few-step distillation"):
        apply_profile(GenerationSettings(prompt="p"), manifest, "fast")
    with pytest.raises(ConfigError, match="exported before run profiles existed"):
        apply_profile(GenerationSettings(prompt="p"), _manifest(None), "fast")
    legacy = apply_profile(GenerationSettings(prompt="p", steps=4), _manifest(None), "quality")
    assert (legacy.steps, legacy.guidance, legacy.decoder) == (30, 5.0, "full")


def test_describe_names_every_setting():
    assert describe(RunProfile.from_dict(HYPER_1)) == "tcd, 1 steps, guidance 0, eta 1, tiny decoder"
    assert describe(RunProfile.from_dict(DMD2)) == "lcm, 4 steps, guidance 0, timesteps 999/749/499/249, full decoder"


def test_a_profile_reads_back_as_written_and_upstreams_are_the_settings_defaults():
    for profile in (HYPER_1, DMD2, {"unavailable": "no few-step distillation is fused"}):
        assert RunProfile.from_dict(profile).to_dict() == profile
    defaults = GenerationSettings(prompt="p")
    assert UPSTREAM.settings() == {name: getattr(defaults, name) for name in RunProfile.settings_fields()}
    assert (UPSTREAM.sampler, UPSTREAM.steps, UPSTREAM.guidance, UPSTREAM.decoder) == ("euler", 30, 5.0, "full")


@pytest.mark.parametrize(
    "profiles, message",
    [
        ({"fast": HYPER_1}, "run profiles \\['fast'\\], expected \\['fast', 'quality'\\]"),
        ({"fast": HYPER_1, "quality": {k: v for k, v in DMD2.items() if k != "eta"}}, "run profile lacks eta"),
    ],
)
def test_a_manifest_with_malformed_profiles_is_refused(runtime_package, tmp_path, profiles, message):
    manifest = json.loads((runtime_package / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "profiles": profiles}))
    with pytest.raises(PackageError, match=f"malformed.*{message}"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sampler": "euler", "eta": 0.3}, "eta is for the tcd sampler"),
        ({"sampler": "tcd", "eta": 1.5}, "between 0 and 1"),
        ({"sampler": "euler", "steps": 4, "timesteps": (999, 749, 499, 249)}, "apply to the lcm and tcd"),
        ({"sampler": "lcm", "steps": 3, "timesteps": (999, 749, 499, 249)}, "4 timesteps given for 3 steps"),
        ({"sampler": "lcm", "steps": 2, "timesteps": (499, 749)}, "decrease strictly"),
        ({"sampler": "lcm", "steps": 2, "timesteps": (999, -1)}, "0 or more"),
        ({"sampler": "tcd", "timestep_spacing": "trailing"}, "takes no timestep spacing"),
        ({"decoder": "taesd"}, "decoder must be one of"),
    ],
)
def test_fast_path_settings_are_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        GenerationSettings(prompt="p", **options).validate()


def _cli(*args):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_the_cli_on_a_package_without_a_distillation_or_tiny_decoder(runtime_package, astronaut, face_pack, tmp_path):
    common = ["generate", "--package", runtime_package, "--face", astronaut, "--prompt", "a portrait",
              "--face-models", face_pack, "--height", 128, "--width", 128, "--steps", 2]  # fmt: skip
    fast = _cli(*common, "--out", tmp_path / "a.png", "--profile", "fast")
    assert fast.exit_code == 1 and "no few-step distillation is fused" in fast.output
    tiny = _cli(*common, "--out", tmp_path / "b.png", "--decoder", "tiny")
    assert tiny.exit_code == 1 and "no tiny decoder" in tiny.output and "--tiny-decoder" in tiny.output
    assert not list(tmp_path.iterdir())  # nothing written
    assert "profile fast: unavailable" in _cli("inspect", runtime_package).output
