"""`penstock batch`: push a dataset through a Pipeline (see command.py)."""
