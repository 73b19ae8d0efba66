"""``python -m gochat_streams worker|gateway|token|dev|...``: the Faust CLI with our commands."""

from .app import app


def main() -> None:
    app.main()


if __name__ == "__main__":
    main()
