"""The foundation: the one SparkSession factory, config loading, Delta tables, UTC time, errors."""
