"""`python -m gateway` is the `smsgw` command."""

from gateway.cli import main

raise SystemExit(main())
