"""Figures of the course's ideas, drawn from live data: one module per topic (each function returns the axes
it drew on; the notebook shows the figure and states its one-line takeaway)."""
