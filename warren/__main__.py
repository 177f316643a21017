"""`python -m warren` runs the CLI (the tests use it to pick the venv's Python)."""

from warren.cli.main import main

main()
