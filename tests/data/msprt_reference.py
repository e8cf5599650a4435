# Produces the mixture-SPRT reference values in src/stats/sequential.rs by numerical integration.
# Run: python3 tests/data/msprt_reference.py  (scipy 1.17.1)
# Independent check of the mixture SPRT: integrate the likelihood ratio of a Gaussian estimate
# d ~ N(theta, V) against N(0, V) over the mixing density N(0, tau2) numerically.
import math
from scipy import integrate, stats
cases = [(0.002, 1e-6, 4e-6), (0.0005, 2.5e-7, 1e-6), (-0.01, 4e-5, 1e-4), (0.0, 1e-6, 1e-6), (0.03, 1e-4, 2.5e-5), (0.001, 1e-6, 1e-8)]
print("// (difference, variance of the difference V, tau2, Lambda)")
for d, V, tau2 in cases:
    f = lambda th: stats.norm.pdf(d, th, math.sqrt(V)) / stats.norm.pdf(d, 0, math.sqrt(V)) * stats.norm.pdf(th, 0, math.sqrt(tau2))
    s = math.sqrt(tau2)
    val, err = integrate.quad(f, -40 * s, 40 * s, points=[0.0, d], limit=500, epsabs=0, epsrel=1e-13)
    print(f"({d!r}, {V!r}, {tau2!r}, {val!r}),")
