"""The gate's maintenance scripts (``python -m tools.NAME`` from a checkout): not part of the installed product."""
