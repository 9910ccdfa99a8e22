"""The other side of test_contract's comparison of access paths, run as a child process.

Started with the environment choosing the access path this process runs (the parent
forces the opposite of its own). It says which path it runs, then answers each pickled
`Call` read from stdin with `test_contract.answers(call)` (cold and warm, every kind),
pickled to stdout, until stdin closes.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path

from vm_memory import access_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
importlib.import_module("conftest")  # the hypothesis profiles test_contract names
# Under the name pytest gives it, so the classes the parent pickles resolve here too.
test_contract = importlib.import_module("test_contract")


def main() -> None:
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    pickle.dump(access_path().name, replies)
    replies.flush()
    while True:
        try:
            call = pickle.load(requests)
        except EOFError:
            return
        pickle.dump(test_contract.answers(call), replies)
        replies.flush()


if __name__ == "__main__":
    main()
