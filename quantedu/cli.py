"""The ``quantedu`` command: ``doctor`` (environment report) and ``prepare`` (cache everything offline)."""
from __future__ import annotations

import argparse
import sys


def _prepare(args) -> int:
    from . import models
    from .data import load_corpus

    try:
        path = models.offline_gguf_path()
    except models.ModelError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"offline model: {path}")
    ckpt = models.offline_checkpoint()
    print(f"fp32 checkpoint cached at {ckpt}")
    load_corpus("pydoc")
    print("pydoc corpus: ok (ships with Python)")
    if args.online:
        ok, why = models.hub_reachable()
        if not ok:
            print(f"--online asked for, but {why}: skipping hub downloads", file=sys.stderr)
            return 1
        from huggingface_hub import snapshot_download

        for repo in args.models or [models.HUB_ID]:
            print(f"downloading {repo} ...")
            snapshot_download(repo)
        load_corpus("wikitext2")
        print("wikitext2: cached by datasets")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantedu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="print versions, CPU/GPU, RAM and which optional engines work here")
    prep = sub.add_parser("prepare", help="convert and cache what the course needs, for offline rooms")
    prep.add_argument("--online", action="store_true", help="also download hub models and wikitext2")
    prep.add_argument("--models", nargs="*", help="hub ids to download with --online")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from .doctor import print_report

        print_report()
        return 0
    return _prepare(args)


if __name__ == "__main__":
    sys.exit(main())
