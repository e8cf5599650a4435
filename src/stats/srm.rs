//! Pearson's χ² goodness-of-fit test (Pearson 1900): `χ² = Σ (Oᵢ − Eᵢ)² / Eᵢ` with `K − 1`
//! degrees of freedom, `p = P(χ²_{K−1} > χ²)`. Used for sample-ratio mismatch: observed
//! allocations against the sum of the probabilities the policy gave each arm.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// The statistic and p-value, or `None` when fewer than two categories have positive expected
/// counts or any count is not a finite number. A category expected never but observed is an
/// infinite mismatch (p = 0).
pub fn chi_square_goodness_of_fit(observed: &[f64], expected: &[f64]) -> Option<(f64, f64)> {
    if !super::all_finite(observed) || !super::all_finite(expected) {
        return None;
    }
    let mut statistic = 0.0;
    let mut categories = 0usize;
    for (&o, &e) in observed.iter().zip(expected) {
        if e > 0.0 {
            statistic += (o - e).powi(2) / e;
            categories += 1;
        } else if o > 0.0 {
            return Some((f64::INFINITY, 0.0));
        }
    }
    if categories < 2 {
        return None;
    }
    if statistic == f64::INFINITY {
        return Some((statistic, 0.0));
    }
    if !statistic.is_finite() {
        return None;
    }
    let p = ChiSquared::new((categories - 1) as f64).ok()?.sf(statistic);
    Some((statistic, p.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::super::assert_close;
    use super::*;

    /// `scipy.stats.chisquare(obs, f_exp)` on multinomial draws (`tests/data/stats_references.py`).
    #[test]
    fn chi_square_matches_scipy() {
        let cases: [(&[u64], &[f64], f64, f64); 10] = [
            (
                &[10774, 39309, 4278, 9604, 1015, 433][..],
                &[
                    10858.759359795178,
                    39243.91965384584,
                    4136.208273976186,
                    9692.720690169426,
                    1024.6876910926483,
                    456.7043311207167,
                ],
                7.764238394413725,
                0.16971650384574438,
            ),
            (
                &[183, 15503, 7247, 3583, 16563, 2582, 18470, 9836][..],
                &[
                    184.81758114579543,
                    15640.30560355889,
                    7204.817123149726,
                    3576.2471142604504,
                    16616.341938074118,
                    2598.1342330579428,
                    18296.234309375235,
                    9850.102097377849,
                ],
                3.4249333060451885,
                0.8431113374308514,
            ),
            (
                &[530, 5522, 61029][..],
                &[548.7907086212746, 5551.984171550253, 60980.225119828465],
                0.8443434546021407,
                0.6556214416249688,
            ),
            (
                &[53631, 4345, 5309][..],
                &[53651.876672929866, 4324.042378038428, 5309.080949031694],
                0.10970132226518942,
                0.9466265055283225,
            ),
            (
                &[1032, 21410, 2310, 25580, 12938, 19544, 1551][..],
                &[
                    1049.3573111386515,
                    21423.504467561146,
                    2357.0065557847715,
                    25422.949268679276,
                    12864.758246758885,
                    19646.772980556085,
                    1600.6511695211861,
                ],
                4.698006166792914,
                0.5830873381879322,
            ),
            (
                &[28426, 4181, 3629][..],
                &[28434.770532264825, 4169.857571910798, 3631.371895824375],
                0.034028551180935854,
                0.9831296497784748,
            ),
            (
                &[3275, 937, 30149, 2308, 842, 11524, 22130, 6930][..],
                &[
                    3240.65746045076,
                    909.2313470587043,
                    30246.56990246792,
                    2337.6171557067432,
                    893.5343042938875,
                    11483.17031692011,
                    22085.37972331489,
                    6898.83978978699,
                ],
                5.250294722188259,
                0.6294479717445192,
            ),
            (
                &[1571, 2490, 18203, 18504][..],
                &[
                    1586.8492161585123,
                    2434.9577817665354,
                    18279.19303032993,
                    18466.999971745016,
                ],
                1.794256139845692,
                0.6161856611896548,
            ),
            (
                &[16084, 9311, 3834, 21508][..],
                &[
                    16094.33273087038,
                    9198.943793809238,
                    3862.4606532475236,
                    21581.262822072862,
                ],
                1.8300590706473887,
                0.608415693073519,
            ),
            (
                &[406, 46871, 3305, 8587, 29627][..],
                &[
                    395.21622512507764,
                    47171.51955519676,
                    3234.357285269121,
                    8642.45996531412,
                    29352.446969094908,
                ],
                6.675693268702487,
                0.15405145999556352,
            ),
        ];
        for (observed, expected, statistic, p) in cases {
            let observed: Vec<f64> = observed.iter().map(|&o| o as f64).collect();
            let (s, q) = chi_square_goodness_of_fit(&observed, expected).expect("defined");
            assert_close(s, statistic, 1e-9, "statistic");
            assert_close(q, p, 1e-9, "p");
        }
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(chi_square_goodness_of_fit(&[5.0], &[5.0]), None);
        assert_eq!(chi_square_goodness_of_fit(&[5.0, 0.0], &[5.0, 0.0]), None);
        assert_eq!(
            chi_square_goodness_of_fit(&[5.0, 1.0], &[6.0, 0.0]),
            Some((f64::INFINITY, 0.0))
        );
    }
}
