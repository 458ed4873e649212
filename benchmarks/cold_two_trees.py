"""Cold `ceds segment` from two source trees (two commits: `git worktree add DIR COMMIT`) over the
same folder, interleaved, on this machine: did a change make the CPU path slower? Each run imports
ceds_deploy from its tree (PYTHONPATH) with this interpreter's packages.

    python benchmarks/cold_two_trees.py --trees OLD_DIR . --model M --scans FOLDER --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from benchmarks.gpu_cold import report_summary, run_cold  # noqa: E402


def _commit(tree: Path) -> str:
    """The tree's checked-out commit (and "+changes" when it has uncommitted ones)."""
    import subprocess

    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=Path, nargs=2, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--scans", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cold_two_trees.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ceds-two-trees-"))
    runs = []
    for repeat in range(args.repeats):
        for tree in args.trees:
            out = work / f"{tree.resolve().name}-{repeat}"
            command = [sys.executable, "-m", "ceds_deploy.cli.app", "segment", str(args.scans), str(out)]
            env = {"PYTHONPATH": str(tree.resolve())}
            result = run_cold([*command, "--model", str(args.model.resolve())], out, 600, env=env)
            runs.append({"tree": str(tree.resolve()), "repeat": repeat, **result, **report_summary(out)})
    ok = [r for r in runs if r["returncode"] == 0]
    walls = {str(t.resolve()): [r["wall_s"] for r in ok if r["tree"] == str(t.resolve())] for t in args.trees}
    commits = {str(t.resolve()): _commit(t) for t in args.trees}
    summary = {
        "commits": commits,
        "wall_s": walls,
        "median_s": {t: statistics.median(v) for t, v in walls.items() if v},
    }
    print_table("cold ceds segment over the folder (s)", [{"tree": t, "runs": v} for t, v in walls.items()])
    settings = {k: str(v) for k, v in vars(args).items()}
    write_json(args.json, {"machine": machine(), "args": settings, "runs": runs, "summary": summary})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
