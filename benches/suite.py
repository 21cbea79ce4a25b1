#!/usr/bin/env python3
"""Entry point of the benchmark suite (`make bench`); the suite itself is the package benches/suite/
(see its __init__.py). Python imports the package, not this file, for `suite`: a folder with an
__init__.py comes before a module of the same name on the same path.

    .venv/bin/python benches/suite.py --help
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite.main import main  # noqa: E402

if __name__ == "__main__":
    main()
