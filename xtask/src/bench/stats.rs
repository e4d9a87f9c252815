//! The statistics every table uses: medians with the spread of the runs,
//! nearest-rank percentiles, slopes.

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

    /// Whether the runs of two figures overlap (then neither is measurably
    /// ahead on this machine), after scaling `other` by `scale`.
    pub fn overlaps(&self, other: &Summary, scale: f64) -> bool {
        self.min <= other.max * scale && other.min * scale <= self.max
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
        let other = Summary::of(&[105.0, 120.0]).unwrap();
        assert!(s.overlaps(&other, 1.0));
        assert!(!s.overlaps(&other, 0.5), "halved, 52.5–60 is below 90");
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
    fn slopes_need_two_different_points() {
        assert_eq!(slope((10.0, 20.0), (100.0, 200.0)), Some(2.0));
        assert_eq!(slope((10.0, 20.0), (10.0, 30.0)), None);
    }
}
