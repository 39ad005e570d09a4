"""``python -m hieralab``: the same command line as ``hieralab``."""

from .cli import main

raise SystemExit(main())
