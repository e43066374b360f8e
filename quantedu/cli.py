"""The ``quantedu`` command: ``doctor`` (environment report), ``prepare`` (cache everything offline), ``plan``
(what fits on which GPUs), ``recipe`` (write a runnable quantize / serve recipe), and the instructor tools
``exercises`` and ``quiz`` (``quantedu quiz --keys NAME`` or ``all``: the answer keys)."""
from __future__ import annotations

import argparse
import sys


def _prepare(args) -> int:
    from . import models
    from .data import load_corpus
    from .engines.doctor import cache_status

    if args.models is not None and not args.online:  # an instructor would reach the room without them
        wanted = " ".join(args.models) or models.HUB_ID
        print(f"--models downloads from the hub, so it needs --online; nothing was fetched. Run:\n"
              f"    quantedu prepare --online --models {wanted}", file=sys.stderr)
        return 2
    if args.models == []:
        print(f"--models needs at least one hub id, e.g. --models {models.HUB_ID} "
              "(leave --models out to download that default)", file=sys.stderr)
        return 2
    where, problem = cache_status()
    if problem:
        print(f"cannot use the quantedu cache at {where}: {problem}", file=sys.stderr)
        return 2
    try:
        path = models.offline_gguf_path()
        print(f"offline model: {path}")
        ckpt = models.offline_checkpoint()
    except models.ModelError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"fp32 checkpoint cached at {ckpt}")
    load_corpus("pydoc")
    print("pydoc corpus: ok (ships with Python)")
    if args.online:
        ok, why = models.hub_reachable()
        if not ok:
            print(f"--online asked for, but {why}: skipping hub downloads", file=sys.stderr)
            return 1
        from huggingface_hub import snapshot_download

        failed = []
        for repo in args.models or [models.HUB_ID]:
            print(f"downloading {repo} ...")
            try:
                snapshot_download(repo)
            except Exception as exc:  # noqa: BLE001 - a bad id or a lost network: say which, go on
                print(f"could not download {repo!r}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
                failed.append(repo)
        try:
            load_corpus("wikitext2")
            print("wikitext2: cached by datasets")
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            failed.append("wikitext2")
        if failed:
            print(f"not cached: {', '.join(failed)}; check the names and run prepare again", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantedu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="print versions, CPU/GPU, RAM and which optional engines work here")
    prep = sub.add_parser("prepare", help="convert and cache what the course needs, for offline rooms")
    prep.add_argument("--online", action="store_true", help="also download hub models and wikitext2")
    prep.add_argument("--models", nargs="*", help="hub ids to download with --online")
    ex = sub.add_parser("exercises", help="instructor tools: solution notebooks (--solutions), a class's results "
                                         "(--status DIR); without options it lists the exercises")
    ex.add_argument("--solutions", action="store_true", help="write solution notebooks (see --out)")
    ex.add_argument("--out", help="folder for --solutions (default: notebooks/solutions)")
    ex.add_argument("--notebooks", help="the course notebooks for --solutions (default: ./notebooks)")
    ex.add_argument("--status", metavar="DIR", help="grade the exercise cells of every notebook under DIR")
    ex.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per exercise cell (--status)")
    qz = sub.add_parser("quiz", help="instructor tools: list the quizzes; --keys NAME (or all) prints answer keys")
    qz.add_argument("--keys", metavar="NAME", help="print the answer keys of quiz NAME, or of all of them")
    from .recipes.cli import add_parsers, run as run_plan  # `plan` and `recipe` (issue 25)
    add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command in ("plan", "recipe"):
        return run_plan(args)
    if args.command == "quiz":
        from .course.quiz import main as quiz_main

        return quiz_main(args)
    if args.command == "exercises":
        from .exercises.notebooks import main as exercises_main

        return exercises_main(args)
    if args.command == "doctor":
        from .engines.doctor import print_report

        print_report()
        return 0
    return _prepare(args)


if __name__ == "__main__":
    sys.exit(main())
