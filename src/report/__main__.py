"""python3 -m src.report RESULT_DIR... (see :mod:`src.report.cli`)."""

from src.cli import run
from src.report.cli import main

if __name__ == "__main__":
    run(main)
