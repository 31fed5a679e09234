"""kd-depth core: self-supervised depth training and distillation in pure PyTorch (no ROS)."""

__version__ = "0.1.0"
