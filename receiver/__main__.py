"""`python -m receiver` is the `edgehook` command."""

from receiver.cli import main

raise SystemExit(main())
