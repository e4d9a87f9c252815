//! The statistics every table uses: medians with the spread of the runs,
//! nearest-rank percentiles, slopes, and paired ratios with a confidence
//! interval for the comparisons that must tell a tie from a win.

/// A figure measured several times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Summary {
    /// `None` for no samples (a figure that was not measured is not zero).
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let (min, max) =
            samples.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        Some(Self { median: median(samples), min, max, count: samples.len() })
    }

    /// Half the range as a share of the median, in %: how far apart the runs were.
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 { 0.0 } else { (self.max - self.min) / 2.0 / self.median * 100.0 }
    }

    /// "12.3 (11.9–12.8)" with `decimals` decimals; the range only when
    /// there was more than one run.
    pub fn show(&self, decimals: usize) -> String {
        if self.count > 1 {
            format!("{:.d$} ({:.d$}–{:.d$})", self.median, self.min, self.max, d = decimals)
        } else {
            format!("{:.d$}", self.median, d = decimals)
        }
    }
}

/// The middle sample; the mean of the two middle ones for an even count; 0 for none.
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile: the smallest sample with at least `p` % of the
/// samples at or below it (p99 of 100 samples is the second largest, of 50
/// the largest). `None` for no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len().max(1)) - 1).copied()
}

/// Growth of `y` per unit of `x` between two points.
pub fn slope((x0, y0): (f64, f64), (x1, y1): (f64, f64)) -> Option<f64> {
    (x1 != x0).then(|| (y1 - y0) / (x1 - x0))
}

/// Where a ratio's confidence interval lies against a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// All of it above.
    Win,
    /// It holds the threshold: this many runs cannot tell the two apart.
    Tie,
    /// All of it below.
    Loss,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Win => "win",
            Verdict::Tie => "tie",
            Verdict::Loss => "loss",
        }
    }
}

/// Ours against theirs over paired runs (run i of both back to back, so
/// that drift on the machine hits the pair alike): the geometric mean of
/// the per-pair ratios with a 95 % confidence interval from Student's t on
/// their logarithms (mean ± t·s/√n, exponentiated). Ratios are oriented so
/// that > 1 means ours is better.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedRatio {
    pub ratio: f64,
    /// `None` for one pair: a single ratio says nothing of its spread.
    pub ci: Option<(f64, f64)>,
    pub pairs: usize,
}

impl PairedRatio {
    /// `ours[i] / theirs[i]` for a figure where higher is better,
    /// `theirs[i] / ours[i]` for one where lower is (latencies). Pairs
    /// with a figure that is not positive and finite are left out; `None`
    /// when none is left.
    pub fn of(ours: &[f64], theirs: &[f64], higher_is_better: bool) -> Option<Self> {
        let logs: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .filter(|(o, t)| [**o, **t].iter().all(|v| v.is_finite() && *v > 0.0))
            .map(|(o, t)| if higher_is_better { (o / t).ln() } else { (t / o).ln() })
            .collect();
        let n = logs.len();
        if n == 0 {
            return None;
        }
        let mean = logs.iter().sum::<f64>() / n as f64;
        let ci = (n > 1).then(|| {
            let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let half = t_975(n - 1) * (var / n as f64).sqrt();
            ((mean - half).exp(), (mean + half).exp())
        });
        Some(Self { ratio: mean.exp(), ci, pairs: n })
    }

    /// Against `threshold` (1.0: as good as theirs); `None` without an interval.
    pub fn against(&self, threshold: f64) -> Option<Verdict> {
        let (lo, hi) = self.ci?;
        Some(if lo > threshold {
            Verdict::Win
        } else if hi < threshold {
            Verdict::Loss
        } else {
            Verdict::Tie
        })
    }

    /// "1.06× [0.98–1.15] tie", or "1.06× (n=1)" without an interval.
    pub fn show(&self) -> String {
        match (self.ci, self.against(1.0)) {
            (Some((lo, hi)), Some(verdict)) => {
                format!("{:.2}× [{lo:.2}–{hi:.2}] {}", self.ratio, verdict.label())
            }
            _ => format!("{:.2}× (n={})", self.ratio, self.pairs),
        }
    }
}

/// Student's t two-sided 95 % quantiles (t₀.₉₇₅) for 1..=100 degrees of
/// freedom, to 3 decimals.
const T_975: [f64; 100] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    2.040, 2.037, 2.035, 2.032, 2.030, 2.028, 2.026, 2.024, 2.023, 2.021, 2.020, 2.018, 2.017, 2.015, 2.014,
    2.013, 2.012, 2.011, 2.010, 2.009, 2.008, 2.007, 2.006, 2.005, 2.004, 2.003, 2.002, 2.002, 2.001, 2.000,
    2.000, 1.999, 1.998, 1.998, 1.997, 1.997, 1.996, 1.995, 1.995, 1.994, 1.994, 1.993, 1.993, 1.993, 1.992,
    1.992, 1.991, 1.991, 1.990, 1.990, 1.990, 1.989, 1.989, 1.989, 1.988, 1.988, 1.988, 1.987, 1.987, 1.987,
    1.986, 1.986, 1.986, 1.986, 1.985, 1.985, 1.985, 1.984, 1.984, 1.984,
];

/// t₀.₉₇₅ for `df` degrees of freedom (≥ 1). Beyond the table, its last
/// entry: at most 1 % wider than the true interval.
pub fn t_975(df: usize) -> f64 {
    T_975[df.clamp(1, T_975.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_take_the_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn summaries_carry_the_spread_of_the_runs() {
        let s = Summary::of(&[90.0, 100.0, 110.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.count), (100.0, 90.0, 110.0, 3));
        assert_eq!(s.spread_pct(), 10.0);
        assert_eq!(s.show(0), "100 (90–110)");
        assert_eq!(Summary::of(&[1.25]).unwrap().show(1), "1.2");
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50.0));
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
        let fifty: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&fifty, 99.0), Some(50.0), "of 50 samples, p99 is the largest");
        assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        for (df, t) in [(1, 12.706), (4, 2.776), (9, 2.262), (29, 2.045), (60, 2.000), (100, 1.984)] {
            assert_eq!(t_975(df), t, "df={df}");
        }
        assert_eq!(t_975(1000), 1.984);
        assert!(T_975.windows(2).all(|w| w[0] >= w[1]), "t shrinks as df grows");
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn paired_ratios_are_geometric_means_with_a_t_interval() {
        // Ratios 2 and 8: logs ln 2 and 3 ln 2, mean 2 ln 2 (ratio 4),
        // s = √2 ln 2, s/√2 = ln 2, so the interval is 4 · 2^(±12.706).
        let r = PairedRatio::of(&[2.0, 8.0], &[1.0, 1.0], true).unwrap();
        let (lo, hi) = r.ci.unwrap();
        assert!(close(r.ratio, 4.0) && r.pairs == 2, "{r:?}");
        assert!(close(lo, 4.0 * 2f64.powf(-12.706)) && close(hi, 4.0 * 2f64.powf(12.706)), "{r:?}");
        // Latencies: theirs over ours, so halving ours is a ratio of 2.
        let r = PairedRatio::of(&[50.0, 100.0], &[100.0, 200.0], false).unwrap();
        assert_eq!((r.ratio, r.ci), (2.0, Some((2.0, 2.0))));
        // Five pairs, every ratio 1.10 ± 2 %: a win.
        let ours = [110.0, 112.0, 108.0, 111.0, 109.0];
        let r = PairedRatio::of(&ours, &[100.0; 5], true).unwrap();
        assert_eq!(r.against(1.0), Some(Verdict::Win));
        assert!(r.show().starts_with("1.10× [1.08–1.12] win"), "{}", r.show());
        assert_eq!(r.against(1.2), Some(Verdict::Loss));
        // Ratios on both sides of 1: a tie whatever the mean says.
        let ours = [120.0, 90.0, 110.0, 95.0, 105.0];
        let r = PairedRatio::of(&ours, &[100.0; 5], true).unwrap();
        assert!(r.ratio > 1.0 && r.against(1.0) == Some(Verdict::Tie), "{r:?}");
        assert!(r.show().ends_with(" tie"), "{}", r.show());
        // The runs' ranges overlap (90–110 against 91–111.5), but each run
        // of ours lost to the run of theirs beside it: drift between
        // repetitions cancels in the pairs.
        let r = PairedRatio::of(&[100.0, 90.0, 110.0], &[101.0, 91.0, 111.5], true).unwrap();
        assert_eq!(r.against(1.0), Some(Verdict::Loss), "{r:?}");
    }

    #[test]
    fn one_pair_has_no_interval_and_bad_figures_are_left_out() {
        let r = PairedRatio::of(&[106.0], &[100.0], true).unwrap();
        assert_eq!((r.ci, r.against(1.0), r.show().as_str()), (None, None, "1.06× (n=1)"));
        let r = PairedRatio::of(&[1.0, 0.0, f64::NAN, 2.0], &[1.0, 1.0, 1.0, 1.0], true).unwrap();
        assert_eq!(r.pairs, 2);
        assert!(PairedRatio::of(&[], &[], true).is_none());
        assert!(PairedRatio::of(&[0.0], &[1.0], true).is_none());
    }

    #[test]
    fn slopes_need_two_different_points() {
        assert_eq!(slope((10.0, 20.0), (100.0, 200.0)), Some(2.0));
        assert_eq!(slope((10.0, 20.0), (10.0, 30.0)), None);
    }
}
