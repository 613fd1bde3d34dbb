"""`thresher filter`: a recipe's steps over a pool (the steps themselves are in thresher.filters)."""
