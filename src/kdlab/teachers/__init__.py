"""Teacher sources: a live frozen module, or a soft-label cache keyed by sample and augmentation view."""

from kdlab.teachers.base import FEATURES, LIVE, LOGITS, TeacherOutput, TeacherSource
from kdlab.teachers.cached import CachedTeacher
from kdlab.teachers.live import LiveTeacher

__all__ = ["FEATURES", "LIVE", "LOGITS", "CachedTeacher", "LiveTeacher", "TeacherOutput", "TeacherSource"]
