import time

from orfeas.pipeline.profile import Profile
from orfeas.pipeline.stages import Stage


def test_stages_are_timed_in_order_and_slowest_is_named():
    profile = Profile()
    with profile.stage(Stage.IMAGE_LOADING):
        pass
    with profile.stage(Stage.SHAPE_GENERATION):
        time.sleep(0.02)
    assert list(profile.stages) == [Stage.IMAGE_LOADING, Stage.SHAPE_GENERATION]
    assert profile.stages[Stage.SHAPE_GENERATION] >= 0.02
    assert profile.slowest() == Stage.SHAPE_GENERATION


def test_repeated_stage_accumulates_and_shares_sum_to_one():
    profile = Profile()
    profile.add(Stage.MESH_CLEANUP, 1.0)
    profile.add(Stage.MESH_CLEANUP, 2.0)
    profile.add(Stage.TEXTURING, 1.0)
    report = profile.to_dict()  # as stored: plain stage names
    assert report["stages"] == {"mesh_cleanup": 3.0, "texturing": 1.0}
    assert report["total"] == 4.0
    assert report["shares"] == {"mesh_cleanup": 0.75, "texturing": 0.25}
    assert report["slowest_stage"] == "mesh_cleanup"


def test_stage_is_recorded_when_the_body_raises():
    profile = Profile()
    try:
        with profile.stage(Stage.EXPORT):
            raise RuntimeError
    except RuntimeError:
        pass
    assert Stage.EXPORT in profile.stages


def test_empty_profile():
    assert Profile().slowest() is None
    assert Profile().to_dict()["total"] == 0
