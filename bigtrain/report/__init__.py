"""`bigtrain-report`: read runs back, plot them, tabulate them against a baseline."""
