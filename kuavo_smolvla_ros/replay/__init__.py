"""Rosbag replay through the policy: ``plan`` (the bag's topics -> the node's inputs, result
types), ``offline`` (the core in bag time), ``live`` (the node over ROS 2), ``report``, ``cli``."""
