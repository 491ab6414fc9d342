"""Renderers: turn analysis results into rich terminal output. JSON output is the
analysis dataclasses themselves (`to_json`), so both back ends show the same numbers."""
