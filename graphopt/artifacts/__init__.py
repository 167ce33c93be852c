"""Artifacts: what ``optimize`` returns, lowered files checked against the model, written only once
verified, and archives read back without running code.
"""
