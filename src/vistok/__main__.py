"""``python -m vistok``: the same program as the ``vistok`` command."""

from vistok.cli import main

if __name__ == "__main__":
    main()
