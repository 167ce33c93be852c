"""The pass pipeline: the pass contract, the planner, the PassManager and its instruments, the services passes
ask, and the driver that runs one ``optimize`` call.
"""
