"""``python -m coalmine``."""

from coalmine.cli import main

main()
