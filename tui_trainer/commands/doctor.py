"""`tui-trainer doctor` (filled in by its issue)."""

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("not yet available")
    return 1
