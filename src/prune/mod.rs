//! Týr local pruning math: Hessian statistics, OBS saliency and updates, least-squares refit,
//! grids and budgets, expectation weights, and the baselines. Pure functions.
