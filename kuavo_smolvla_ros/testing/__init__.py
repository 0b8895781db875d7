"""Test and benchmark helpers shared by ``test/`` and ``benchmarks/`` (a simulated Kuavo on
real ROS 2 topics, the policy node in a process of its own)."""
