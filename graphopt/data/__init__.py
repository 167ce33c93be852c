"""Data: the real labelled data sets graphopt ships readers for (scikit-learn's digits, Fashion-MNIST)."""
