"""The front end: a caller's ``nn.Module`` and example inputs checked, then captured into the module-level IR
(torch.fx symbolic tracing, or ``torch.export`` lifted back to modules).
"""
