"""Learning-rate schedules by RL step (issue 28): the pure schedule by hand, and a resumed
replay run whose rates (and weights) are those of the uninterrupted run."""

import json
import math

import pytest
import torch
from test_train_loop import _cfg, _params, replay_file  # noqa: F401 - the module's replay fixture

from swe_aem.algo.schedule import lr_factor
from swe_aem.config import ConfigError, load_config
from swe_aem.train.loop import Trainer


@pytest.mark.parametrize("scheduler, warmup, total, min_ratio, expected", [
    # warmup: step s < W at (s + 1) / W, never 0; then constant
    ("constant", 3, 5, 0.0, [1 / 3, 2 / 3, 1.0, 1.0, 1.0]),
    # linear from 1 at step 0 towards 0.1 at the run's end: 1 - 0.9 s / 4
    ("linear", 0, 4, 0.1, [1.0, 0.775, 0.55, 0.325]),
    # cosine after 2 warmup steps over S - W = 4 steps: (1 + cos(pi (s - 2) / 4)) / 2
    ("cosine", 2, 6, 0.0, [0.5, 1.0, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                           (1 + math.cos(3 * math.pi / 4)) / 2]),
])
def test_schedules_by_hand(scheduler, warmup, total, min_ratio, expected):
    got = [lr_factor(s, total, scheduler, warmup, min_ratio) for s in range(total)]
    assert got == pytest.approx(expected, rel=1e-12)


def test_bad_schedules_name_the_field():
    with pytest.raises(ConfigError, match="trainer.lr_scheduler 'step'"):
        load_config(overrides=["trainer.lr_scheduler=step"])
    with pytest.raises(ConfigError, match="trainer.lr_warmup_steps"):
        load_config(overrides=["trainer.lr_warmup_steps=-1"])
    with pytest.raises(ConfigError, match="trainer.lr_min_ratio"):
        load_config(overrides=["trainer.lr_min_ratio=2"])
    assert lr_factor(7, 10) == 1.0  # the default: today's constant rate


def _rows(run) -> dict[int, dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "lr" in r}


@pytest.mark.slow
def test_a_resumed_run_keeps_the_schedule(small_model, replay_file, tmp_path):  # noqa: F811
    """Four steps of cosine after one warmup step, with two mini-batches (two optimizer
    steps per RL step: an optimizer-step clock would be twice as far along): once
    uninterrupted, once interrupted in step 2 and resumed from step 2's checkpoint."""
    extra = ("run.steps=4", "run.save_every=1", "trainer.lr_scheduler=cosine", "trainer.lr_warmup_steps=1",
             "trainer.lr_min_ratio=0.1", "trainer.mini_batches=2")
    cfg = _cfg(small_model, replay_file, *extra)
    whole = Trainer(cfg, tmp_path / "whole")
    whole.train()
    expected = [1e-3 * lr_factor(s, 4, "cosine", 1, 0.1) for s in range(4)]
    assert [_rows(tmp_path / "whole")[s]["lr"] for s in range(4)] == pytest.approx(expected, rel=1e-12)
    assert whole.engine.get_lr()[0] == pytest.approx(expected[-1], rel=1e-12)  # the optimizer's own

    cut = Trainer(cfg, tmp_path / "cut")
    step = cut.step

    def interrupted():
        if cut.state.step == 2:
            raise KeyboardInterrupt  # as a kill after step 1's checkpoint
        return step()

    cut.step = interrupted
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = Trainer(cfg, tmp_path / "cut", resume=True)
    assert resumed.state.step == 2
    resumed.train()
    rows = _rows(tmp_path / "cut")
    assert sorted(rows) == [0, 1, 2, 3]
    assert [rows[s]["lr"] for s in range(4)] == [_rows(tmp_path / "whole")[s]["lr"] for s in range(4)]
    a, b = _params(whole), _params(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
