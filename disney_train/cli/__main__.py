"""`python -m disney_train.cli`."""

from disney_train.cli import main

if __name__ == "__main__":
    main()
