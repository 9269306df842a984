"""Pure, device-agnostic torch functions comparing a teacher with its student. Nothing here imports ``demos``."""
