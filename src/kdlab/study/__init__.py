"""Studies: a grid of (method x grid cell x seed) runs with their teachers, then paper-style tables and plots.

Modules: ``schema`` (the study file), ``plan`` (grid expansion), ``execute`` (running the phases),
``report`` (tables and plots through :mod:`kdlab.report`). ``kdlab study STUDY.yaml`` calls :func:`run_study`;
``kdlab study STUDY.yaml --report`` calls :func:`study_report`. A study file (YAML or TOML; relative recipe
paths are relative to the study file, ``out`` is relative to the working directory like a recipe's ``out``)::

    name: nine_methods_noise              # default: the file's stem
    out: runs/studies/nine_methods_noise
    base: [../digits/pair.yaml]           # recipe files merged left to right, under every student run
    methods:                              # label -> method recipe file(s) and/or inline settings
      ce: ../methods/ce.yaml
      kd: ../methods/kd.yaml
      kd_t8: {file: ../methods/kd.yaml, overrides: [objective.kd.tau=8]}
      dml: {file: ../methods/dml.yaml, overrides: [cohort.0.name=smallcnn, "cohort.0.kwargs={width: 2.0}"]}
    grid:                                 # axis -> value label -> overrides (a list, or a mapping, below)
      noise:
        "0.0": [data.corruption.noise.rate=0.0]
        "0.2": [data.corruption.noise.rate=0.2]
      teacher_stop:
        best: [teacher.weights=best]
        final: [teacher.weights=final]
    seeds: [0, 1, 2]                      # or 3 (= 0,1,2) or "0-2"
    overrides: [train.tensorboard=false]  # every run, teachers included
    teacher:                              # how the teacher of each grid cell is made
      recipe: ../digits/teacher.yaml      # file(s), merged left to right
      overrides: []
      weights: best                       # final | best (best = early-stopped on data.val_fraction)
      clean: false                        # true: the teacher trains without data.corruption
      same_data: true                     # the teacher's dataset block is the student's (name, kwargs,
                                          # corruption, val_fraction, ...); false: the teacher recipe's own
      seed: 0
      per_seed: false                     # true: one teacher per seed (seed k teaches seed k)
    corruption_seed: 0                    # pins data.corruption.seed when unset (null: the run's seed)
    baseline: ce                          # the "standard training" row of the gain table

A grid value is a list of ``key=value`` overrides for the student runs, or a mapping with any of
``runs:`` (student runs), ``teacher:`` (the teacher recipe), ``all:`` (both), ``methods: {label: [...]}``
(student runs of one method only, e.g. DML's cohort peer = the cell's teacher architecture), and ``x:`` (the
number plotted for this value; by default the value label read as a number).

**Order** of a student run's recipe: base files, method files, method ``recipe:``, method ``overrides``, the
study's teacher link (``teacher: {run: <teacher folder>, weights: <teacher.weights>}``), study ``overrides``,
then each axis's cell overrides (``all``, ``runs``, ``methods[label]``) in axis order; then ``name`` (the
method label), ``out``, ``seed`` and the teacher folder are set by the study. A teacher recipe: teacher files,
``teacher.overrides``, study ``overrides``, each axis's ``all`` and ``teacher``, then (``same_data``) the
student's dataset block, without ``corruption`` when ``clean``.

**Folders.** Student runs: ``out/<axis>-<value>/.../<method>/seed<k>``. Teachers: one per distinct teacher
recipe (the merged recipe, hashed) and seed ``teacher.seed`` (0), ``out/teachers/<hash>/seed0``, so cells
and methods whose teachers are identical share one; each teacher trains before any student. A run whose
recipe says ``teacher: null`` (DML) gets no teacher and
ignores ``teacher.*`` overrides. Every run folder gets ``study.json`` (method, cell,
seed, teacher folder, ``teacher_weights``, ``teacher_clean``); ``out/plan.json`` lists them all.

**Resume.** A finished run is returned as is by the engine (``run_recipe`` with ``existing="resume"``), an
interrupted one resumes from its checkpoint, so re-running a killed study redoes nothing that finished.
A failed run is reported at the end (KDLabError) after every other run has been attempted; students whose
teacher failed are skipped.

**Parallel.** ``workers > 1`` runs each phase (teachers, then students) in a ``ProcessPoolExecutor`` with
the spawn start method; every worker uses one torch thread (``KDLAB_THREADS=1``).

**Report** (``out/report/``): the final (last-epoch) test top-1, mean ± sample std over seeds, as a table with
methods as rows and grid cells as columns, the gain over ``baseline`` in percentage points, the teachers'
top-1, as ``report.md`` plus ``top1.csv``, ``gain.csv`` (wide, in %/pp), ``cells.csv`` (long, fractions),
``runs.csv`` (one row per run); PNGs: top-1 against every numeric axis (one line per method, one plot per
combination of the other axes' values) and, when cells have different teachers, the capacity-gap curves
(student top-1 against teacher top-1 and against teacher parameter count).
"""

from kdlab.study.execute import run_study
from kdlab.study.plan import PlannedRun, cell_label, cell_path, plan_study
from kdlab.study.report import study_report
from kdlab.study.schema import CellValue, MethodEntry, Study, TeacherPlan, load_study

__all__ = [
    "CellValue",
    "MethodEntry",
    "PlannedRun",
    "Study",
    "TeacherPlan",
    "cell_label",
    "cell_path",
    "load_study",
    "plan_study",
    "run_study",
    "study_report",
]
