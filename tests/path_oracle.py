"""The other side of test_contract's comparison of access paths, run as a child process.

Started with the environment choosing the access path this process runs (the parent
forces the opposite of its own). It says which path it runs, then answers each pickled
`Call` read from stdin with `test_contract.answers(call)` (cold and warm, every kind),
pickled to stdout, until stdin closes.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest  # noqa: E402, F401  (the hypothesis profiles test_contract names)
import test_contract  # noqa: E402  (the parent's module name, for pickled classes)

from vm_memory import access_path  # noqa: E402


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
