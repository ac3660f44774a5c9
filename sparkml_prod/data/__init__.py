"""Spines, labels and the leakage guard, the data matrix, and the synthetic clickstream."""
