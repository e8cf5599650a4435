"""Reference values for src/stats/pbest.rs: P(arm is best) under exact posteriors, by numerical
integration with scipy (1.17.1): P(i best) = ∫ f_i(x) ∏_{j≠i} F_j(x) dx.

The Rust code replaces concentrated posteriors (shape ≥ 500) by normals; these values bound that
approximation's error. "beta_small_4" and "beta_below_1" check the Monte Carlo samplers (gamma
ratio for shapes ≥ 1, rand_distr's Beta below 1); the last four cases check the quadrature.
"""
import numpy as np
from scipy import stats, integrate


def p_best(dists, i):
    lo = min(d.ppf(1e-13) for d in dists)
    hi = max(d.isf(1e-13) for d in dists)
    f = lambda x: dists[i].pdf(x) * np.prod([d.cdf(x) for j, d in enumerate(dists) if j != i])
    v, _ = integrate.quad(f, lo, hi, limit=1000, points=[d.mean() for d in dists],
                          epsabs=1e-14, epsrel=1e-12)
    return v


def nig_mean(mu, kappa, alpha, beta):
    # Murphy 2007, eq. 110: the mean's marginal is t_{2α}(μ, β/(ακ)).
    return stats.t(2 * alpha, mu, np.sqrt(beta / (alpha * kappa)))


cases = {
    "beta_2": [stats.beta(1000, 9000), stats.beta(1050, 8950)],
    "nig_100": [nig_mean(0.01, 100, 50, 0.5), nig_mean(0.0, 100, 50, 0.5)],
    "nig_2": [nig_mean(0.011, 2000, 1000, 1.0), nig_mean(0.010, 2000 / 1.69, 1000, 1.0)],
    "beta_3": [stats.beta(600, 5400), stats.beta(640, 5360), stats.beta(620, 5380)],
    "beta_small_4": [stats.beta(11, 51), stats.beta(15, 47), stats.beta(9, 53), stats.beta(13, 49)],
    "beta_below_1": [stats.beta(0.7, 1.5), stats.beta(1.2, 3)],
    # Quadrature (src/stats/pbest/quadrature.rs): few results per arm, mixed scales, a density
    # that is positive at 1, Student t posteriors with few degrees of freedom.
    "beta_tiny_8": [stats.beta(a, b) for a, b in
                    [(3, 1), (1, 3), (2, 2), (2, 3), (1, 2), (3, 2), (2, 1), (1, 1)]],
    "beta_mixed_4": [stats.beta(a, b) for a, b in [(1, 1), (581, 411), (628, 364), (216, 186)]],
    "beta_at_one_3": [stats.beta(a, b) for a, b in [(30, 1), (25, 2), (12, 1)]],
    "nig_small_3": [nig_mean(0.01, 11, 6, 0.05), nig_mean(0.0, 11, 6, 0.04),
                    nig_mean(-0.005, 21, 11, 0.1)],
}
for name, dists in cases.items():
    print(name, [f"{p_best(dists, i):.10f}" for i in range(len(dists))])
