"""Run every benchmark in bench/ and print each one's final JSON line.

$ python bench/run.py            # what `make bench` does
$ python bench/run.py spawn      # only bench/spawn.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(names: list[str]) -> int:
    scripts = sorted(
        p for p in HERE.glob("*.py") if p.name != "run.py" and not p.name.startswith("_")
    )
    if names:
        scripts = [p for p in scripts if p.stem in names]
    if not scripts:
        print("bench: no benchmarks to run yet")
        return 0
    failed = 0
    summary = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        done = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        print(done.stdout, end="")
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        try:
            summary.append(json.loads(last))
        except json.JSONDecodeError:
            print(f"bench: {script.stem} did not end with a JSON line", file=sys.stderr)
            failed += 1
            continue
        failed += done.returncode != 0
    print(json.dumps({"bench": "all", "results": summary}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
