//! Exact decimal arithmetic for the few places where floating point would
//! give a wrong answer on an exact edge: `WIDTH_BUCKET`'s bucket edges and a
//! histogram's bin edges.
//!
//! A number written `0.6` is read into the `f64` nearest to it, which is not
//! 0.6; but its shortest round-trip text (what the kernel prints) is `0.6`
//! again. The dialect therefore reads every `f64` as the decimal it prints as
//! ([`Decimal::of_f64`]), and compares decimals exactly: `0.6` is on the edge
//! of the bucket starting at `0.6`, as the user who wrote both expects. An
//! integer is itself.
//!
//! The arithmetic needed is small (sums of decimals with integer factors, and
//! comparisons), but the values span the whole `f64` range (`1e300`,
//! `5e-324`), so the magnitudes are arbitrary-precision.

use std::cmp::Ordering;

/// An unsigned integer of any size: little-endian base-2^32 limbs, no
/// trailing zero limb.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Big(Vec<u32>);

impl Big {
    fn of(mut v: u128) -> Big {
        let mut limbs = Vec::new();
        while v > 0 {
            limbs.push(v as u32);
            v >>= 32;
        }
        Big(limbs)
    }

    fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    fn mul_small(&mut self, m: u64) {
        if m == 0 {
            self.0.clear();
            return;
        }
        let mut carry: u128 = 0;
        for limb in &mut self.0 {
            let v = u128::from(*limb) * u128::from(m) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        while carry > 0 {
            self.0.push(carry as u32);
            carry >>= 32;
        }
    }

    fn mul_pow10(&mut self, mut k: u32) {
        while k >= 19 {
            self.mul_small(10u64.pow(19));
            k -= 19;
        }
        if k > 0 {
            self.mul_small(10u64.pow(k));
        }
    }

    fn add(&self, other: &Big) -> Big {
        let mut out = Vec::with_capacity(self.0.len().max(other.0.len()) + 1);
        let mut carry = 0u64;
        for i in 0..self.0.len().max(other.0.len()) {
            let v = u64::from(*self.0.get(i).unwrap_or(&0)) + u64::from(*other.0.get(i).unwrap_or(&0)) + carry;
            out.push(v as u32);
            carry = v >> 32;
        }
        if carry > 0 {
            out.push(carry as u32);
        }
        Big(out)
    }

    /// `self - other`, for `self >= other`.
    fn sub(&self, other: &Big) -> Big {
        let mut out = Vec::with_capacity(self.0.len());
        let mut borrow = 0i64;
        for i in 0..self.0.len() {
            let mut v = i64::from(self.0[i]) - i64::from(*other.0.get(i).unwrap_or(&0)) - borrow;
            borrow = 0;
            if v < 0 {
                v += 1 << 32;
                borrow = 1;
            }
            out.push(v as u32);
        }
        while out.last() == Some(&0) {
            out.pop();
        }
        Big(out)
    }

    fn cmp(&self, other: &Big) -> Ordering {
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.iter().rev().cmp(other.0.iter().rev()))
    }
}

/// A signed integer of any size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Int {
    negative: bool,
    magnitude: Big,
}

impl Int {
    fn add(&self, other: &Int) -> Int {
        if self.negative == other.negative {
            return Int { negative: self.negative, magnitude: self.magnitude.add(&other.magnitude) };
        }
        match self.magnitude.cmp(&other.magnitude) {
            Ordering::Less => Int { negative: other.negative, magnitude: other.magnitude.sub(&self.magnitude) },
            _ => Int { negative: self.negative, magnitude: self.magnitude.sub(&other.magnitude) }.normalized(),
        }
    }

    fn normalized(self) -> Int {
        if self.magnitude.is_zero() { Int { negative: false, magnitude: self.magnitude } } else { self }
    }

    fn cmp(&self, other: &Int) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.magnitude.cmp(&other.magnitude),
            (true, true) => other.magnitude.cmp(&self.magnitude),
        }
    }
}

/// An exact decimal: `digits × 10^exponent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    digits: Int,
    exponent: i32,
}

impl Decimal {
    pub fn of_i64(v: i64) -> Decimal {
        Decimal { digits: Int { negative: v < 0, magnitude: Big::of(u128::from(v.unsigned_abs())) }, exponent: 0 }
    }

    /// The decimal a finite `f64` prints as (its shortest round-trip text),
    /// e.g. `0.6` for the `f64` nearest to 0.6. `None` for NaN and infinities.
    pub fn of_f64(x: f64) -> Option<Decimal> {
        if !x.is_finite() {
            return None;
        }
        // `{:e}` is the shortest round-trip form: `-6e-1`, `1.2345e2`, `0e0`.
        let text = format!("{x:e}");
        let (mantissa, exponent) = text.split_once('e')?;
        let exponent: i32 = exponent.parse().ok()?;
        let negative = mantissa.starts_with('-');
        let mantissa = mantissa.trim_start_matches('-');
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits: u128 = format!("{int}{frac}").parse().ok()?;
        let magnitude = Big::of(digits);
        Some(Decimal { digits: Int { negative, magnitude }.normalized(), exponent: exponent - frac.len() as i32 })
    }

    /// The value times `factor`, as an integer count of `10^exponent`
    /// (`exponent` at most the value's own).
    fn scaled(&self, exponent: i32, factor: i64) -> Int {
        let mut magnitude = self.digits.magnitude.clone();
        magnitude.mul_pow10((self.exponent - exponent) as u32);
        magnitude.mul_small(factor.unsigned_abs());
        Int { negative: self.digits.negative != (factor < 0), magnitude }.normalized()
    }

    /// `Σ factor × value`, exactly.
    pub fn sum(terms: &[(i64, &Decimal)]) -> Decimal {
        let exponent = terms.iter().map(|(_, d)| d.exponent).min().unwrap_or(0);
        let zero = Int { negative: false, magnitude: Big(Vec::new()) };
        let digits = terms.iter().fold(zero, |acc, (f, d)| acc.add(&d.scaled(exponent, *f)));
        Decimal { digits, exponent }
    }

    /// `self × factor` compared with `other`.
    pub fn cmp_scaled(&self, factor: i64, other: &Decimal) -> Ordering {
        let exponent = self.exponent.min(other.exponent);
        self.scaled(exponent, factor).cmp(&other.scaled(exponent, 1))
    }

    /// The value as `integer × 10^-scale` with `scale >= 0`, when the integer
    /// fits in an `i64` (e.g. `37.5` is `375 × 10^-1`).
    pub fn as_scaled_i64(&self) -> Option<(i64, u32)> {
        let scale = (-self.exponent).max(0) as u32;
        let int = self.scaled(-(scale as i32), 1);
        if int.magnitude.0.len() > 2 {
            return None;
        }
        let m = int.magnitude.0.iter().rev().fold(0u64, |acc, l| (acc << 32) | u64::from(*l));
        let m = i64::try_from(m).ok()?;
        Some((if int.negative { -m } else { m }, scale))
    }
}

/// `x` rounded to `digits` decimals, half away from zero, as the decimal it
/// prints as: `2.675` gives 2.68 and `1.005` gives 1.01 (PostgreSQL's
/// `round(numeric, int)`), where scaling the double (`x × 100`) lands on
/// either side of the tie depending on its binary digits. The result is the
/// double nearest to the rounded decimal.
pub fn round_half_away(x: f64, digits: u32) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let text = format!("{x:e}");
    let Some((mantissa, exponent)) = text.split_once('e') else { return x };
    let Ok(exponent) = exponent.parse::<i64>() else { return x };
    let negative = mantissa.starts_with('-');
    let figures: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    // figures[i] is worth 10^(exponent - i); keep those worth 10^-digits or more.
    let keep = exponent + i64::from(digits) + 1;
    if keep >= figures.len() as i64 {
        return x;
    }
    let sign = if negative { "-" } else { "" };
    if keep < 0 {
        return if negative { -0.0 } else { 0.0 };
    }
    let mut kept: Vec<u8> = figures[..keep as usize].to_vec();
    if figures[keep as usize] >= 5 {
        // Add one unit in the last kept place, carrying.
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, 1);
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    if kept.is_empty() {
        return if negative { -0.0 } else { 0.0 };
    }
    let text: String = kept.iter().map(|d| char::from(b'0' + d)).collect();
    format!("{sign}{text}e-{digits}").parse().unwrap_or(x)
}

/// The position of `x` in `f64`'s order, as an integer (`-0.0` just below
/// `0.0`); consecutive floats have consecutive keys.
fn order_key(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

fn from_order_key(key: i64) -> f64 {
    f64::from_bits((key ^ ((((key >> 63) as u64) >> 1) as i64)) as u64)
}

/// The least `k` in `[low, high]` for which `pred` holds, searched from
/// `guess` outwards, for a `pred` that is false then true and true at `high`.
fn least(guess: i128, low: i128, high: i128, pred: impl Fn(i128) -> bool) -> i128 {
    let guess = guess.clamp(low, high);
    // Invariant: pred(hi), and lo < low or !pred(lo).
    let (mut lo, mut hi);
    let mut step: i128 = 1;
    if pred(guess) {
        hi = guess;
        loop {
            let probe = hi - step;
            if probe < low {
                lo = low - 1;
                break;
            }
            if pred(probe) {
                hi = probe;
                step *= 2;
            } else {
                lo = probe;
                break;
            }
        }
    } else {
        lo = guess;
        loop {
            let probe = (lo + step).min(high);
            if pred(probe) {
                hi = probe;
                break;
            }
            lo = probe;
            step *= 2;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The edges of `n` equal-width buckets from `low` to `high`, exactly:
/// edge `i` is `low + i × (high - low) / n`, held as `n ×` itself.
pub struct Edges {
    low: Decimal,
    high: Decimal,
    n: u32,
}

impl Edges {
    pub fn new(low: Decimal, high: Decimal, n: u32) -> Edges {
        Edges { low, high, n }
    }

    /// `n ×` edge `i`, exactly.
    fn times_n(&self, i: u32) -> Decimal {
        Decimal::sum(&[(i64::from(self.n - i), &self.low), (i64::from(i), &self.high)])
    }

    /// For each edge `i` in `0..=n`, the least `f64` whose decimal is at or
    /// above it: then `x` is at or above edge `i` exactly when `x >= t[i]`.
    /// `guess(i)` is any approximation of edge `i` (it only speeds up the search).
    pub fn float_thresholds(&self, guess: impl Fn(u32) -> f64) -> Vec<f64> {
        let (low, high) = (i128::from(order_key(f64::NEG_INFINITY)), i128::from(order_key(f64::INFINITY)));
        (0..=self.n)
            .map(|i| {
                let edge = self.times_n(i);
                let at_or_above = |key: i128| {
                    let x = from_order_key(key as i64);
                    match Decimal::of_f64(x) {
                        Some(d) => d.cmp_scaled(i64::from(self.n), &edge) != Ordering::Less,
                        None => x > 0.0,
                    }
                };
                let g = guess(i);
                let g = if g.is_finite() { g } else { 0.0 };
                from_order_key(least(i128::from(order_key(g)), low, high, at_or_above) as i64)
            })
            .collect()
    }

    /// For each edge `i` in `0..=n`, the least integer at or above it (up to
    /// `i64::MAX + 1`, which no integer reaches).
    pub fn integer_thresholds(&self, guess: impl Fn(u32) -> f64) -> Vec<i128> {
        let (low, high) = (i128::from(i64::MIN), i128::from(i64::MAX) + 1);
        (0..=self.n)
            .map(|i| {
                let edge = self.times_n(i);
                let at_or_above = |k: i128| k == high || Decimal::of_i64(k as i64).cmp_scaled(i64::from(self.n), &edge) != Ordering::Less;
                let g = guess(i);
                let g = if g.is_finite() { g.clamp(i64::MIN as f64, i64::MAX as f64) as i128 } else { 0 };
                least(g, low, high, at_or_above)
            })
            .collect()
    }
}

/// The bucket of `x` given the thresholds of edges `0..=n`: 0 below edge 0,
/// `i` from edge `i - 1` up to edge `i`, `n + 1` at or above edge `n`.
pub fn bucket<T: PartialOrd>(thresholds: &[T], x: &T) -> i64 {
    thresholds.partition_point(|t| t <= x) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(x: f64) -> Decimal {
        Decimal::of_f64(x).unwrap()
    }

    #[test]
    fn floats_read_as_they_print() {
        assert_eq!(dec(0.6).as_scaled_i64(), Some((6, 1)));
        assert_eq!(dec(-37.5).as_scaled_i64(), Some((-375, 1)));
        assert_eq!(dec(110.0).as_scaled_i64(), Some((110, 0)));
        assert_eq!(dec(1e30).as_scaled_i64(), None);
        assert_eq!(dec(0.0), Decimal::of_i64(0));
        assert_eq!(dec(-0.0), Decimal::of_i64(0));
        assert_eq!(Decimal::of_f64(f64::NAN), None);
        // 0.1 + 0.2 prints as 0.30000000000000004: above 0.3.
        assert_eq!(dec(0.1 + 0.2).cmp_scaled(1, &dec(0.3)), Ordering::Greater);
        assert_eq!(dec(0.6).cmp_scaled(5, &Decimal::of_i64(3)), Ordering::Equal);
    }

    #[test]
    fn sums_are_exact_across_magnitudes() {
        let tiny = dec(5e-324);
        let huge = dec(1e300);
        let s = Decimal::sum(&[(1, &huge), (1, &tiny), (-1, &huge)]);
        assert_eq!(s.cmp_scaled(1, &tiny), Ordering::Equal);
        assert_eq!(Decimal::sum(&[(3, &dec(0.1)), (-1, &dec(0.3))]).cmp_scaled(1, &Decimal::of_i64(0)), Ordering::Equal);
        assert_eq!(Decimal::of_i64(i64::MIN).cmp_scaled(1, &Decimal::of_i64(i64::MAX)), Ordering::Less);
    }

    #[test]
    fn rounding_is_on_the_printed_decimal() {
        for (x, d, want) in [
            (2.675, 2, 2.68),
            (1.005, 2, 1.01),
            (-1.005, 2, -1.01),
            (0.125, 2, 0.13),
            (0.15, 1, 0.2),
            (2.5, 0, 3.0),
            (-2.5, 0, -3.0),
            (0.49999999999999994, 0, 0.0),
            (9.995, 2, 10.0),
            (99.96, 1, 100.0),
            (0.004, 2, 0.0),
            (0.005, 2, 0.01),
            (0.0005, 2, 0.0),
            (123.456, 1, 123.5),
            (1e300, 2, 1e300),
            (5e-324, 2, 0.0),
            (4503599627370495.5, 0, 4503599627370496.0),
            (1.5, 15, 1.5),
        ] {
            assert_eq!(round_half_away(x, d), want, "round({x}, {d})");
        }
        assert!(round_half_away(-0.001, 2) == 0.0);
        assert!(round_half_away(f64::INFINITY, 2).is_infinite());
    }

    #[test]
    fn order_keys_follow_the_floats() {
        let xs = [f64::NEG_INFINITY, -1e300, -1.0, -5e-324, -0.0, 0.0, 5e-324, 0.6, 1.0, f64::MAX, f64::INFINITY];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
        assert_eq!(order_key(0.0) - order_key(-0.0), 1);
    }

    #[test]
    fn thresholds_are_the_edges_as_written() {
        let edges = Edges::new(dec(0.0), dec(3.0), 5);
        let t = edges.float_thresholds(|i| i as f64 * 0.6);
        assert_eq!(t, vec![0.0, 0.6, 1.2, 1.8, 2.4, 3.0]);
        assert_eq!(bucket(&t, &0.6), 2);
        assert_eq!(bucket(&t, &0.5999999999999999), 1);
        assert_eq!(bucket(&t, &1.2), 3);
        assert_eq!(bucket(&t, &-0.0), 1);
        assert_eq!(bucket(&t, &3.0), 6);
        assert_eq!(bucket(&t, &-1e-300), 0);
        let ints = Edges::new(dec(0.0), dec(110.0), 22).integer_thresholds(|i| i as f64 * 5.0);
        assert_eq!(bucket(&ints, &75), 16);
        assert_eq!(bucket(&ints, &74), 15);
        let thirds = Edges::new(dec(0.0), dec(1.0), 3).integer_thresholds(|_| 0.0);
        assert_eq!(thirds, vec![0, 1, 1, 1]);
    }
}
