"""Distillation: the frozen teacher wrapper, the pseudo-label cache, and one task module per method.

Importing this package registers the distillation tasks with `train.tasks` (it is listed in
`train.tasks.TASK_MODULES`, so `create_task` imports it on demand).
"""
from kd_depth_core.distill import (
    adu_depth,  # noqa: F401  (registers task 'adu_depth')
    kd_ms_dpt,  # noqa: F401  (registers task 'kd_ms_dpt')
    lumde,  # noqa: F401  (registers task 'lumde')
    xdistill,  # noqa: F401  (registers task 'xdistill')
)
from kd_depth_core.distill.cache import PseudoLabelCache
from kd_depth_core.distill.teacher import TeacherWrapper

__all__ = ["PseudoLabelCache", "TeacherWrapper"]
