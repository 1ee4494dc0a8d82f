"""The chaos test: a mixed stream/batch workload while executors are killed (-9) and
restarted at random and the scheduler is killed and restarted once (runtime/bench/chaos.py
drives it; `tidal bench chaos` is the same run at a larger size)."""

from __future__ import annotations

import pytest

from tidal.runtime.bench import chaos

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [1, 2])
def test_every_result_is_correct_and_delivered_exactly_once_through_the_faults(seed):
    config = chaos.ChaosConfig.quick(seed=seed, gap_s=(0.1, 0.3))
    result = chaos.run(config=config)

    assert result["kills"] == 3 and result["scheduler_restarts"] == 1
    # Every fault hit a busy cluster, and every killed executor was started again.
    assert all(fault["batch_pending"] > 0 for fault in result["faults"]), result["faults"]
    assert result["executor_restarts"] >= 3
    assert result["submitted"] > 300
    assert result["completed"] == result["submitted"], result
    assert result["lost"] == result["wrong"] == result["duplicated"] == 0
