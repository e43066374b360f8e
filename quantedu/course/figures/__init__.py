"""Figures of the lessons' ideas, drawn from live data: one module per topic (each notebook's own)."""
