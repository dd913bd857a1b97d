"""`swe-aem sft`: supervised warm start on the project's own episodes.

  swe-aem sft demos --dataset local --out demos.jsonl
      gold-patch demonstrations run in real containers; only resolved ones are written
  swe-aem sft train --data demos.jsonl runs/x/trajectories.jsonl --min-reward 1 --out runs/sft
      SFT on those episodes (rejection sampling for rollout output): OUT/model is servable,
      OUT/metrics.jsonl has the loss of every step
  swe-aem sft train --data demos.jsonl --lora-rank 16 --out runs/sft-lora
      LoRA SFT: rank-16 adapters trained, the base frozen; OUT/final_adapter is the peft
      adapter, OUT/model the base with it merged in (servable as the full SFT's)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from swe_aem.data.families import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    demos = sub.add_parser("demos", help="gold-patch demonstrations graded in real containers")
    demos.add_argument("--dataset", default="local", help="'local', a .jsonl/.json/.parquet path or a hub name")
    demos.add_argument("--dataset-format", default=None, choices=FORMATS)
    demos.add_argument("--split", default="test")
    demos.add_argument("--instances", nargs="*", default=None, help="only these instance ids")
    demos.add_argument("--model", default="tiny", help="whose tokenizer and tool-call format (preset or folder)")
    demos.add_argument("--concurrency", type=int, default=2)
    demos.add_argument("--grade-timeout", type=float, default=300.0)
    demos.add_argument("--out", required=True, type=Path, help="episodes JSONL to write")

    train = sub.add_parser("train", help="SFT on episodes (demonstrations or rollouts filtered by reward)")
    train.add_argument("--data", nargs="+", required=True, type=Path, help="episode JSONL files")
    train.add_argument("--min-reward", type=float, default=1.0,
                       help="keep graded episodes with reward >= this (rejection sampling)")
    train.add_argument("--max-tokens", type=int, default=None, help="skip episodes longer than this")
    train.add_argument("--model", default="tiny", help="preset name or a local model folder to start from")
    train.add_argument("--lr", type=float, default=None,
                       help="default: 5e-5, with --lora-rank 5e-4 (ten times full fine-tuning's, as in LoRA RL)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-episodes", type=int, default=4, help="episodes per optimizer step")
    train.add_argument("--micro-batch-tokens", type=int, default=None, help="default: the preset's")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lora-rank", type=int, default=None, metavar="R",
                       help="train rank-R LoRA adapters only (peft), the base frozen; default: the full model")
    train.add_argument("--lora-alpha", type=float, default=None,
                       help="the adapters' scale is alpha / rank (default: 2 x rank)")
    train.add_argument("--out", required=True, type=Path,
                       help="run folder (model/ is the servable model; with LoRA final_adapter/ the adapter)")


def run(args: argparse.Namespace) -> int:
    return _demos(args) if args.action == "demos" else _train(args)


def _demos(args: argparse.Namespace) -> int:
    from swe_aem.data import DatasetError, load_instances
    from swe_aem.policy.models import ModelUnavailableError
    from swe_aem.sandbox import DockerUnavailableError
    from swe_aem.sft.demos import make_demonstrations

    if args.concurrency < 1:
        print("error: --concurrency must be at least 1")
        return 2
    try:
        instances = load_instances(args.dataset, split=args.split, instance_ids=args.instances,
                                   dataset_format=args.dataset_format)
        report = make_demonstrations(instances, args.model, args.out, concurrency=args.concurrency,
                                     grade_timeout_s=args.grade_timeout)
    except (KeyError, ModelUnavailableError, DatasetError, DockerUnavailableError, ValueError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}")
        return 1
    print(json.dumps({"instances": len(instances), "kept": report.kept, "rejected": report.rejected,
                      "dropped": report.dropped, "seconds": round(report.seconds, 1),
                      "demos_per_minute": round(report.demos_per_minute, 2), "out": str(args.out)}))
    return 0 if report.kept else 1


def _train(args: argparse.Namespace) -> int:
    from swe_aem.agent.trajectory import read_episodes
    from swe_aem.policy.models import ModelUnavailableError
    from swe_aem.sft.batching import select_episodes
    from swe_aem.sft.trainer import SftConfig, SftTrainer

    missing = [str(p) for p in args.data if not p.is_file()]
    if missing:
        print(f"error: no such episode file: {', '.join(missing)}")
        return 1
    # a bad setting is an SftConfigError (InputError): the CLI prints it and exits 2
    cfg = SftConfig(model=args.model, lr=args.lr, epochs=args.epochs, batch_episodes=args.batch_episodes,
                    micro_batch_tokens=args.micro_batch_tokens, seed=args.seed, lora_rank=args.lora_rank,
                    lora_alpha=args.lora_alpha)
    try:
        episodes = [ep for path in args.data for ep in read_episodes(path)]
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    selection = select_episodes(episodes, min_reward=args.min_reward, max_tokens=args.max_tokens)
    print(f"{len(episodes)} episodes read; {selection.summary()}")
    if not selection.kept:
        print(f"error: no episode to train on (--min-reward {args.min_reward:g})")
        return 1
    try:
        summary = SftTrainer(cfg, args.out).fit(selection.kept)
    except (KeyError, ModelUnavailableError) as exc:
        print(f"error: {exc.args[0]}")
        return 1
    print(json.dumps(summary))
    return 0
