"""Rosbags without ROS: read (``reader``: ROS 1, ROS 2 sqlite3 and mcap, split and damaged
bags via ``salvage``), write (``writer``), and the kuavo_msgs layouts with the lejuClawState
fix (``kuavo_types``). The public names are re-exported here."""

from kuavo_smolvla_ros.bag.errors import BagError
from kuavo_smolvla_ros.bag.kuavo_types import (
    BAG_FORMATS,
    KUAVO_MD5,
    KUAVO_MSGS,
    kuavo_ros1_full_definition,
    typestore_for,
)
from kuavo_smolvla_ros.bag.reader import BagMessage, BagReader, open_bag
from kuavo_smolvla_ros.bag.writer import BagWriter, write_bag

__all__ = [
    "BAG_FORMATS",
    "KUAVO_MD5",
    "KUAVO_MSGS",
    "BagError",
    "BagMessage",
    "BagReader",
    "BagWriter",
    "kuavo_ros1_full_definition",
    "open_bag",
    "typestore_for",
    "write_bag",
]
