"""Run a Python script as __main__ and write its peak resident memory to a JSON file.

python bench/peak_rss.py OUT.json SCRIPT.py [ARGS...]
"""

import json
import resource
import runpy
import sys


def main() -> None:
    out, script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        with open(out, "w") as handle:
            json.dump({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, handle)


if __name__ == "__main__":
    main()
