# Produces the reference tables pasted into src/stats/*.rs (Welch, Student CI, Holm, chi-square,
# sample size). Run: python3 tests/data/stats_references.py  (numpy, scipy 1.17.1, statsmodels 0.15)
import numpy as np, scipy, scipy.stats as st, math
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
rng = np.random.default_rng(20261127)
print("// Welch: (n1, m1, s1, n2, m2, s2, alpha, t, df, p, low, high)")
for i in range(12):
    n1, n2 = int(rng.integers(3, 400)), int(rng.integers(3, 400))
    a = rng.normal(rng.normal(0, 0.01), rng.uniform(0.001, 0.05), n1)
    b = rng.normal(rng.normal(0, 0.01), rng.uniform(0.001, 0.05), n2)
    alpha = [0.05, 0.01, 0.1][i % 3]
    r = st.ttest_ind(b, a, equal_var=False)
    ci = r.confidence_interval(1 - alpha)
    print(f"({n1}, {float(a.mean())!r}, {float(a.std(ddof=1))!r}, {n2}, {float(b.mean())!r}, {float(b.std(ddof=1))!r}, {alpha}, {float(r.statistic)!r}, {float(r.df)!r}, {float(r.pvalue)!r}, {float(ci.low)!r}, {float(ci.high)!r}),")
print("// Student CI: (n, mean, std, alpha, low, high)")
for i in range(10):
    n = int(rng.integers(2, 2000)); m = rng.normal(0, 0.01); s = rng.uniform(0.0001, 0.1); alpha = [0.05, 0.01, 0.1, 0.2, 0.001][i % 5]
    lo, hi = st.t.interval(1 - alpha, n - 1, loc=m, scale=s / math.sqrt(n))
    print(f"({n}, {float(m)!r}, {float(s)!r}, {alpha}, {float(lo)!r}, {float(hi)!r}),")
print("// Holm: (p-values, adjusted)")
for i in range(10):
    k = int(rng.integers(1, 8)); p = rng.uniform(0, 0.2, k) ** 2
    print(f"(&{list(map(float,p))!r}, &{list(map(float,multipletests(p, method='holm')[1]))!r}),")
print("// chi-square GOF: (observed, expected, statistic, p)")
for i in range(10):
    k = int(rng.integers(2, 9)); probs = rng.dirichlet(np.ones(k)); n = int(rng.integers(50, 100000))
    obs = rng.multinomial(n, probs); exp = probs * n
    r = st.chisquare(obs, exp)
    print(f"(&{list(map(int,obs))!r}, &{list(map(float,exp))!r}, {float(r.statistic)!r}, {float(r.pvalue)!r}),")
print("// sample size per arm, unrounded, 2σ²(z_{1-α/2}+z_power)²/δ² with scipy.stats.norm.ppf: (std, effect, alpha, power, n)")
for i in range(10):
    s = rng.uniform(0.005, 0.05); d = rng.uniform(0.0005, 0.01); alpha = [0.05, 0.01, 0.1, 0.001, 0.2][i % 5]; power = [0.8, 0.9, 0.95, 0.5, 0.99][i % 5]
    n = 2 * s**2 * (st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power))**2 / d**2
    print(f"({float(s)!r}, {float(d)!r}, {alpha}, {power}, {n}),")
print("scipy", scipy.__version__)
