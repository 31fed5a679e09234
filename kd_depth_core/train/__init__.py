"""Training: the method-agnostic loop (trainer), checkpoints, distributed helpers, the task registry
and the self-supervised task. Import submodules directly (e.g. `kd_depth_core.train.trainer`)."""
from kd_depth_core.train.tasks import Task, create_task, list_tasks, register_task

__all__ = ["Task", "create_task", "list_tasks", "register_task"]
