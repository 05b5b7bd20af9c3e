import time

from orfeas.pipeline.profile import Profile


def test_stages_are_timed_in_order_and_slowest_is_named():
    profile = Profile()
    with profile.stage("fast"):
        pass
    with profile.stage("slow"):
        time.sleep(0.02)
    assert list(profile.stages) == ["fast", "slow"]
    assert profile.stages["slow"] >= 0.02
    assert profile.slowest() == "slow"


def test_repeated_stage_accumulates_and_shares_sum_to_one():
    profile = Profile()
    profile.add("a", 1.0)
    profile.add("a", 2.0)
    profile.add("b", 1.0)
    report = profile.to_dict()
    assert report["stages"] == {"a": 3.0, "b": 1.0}
    assert report["total"] == 4.0
    assert report["shares"] == {"a": 0.75, "b": 0.25}
    assert report["slowest_stage"] == "a"


def test_stage_is_recorded_when_the_body_raises():
    profile = Profile()
    try:
        with profile.stage("boom"):
            raise RuntimeError
    except RuntimeError:
        pass
    assert "boom" in profile.stages


def test_empty_profile():
    assert Profile().slowest() is None
    assert Profile().to_dict()["total"] == 0
