"""`python -m tidal ...` is the `tidal` command."""

from tidal.runtime.cli import main

raise SystemExit(main())
