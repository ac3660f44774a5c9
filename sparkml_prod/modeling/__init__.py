"""Model stages, training and search, evaluation and the report."""
