"""Showing results: the HTML report (``write_report``) and the terminal summary."""
