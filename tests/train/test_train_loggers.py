"""The experiment trackers of `run.loggers` (swe_aem/train/loggers.py): a replay run of the
real trainer (DeepSpeed on the small random Llama) logging to TensorBoard, W&B offline and
MLflow's local file store; each holds the step metrics metrics.jsonl holds, the resolved
config and the episode tables. W&B's offline run is read from its own .wandb file (a
LevelDB-style log of its protobuf records, read here without the network)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from test_train_loop import _cfg, replay_file  # noqa: F401  (a module fixture)

from swe_aem.config import load_config
from swe_aem.train.loggers import LoggerError, check_loggers
from swe_aem.train.loop import Trainer

pytestmark = pytest.mark.slow
KEYS = ("reward_mean", "response_entropy_mean", "alpha_min", "alpha_max", "loss")


def _wandb_records(path: Path):
    """Every protobuf Record of a .wandb file: a 7-byte header (":W&B", magic, version), then
    32 KiB blocks of chunks (crc32c 4, length 2, type 1: full / first / middle / last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def test_unknown_or_missing_trackers_are_named():
    with pytest.raises(LoggerError, match=r"run.loggers names \['neptune'\]"):
        check_loggers(["tensorboard", "neptune"])
    assert load_config().run.loggers == ["tensorboard"]


def test_wandb_and_mlflow_hold_the_runs_metrics(small_model, replay_file, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    trainer = Trainer(_cfg(small_model, replay_file, "run.loggers=[tensorboard,wandb,mlflow]"), run)
    trainer.train()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert list((run / "tensorboard").glob("events.*"))

    # MLflow's file store: every step's metrics, the flattened config, a table a step
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    [found] = client.search_runs([client.get_experiment_by_name("swe-aem").experiment_id])
    for key in KEYS:
        history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert history == [(r["step"], pytest.approx(r[key], rel=1e-12)) for r in rows], key
    assert found.data.params["algo.aem"] == "True" and found.data.params["run.steps"] == "2"
    tables = sorted(a.path for a in client.list_artifacts(found.info.run_id, "episode_table"))
    assert tables == ["episode_table/step-000000.json", "episode_table/step-000001.json"]

    # W&B offline: the history rows carry the same values at the same steps
    [wb] = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    history: dict[int, dict[str, float]] = {}
    config = None
    for record in _wandb_records(wb):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(int(items["_step"]), {}).update(items)
        elif kind == "run":  # the run record carries the config it was started with
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
    for r in rows:
        for key in KEYS:
            assert history[r["step"]][key] == pytest.approx(r[key], rel=1e-12), (r["step"], key)
        assert history[r["step"]]["episode_table/_type"] == "table-file"  # the step's episodes
        assert history[r["step"]]["episode_table/nrows"] == r["episodes"]
    assert config is not None and config["algo"]["aem"] is True
