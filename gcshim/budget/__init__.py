"""Measuring a training step, choosing the fewest layers that fit a memory budget, plotting."""
