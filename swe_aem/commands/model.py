"""`swe-aem model prepare NAME | list`: make a preset's model folder ready to serve and train."""

from __future__ import annotations

import argparse
import json

from swe_aem.policy.models import ModelUnavailableError, load_preset, prepare_model, preset_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="build or fetch the model folder of a preset")
    prep.add_argument("name", help=f"preset: {', '.join(preset_names())}")
    prep.add_argument("--force", action="store_true", help="rebuild even if the folder exists")
    prep.add_argument("--local-path", help="use (and check) this folder instead of the default")
    sub.add_parser("list", help="the presets and where their folders are")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name in preset_names():
            preset = load_preset(name)
            print(json.dumps({"name": name, "hf_id": preset.hf_id, "path": str(preset.default_path),
                              "ready": (preset.default_path / "config.json").is_file()}))
        return 0
    try:
        preset = load_preset(args.name, local_path=args.local_path)
        path = prepare_model(preset, force=args.force)
    except (KeyError, ModelUnavailableError) as exc:
        print(f"error: {exc.args[0]}")
        return 1
    print(json.dumps({"name": preset.name, "path": str(path)}))
    return 0
