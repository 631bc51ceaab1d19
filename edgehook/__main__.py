"""`python -m edgehook` is the `edgehook` command."""

from edgehook.cli import main

raise SystemExit(main())
