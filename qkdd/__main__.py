"""``python -m qkdd`` is the same as the ``qkdd`` console script."""

from qkdd.cli import main

raise SystemExit(main())
