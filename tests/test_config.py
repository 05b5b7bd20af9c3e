"""Settings: the server's and CLI's configuration, and the pipeline-sized part of it the pipeline receives."""

import os
from pathlib import Path

import pytest

from orfeas.config import Settings
from orfeas.pipeline.settings import PipelineSettings


@pytest.fixture
def no_orfeas_env(monkeypatch):
    for name in [name for name in os.environ if name.startswith("ORFEAS_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_pipeline_defaults_are_the_servers_defaults(no_orfeas_env):
    assert Settings().pipeline() == PipelineSettings()


def test_orfeas_variables_reach_the_pipeline_through_settings_only(no_orfeas_env):
    no_orfeas_env.setenv("ORFEAS_DEVICE", "cpu")
    no_orfeas_env.setenv("ORFEAS_HUNYUAN_MODEL_PATH", "/models")
    no_orfeas_env.setenv("ORFEAS_GENERATORS", '{"slow": "tests.fake_generators:slow"}')
    pipeline = Settings().pipeline()
    assert (pipeline.device, pipeline.hunyuan_model_path) == ("cpu", Path("/models"))
    assert pipeline.generators == {"slow": "tests.fake_generators:slow"}
    assert PipelineSettings() == PipelineSettings(device="auto", hunyuan_model_path=None, generators={})


def test_steps_and_guidance_reach_the_pipeline_only_when_set(no_orfeas_env):
    assert (Settings().pipeline().hunyuan_steps, Settings().pipeline().hunyuan_guidance_scale) == (None, None)
    no_orfeas_env.setenv("ORFEAS_HUNYUAN_STEPS", "12")
    assert Settings().pipeline().hunyuan_steps == 12
    assert Settings(hunyuan_guidance_scale=7.5).pipeline().hunyuan_guidance_scale == 7.5


def test_the_pipeline_sees_nothing_of_the_service():
    fields = set(PipelineSettings.model_fields)
    assert not fields & {"database_url", "data_dir", "lease_seconds", "auth", "agent_master_key", "max_batch"}
    assert fields <= set(Settings.model_fields)
    with pytest.raises(ValueError):
        PipelineSettings(database_url="sqlite://")  # a typo or a service setting is refused, not ignored
