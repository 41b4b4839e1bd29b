"""`python -m captioner COMMAND ...`: the same as the `captioner` console script."""
from captioner.cli import main

raise SystemExit(main())
