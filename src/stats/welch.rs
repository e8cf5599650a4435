//! Welch's unequal-variance t-test (Welch 1947, "The generalization of Student's problem when
//! several different population variances are involved"):
//! `t = (x̄₂ − x̄₁) / se`, `se = √(s₁²/n₁ + s₂²/n₂)`, Welch–Satterthwaite
//! `df = se⁴ / ((s₁²/n₁)²/(n₁−1) + (s₂²/n₂)²/(n₂−1))`, two-sided `p = 2·P(T_df > |t|)`, and the
//! interval of the difference `x̄₂ − x̄₁ ± t_{1−α/2, df}·se`. Signs are "treatment minus control".

use statrs::distribution::{ContinuousCDF, StudentsT};

use super::{all_finite, finite_pair, Summary};

/// Relative size below which a standard error counts as zero: such data carry no evidence about
/// noise, so no test is reported (and nothing can stop on a rounding artefact).
pub(crate) const DEGENERATE_SE: f64 = 1e-9;

/// The outcome of [`welch_t_test`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    /// t statistic (treatment − control).
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// Difference of means (treatment − control).
    pub difference: f64,
    /// Confidence interval of the difference at `1 − alpha`.
    pub ci: (f64, f64),
    /// Standard error of the difference.
    pub se: f64,
}

/// Whether a standard error is too small, relative to the means, to support any inference.
pub fn degenerate(se: f64, m1: f64, m2: f64) -> bool {
    let floor = DEGENERATE_SE * m1.abs().max(m2.abs());
    !se.is_finite() || se <= floor
}

/// Welch's test of `treatment` against `control`. `None` when either has fewer than two results,
/// the standard error is (near) zero, or any input or figure is not a finite number.
pub fn welch_t_test(control: Summary, treatment: Summary, alpha: f64) -> Option<Welch> {
    let inputs = [control.mean, control.std, treatment.mean, treatment.std];
    if control.n < 2 || treatment.n < 2 || !all_finite(&inputs) || !(alpha > 0.0 && alpha < 1.0) {
        return None;
    }
    let (n1, n2) = (control.n as f64, treatment.n as f64);
    let (v1, v2) = (control.std.powi(2) / n1, treatment.std.powi(2) / n2);
    let se = (v1 + v2).sqrt();
    if degenerate(se, control.mean, treatment.mean) {
        return None;
    }
    let difference = treatment.mean - control.mean;
    let t = difference / se;
    let df = (v1 + v2).powi(2) / (v1.powi(2) / (n1 - 1.0) + v2.powi(2) / (n2 - 1.0));
    // Squares of huge spreads overflow: the figures then are not numbers, and statrs must never
    // see them.
    if !all_finite(&[difference, t, df]) || df <= 0.0 {
        return None;
    }
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let p = (2.0 * dist.sf(t.abs())).min(1.0);
    let q = super::t_quantile(df, 1.0 - alpha / 2.0)?;
    let ci = finite_pair(difference - q * se, difference + q * se)?;
    p.is_finite().then_some(Welch {
        t,
        df,
        p,
        difference,
        ci,
        se,
    })
}

/// Cohen's d with the pooled standard deviation (Cohen 1988, eq. 2.5.2):
/// `(x̄₂ − x̄₁) / √(((n₁−1)s₁² + (n₂−1)s₂²)/(n₁+n₂−2))`. `None` when undefined.
pub fn cohens_d(control: Summary, treatment: Summary) -> Option<f64> {
    let inputs = [control.mean, control.std, treatment.mean, treatment.std];
    if control.n < 2 || treatment.n < 2 || !all_finite(&inputs) {
        return None;
    }
    let (n1, n2) = (control.n as f64, treatment.n as f64);
    let pooled = (((n1 - 1.0) * control.std.powi(2) + (n2 - 1.0) * treatment.std.powi(2))
        / (n1 + n2 - 2.0))
        .sqrt();
    if degenerate(pooled, control.mean, treatment.mean) {
        return None;
    }
    let d = (treatment.mean - control.mean) / pooled;
    d.is_finite().then_some(d)
}

#[cfg(test)]
mod tests {
    use super::super::assert_close;
    use super::*;

    /// Millions of results per arm (a few seconds of a busy test): answered at once. statrs'
    /// t quantile ran for minutes here, holding the test's lock and the server with it.
    #[test]
    fn millions_of_results_per_arm_are_compared_at_once() {
        let arm = |n: u64, mean: f64| Summary {
            n,
            mean,
            std: 0.002,
        };
        let w = welch_t_test(arm(1_300_000, 0.001), arm(1_250_000, 0.001_01), 0.05)
            .expect("a comparison");
        assert!(
            w.df > 2e6 && w.ci.0 < w.difference && w.difference < w.ci.1,
            "{w:?}"
        );
    }

    /// Reference values (scipy 1.17.1, statsmodels 0.15), produced by:
    /// ```python
    /// rng = np.random.default_rng(20261127)
    /// for i in range(12):
    ///     n1, n2 = int(rng.integers(3, 400)), int(rng.integers(3, 400))
    ///     a = rng.normal(rng.normal(0, 0.01), rng.uniform(0.001, 0.05), n1)
    ///     b = rng.normal(rng.normal(0, 0.01), rng.uniform(0.001, 0.05), n2)
    ///     alpha = [0.05, 0.01, 0.1][i % 3]
    ///     r = st.ttest_ind(b, a, equal_var=False); ci = r.confidence_interval(1 - alpha)
    ///     print(n1, a.mean(), a.std(ddof=1), n2, b.mean(), b.std(ddof=1), alpha,
    ///           r.statistic, r.df, r.pvalue, ci.low, ci.high)
    /// ```
    /// The whole script, which also produces the tables of the other stats tests, is
    /// `tests/data/stats_references.py`.
    #[test]
    fn welch_matches_scipy() {
        // (n1, m1, s1, n2, m2, s2, alpha, t, df, p, low, high)
        type Case = (u64, f64, f64, u64, f64, f64, f64, f64, f64, f64, f64, f64);
        let cases: [Case; 12] = [
            (
                317,
                0.004365223668720373,
                0.024405856259353917,
                149,
                -0.0030265070274592587,
                0.006655656383874233,
                0.05,
                -5.010554908978786,
                402.39832485645275,
                8.143848474181778e-07,
                -0.010291854942850585,
                -0.004491606449508679,
            ),
            (
                105,
                0.010090174541806593,
                0.04374733033537461,
                353,
                0.002108639012883553,
                0.04427541185753509,
                0.01,
                -1.6367350723170677,
                172.30083051464237,
                0.10351104269817604,
                -0.020683174445769743,
                0.004720103387923662,
            ),
            (
                189,
                -0.028440435526873108,
                0.03359922218733373,
                136,
                -0.008681466723911301,
                0.048238506832260816,
                0.1,
                4.1126150676862645,
                225.93662353974514,
                5.479326049248825e-05,
                0.01182376906933269,
                0.02769416853659092,
            ),
            (
                191,
                -0.018097362786041946,
                0.025132718060270176,
                28,
                -0.007598418614228557,
                0.036615441459757314,
                0.05,
                1.467431244983531,
                30.837551021077644,
                0.15238467780127762,
                -0.004096159148126631,
                0.02509404749175341,
            ),
            (
                281,
                0.020880105409304756,
                0.04791027697651063,
                110,
                -0.014112468605818463,
                0.026420771278147005,
                0.01,
                -9.184865064645296,
                346.6337561593577,
                3.843925830668819e-18,
                -0.044860307955178695,
                -0.025124840075067746,
            ),
            (
                289,
                0.012006519316168467,
                0.007910021049346329,
                398,
                0.0012851751722898523,
                0.03804491486871944,
                0.1,
                -5.461817781239123,
                443.5083525818722,
                7.866487904826953e-08,
                -0.013956888708491776,
                -0.007485799579265455,
            ),
            (
                172,
                -0.013000156551965188,
                0.03118625305540115,
                306,
                0.007400145206708742,
                0.01884328440159802,
                0.05,
                7.814598191432348,
                242.65303294191744,
                1.6692899303618817e-13,
                0.015258094999344243,
                0.025542508518003614,
            ),
            (
                122,
                0.025231503167065943,
                0.021336060565790176,
                13,
                -0.001790293698909093,
                0.024398861648499717,
                0.01,
                -3.839779340263129,
                14.026058399569612,
                0.001797875509026943,
                -0.04796486373263161,
                -0.006078729999318459,
            ),
            (
                245,
                0.007117766509560736,
                0.04637829372486576,
                399,
                0.006562838473257878,
                0.04143655609901384,
                0.1,
                -0.15342270215838727,
                472.2570681201118,
                0.8781304771266607,
                -0.006516036997427668,
                0.005406180924821951,
            ),
            (
                318,
                -0.0006282824950637578,
                0.03295654208241532,
                383,
                -0.01774094091732061,
                0.04780407829359356,
                0.05,
                -5.586834131214615,
                677.1333284688252,
                3.35200331477831e-08,
                -0.023126843097845504,
                -0.011098473746668197,
            ),
            (
                19,
                -0.00010020347334759071,
                0.007246517976999994,
                221,
                0.006146002125559935,
                0.028444451045509144,
                0.01,
                2.4642564262383204,
                85.05959077782028,
                0.01574250858156737,
                -0.00043246201351330223,
                0.012924873211328354,
            ),
            (
                118,
                -0.017829744461704683,
                0.002238883884487032,
                204,
                0.020955617875849143,
                0.03934698481649415,
                0.1,
                14.039750901366272,
                205.26775676616498,
                7.875982469570841e-32,
                0.03422078904756162,
                0.04334993562754602,
            ),
        ];
        for (n1, m1, s1, n2, m2, s2, alpha, t, df, p, low, high) in cases {
            let w = welch_t_test(
                Summary {
                    n: n1,
                    mean: m1,
                    std: s1,
                },
                Summary {
                    n: n2,
                    mean: m2,
                    std: s2,
                },
                alpha,
            )
            .expect("defined");
            assert_close(w.t, t, 1e-9, "t");
            assert_close(w.df, df, 1e-9, "df");
            assert_close(w.p, p, 1e-9, "p");
            assert_close(w.ci.0, low, 1e-9, "low");
            assert_close(w.ci.1, high, 1e-9, "high");
            assert!((0.0..=1.0).contains(&w.p));
        }
    }

    #[test]
    fn zero_or_near_zero_variance_reports_no_test() {
        let flat = |mean| Summary {
            n: 1000,
            mean,
            std: 0.0,
        };
        assert_eq!(welch_t_test(flat(0.01), flat(0.02), 0.05), None);
        // Welford on constant data can leave m2 at a rounding residue, not exactly 0.
        let residue = |mean| Summary {
            n: 1000,
            mean,
            std: 1e-18,
        };
        assert_eq!(welch_t_test(residue(0.01), residue(0.02), 0.05), None);
        assert_eq!(cohens_d(residue(0.01), residue(0.02)), None);
        assert_eq!(
            welch_t_test(
                Summary {
                    n: 1,
                    mean: 0.0,
                    std: 1.0
                },
                flat(0.0),
                0.05
            ),
            None
        );
    }

    #[test]
    fn cohens_d_matches_the_definition() {
        // Two samples with sd 0.02 and 0.01, n 10 and 30: pooled sd √((9·4e-4 + 29·1e-4)/38).
        let d = cohens_d(
            Summary {
                n: 10,
                mean: 0.0,
                std: 0.02,
            },
            Summary {
                n: 30,
                mean: 0.005,
                std: 0.01,
            },
        )
        .expect("defined");
        let pooled = ((9.0 * 4e-4 + 29.0 * 1e-4) / 38.0f64).sqrt();
        assert_close(d, 0.005 / pooled, 1e-12, "d");
    }
}
