"""The IR: a torch.fx ``GraphModule`` at module level, helpers to read and edit it, the facts passes record on
it, and the extension module types passes insert and backends lower (:mod:`graphopt.ir.extensions`).
"""
