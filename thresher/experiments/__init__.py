"""Layer 5, experiments: training (`train`), evaluation, grids of runs, scaling-law fits (`scaling`),
the joint law (`joint`) and A/B verdicts (`compare`, `compare_report`); the `--plan` cost models of
grid, train, fit and compare (`cost`)."""
