"""Data: every kind of data a call gives (calibration, train, validation, eval; labelled or inputs-only; one
input or several; fixed shapes or dims ``dynamic_shapes`` declares), read and checked once into one typed
:class:`~graphopt.data.run_data.RunData` that passes receive; the one validation split
(:func:`~graphopt.data.labelled.split_validation`); and the real labelled data sets graphopt reads offline
(scikit-learn's digits, Fashion-MNIST).
"""
