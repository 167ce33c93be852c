"""What is measured and shown: static cost, output agreement, accuracy, energy estimates, the per-stage
report and progress.
"""
