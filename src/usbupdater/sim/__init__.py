"""Simulation kit: signed bundles and a simulated device for tests and the demo."""
