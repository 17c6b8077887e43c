"""Compatibility names: the teacher lives in :mod:`kdlab.teachers` (``LiveTeacher`` is the frozen module that
``Teacher`` always was)."""

from kdlab.teachers.base import TeacherOutput
from kdlab.teachers.live import LiveTeacher as Teacher

__all__ = ["Teacher", "TeacherOutput"]
