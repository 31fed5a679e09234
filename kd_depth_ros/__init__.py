"""kd-depth ROS 2 glue: message conversions, nodes, the live recorder and the bag converter.

Importing this package does not import rclpy; each node module does so itself.
"""
