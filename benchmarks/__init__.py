"""Orchestration around the method: benchmark suites (``suite``, ``runner``, ``records``, ``tables``,
``regression``) and speed benchmarks."""
