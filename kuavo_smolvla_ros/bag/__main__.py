"""``python -m kuavo_smolvla_ros.bag BAG...``: print a bag's topics, types, counts and times."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kuavo_smolvla_ros.bag.errors import BagError
from kuavo_smolvla_ros.bag.reader import open_bag


def main(argv: Sequence[str] | None = None) -> int:
    """Print topics, types, counts and times of a bag (exit 1 with one line if unreadable)."""
    parser = argparse.ArgumentParser(prog="python -m kuavo_smolvla_ros.bag", description=__doc__)
    parser.add_argument("bag", nargs="+", help="bag directory, .db3/.mcap file or .bag file(s)")
    args = parser.parse_args(argv)
    try:
        with open_bag(args.bag if len(args.bag) > 1 else args.bag[0]) as bag:
            print(f"{bag.name}  [{bag.format}]  {bag.duration_s:.2f} s, {bag.message_count} msgs")
            for topic, (msgtype, n) in bag.topics.items():
                print(f"  {topic}  {msgtype}  {n}")
            for w in bag.warnings:
                print(f"  warning: {w}")
            if bag.damage:
                print(f"  damaged: {bag.damage}")
    except BagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
