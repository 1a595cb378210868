"""Training: recipes, strategies and the one loop every method uses."""
