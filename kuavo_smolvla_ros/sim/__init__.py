"""Closed-loop simulation: a MuJoCo Kuavo upper body on the robot's ROS 2 topics (``node``),
its pure core (``model``, ``robot``, ``tasks``, ``expert``: no rclpy), expert recording
(``cli``), closed-loop evaluation (``eval``) and ``make demo-sim`` (``demo``). See
docs/simulation.md. Layer rule: sim may import everything below it; nothing imports sim."""
