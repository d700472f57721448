"""Studies: compare assigners over seeds with confidence intervals (specs/study.md).

``python -m detector.study STUDY`` runs every (arm, seed) of a study as its own training
run, keeps each run's small result, and aggregates them into a table with 95 % intervals
and verdicts. Modules: ``definitions`` (what a study is, the built-in studies, study
files), ``runner`` (executors, run results), ``stats`` (scipy.stats), ``report`` (tables
and plots).
"""
