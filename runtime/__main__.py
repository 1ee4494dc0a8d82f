"""`python -m runtime ...` is the `tidal` command."""

from runtime.cli import main

raise SystemExit(main())
