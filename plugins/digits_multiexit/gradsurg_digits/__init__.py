"""gradsurg plugin: a multi-exit MLP on scikit-learn's digits."""
