"""smolpack.stages: the `--smol-debug` stage line and the time since exec."""

from __future__ import annotations

import time

import pytest

from smolpack.stages import STAGES, StageClock, parse_line, since_exec_s


def test_stages_add_up_in_order_and_parse_back() -> None:
    clock = StageClock()
    time.sleep(0.02)
    clock.mark("verify")
    clock.mark("spawn")
    clock.mark("spawn")  # a stage marked twice accumulates
    line = clock.line()
    parsed = parse_line(line)
    assert list(parsed) == [s for s in STAGES if s in parsed]  # launcher first, then order
    assert parsed["verify"] >= 20
    assert set(parsed) <= {"launcher", "verify", "spawn"}


def test_launcher_stage_is_the_time_since_this_process_started() -> None:
    # pytest's own process started seconds ago; resolution is one clock tick (10 ms).
    since = since_exec_s()
    assert since is not None and since > 0.05
    assert StageClock().ms["launcher"] == pytest.approx(since * 1000, abs=50)


def test_parse_line_refuses_other_lines() -> None:
    with pytest.raises(ValueError, match="not a stages line"):
        parse_line("smolpack: qemu restore")
