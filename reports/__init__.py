"""The dataset report: a pair over a whole image folder (CLI, aggregation, static HTML), on the engine."""
