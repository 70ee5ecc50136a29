"""`python -m disney_train.cli`."""

from disney_train.cli import main

main()
