//! Lazily indexable ranges: stored as (start, step, count), never as a list of values.

use super::Element;

/// Largest number of decimals a float bound may have and still be computed exactly on
/// scaled integers; beyond it (or beyond 1e15 in magnitude) plain float steps are used.
const MAX_SCALE: u32 = 15;

/// An integer or a float range.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RangeSweep {
    /// All bounds were integers.
    Int(IntRange),
    /// At least one bound was a float.
    Float(FloatRange),
}

impl RangeSweep {
    /// Number of values.
    pub fn len(&self) -> u64 {
        match self {
            RangeSweep::Int(r) => r.len(),
            RangeSweep::Float(r) => r.len(),
        }
    }

    /// Whether the range has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`-th value, or `None` past the end.
    pub fn get(&self, index: u64) -> Option<Element> {
        match self {
            RangeSweep::Int(r) => r.get(index).map(Element::Int),
            RangeSweep::Float(r) => r.get(index).map(Element::Float),
        }
    }

    /// The same values in the opposite order.
    pub fn reversed(&self) -> RangeSweep {
        match self {
            RangeSweep::Int(r) => RangeSweep::Int(r.reversed()),
            RangeSweep::Float(r) => RangeSweep::Float(r.reversed()),
        }
    }

    /// Whether the values go down (so sorting means reversing).
    pub fn is_descending(&self) -> bool {
        match self {
            RangeSweep::Int(r) => r.step < 0,
            RangeSweep::Float(r) => r.is_descending(),
        }
    }

    /// The first value, if any.
    pub fn first(&self) -> Option<Element> {
        self.get(0)
    }

    /// The last value, if any.
    pub fn last(&self) -> Option<Element> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }
}

/// Integers `start, start+step, ...`, `count` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntRange {
    start: i64,
    // i128 so that reversing a range with step i64::MIN cannot overflow.
    step: i128,
    count: u64,
}

impl IntRange {
    /// Python's `range(start, stop, step)` (stop excluded) or, with `inclusive`, a range
    /// that includes `stop` when a step lands on it.
    ///
    /// # Errors
    /// When `step` is 0.
    pub fn new(start: i64, stop: i64, step: i64, inclusive: bool) -> Result<IntRange, String> {
        if step == 0 {
            return Err("step must not be 0".into());
        }
        let diff = i128::from(stop) - i128::from(start);
        let step128 = i128::from(step);
        // Only the full inclusive i64 span (2^64 values) does not fit.
        let count = u64::try_from(range_count(diff, step128, inclusive))
            .map_err(|_| "the range has too many values".to_string())?;
        Ok(IntRange { start, step: step128, count })
    }

    /// Number of values.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether the range has no values.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `index`-th value, or `None` past the end.
    pub fn get(&self, index: u64) -> Option<i64> {
        if index >= self.count {
            return None;
        }
        let v = i128::from(index).checked_mul(self.step)?.checked_add(i128::from(self.start))?;
        i64::try_from(v).ok()
    }

    /// The same values in the opposite order.
    pub fn reversed(&self) -> IntRange {
        match self.count.checked_sub(1).and_then(|i| self.get(i)) {
            Some(last) if self.count > 1 => IntRange { start: last, step: -self.step, count: self.count },
            _ => self.clone(),
        }
    }
}

/// Floats `start, start+step, ...`, `count` of them, computed without accumulating error.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatRange {
    repr: FloatRepr,
    count: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum FloatRepr {
    /// Value i is `(start + i*step) / 10^scale`: exact decimal steps, one rounding.
    Scaled { start: i128, step: i128, scale: u32 },
    /// Bounds with too many digits for the scaled form: plain `start + i*step`.
    Raw { start: f64, step: f64 },
}

impl FloatRange {
    /// Like [`IntRange::new`] for floats.
    ///
    /// # Errors
    /// When `step` is 0, a bound is not finite, or there are more than `u64::MAX` values.
    pub fn new(start: f64, stop: f64, step: f64, inclusive: bool) -> Result<FloatRange, String> {
        if !(start.is_finite() && stop.is_finite() && step.is_finite()) {
            return Err("range bounds and step must be finite numbers".into());
        }
        if step == 0.0 {
            return Err("step must not be 0".into());
        }
        let scaled = (|| {
            let (a, sa) = decimal(start)?;
            let (b, sb) = decimal(stop)?;
            let (c, sc) = decimal(step)?;
            let scale = sa.max(sb).max(sc);
            Some((rescale(a, sa, scale)?, rescale(b, sb, scale)?, rescale(c, sc, scale)?, scale))
        })();
        if let Some((s, e, t, scale)) = scaled {
            let count = u64::try_from(range_count(e - s, t, inclusive))
                .map_err(|_| "the range has too many values".to_string())?;
            return Ok(FloatRange { repr: FloatRepr::Scaled { start: s, step: t, scale }, count });
        }
        let steps = (stop - start) / step;
        let count = if steps.is_nan() || steps < 0.0 {
            0.0
        } else if inclusive {
            steps.floor() + 1.0
        } else {
            steps.ceil()
        };
        if !count.is_finite() || count >= u64::MAX as f64 {
            return Err("the range has too many values".into());
        }
        Ok(FloatRange {
            repr: FloatRepr::Raw { start, step },
            // In range and non-negative, checked above.
            count: count as u64,
        })
    }

    /// Number of values.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether the range has no values.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn is_descending(&self) -> bool {
        match self.repr {
            FloatRepr::Scaled { step, .. } => step < 0,
            FloatRepr::Raw { step, .. } => step < 0.0,
        }
    }

    /// The `index`-th value, or `None` past the end.
    pub fn get(&self, index: u64) -> Option<f64> {
        if index >= self.count {
            return None;
        }
        match self.repr {
            FloatRepr::Scaled { start, step, scale } => {
                let n = i128::from(index).checked_mul(step)?.checked_add(start)?;
                // Exact integer over an exact power of ten: one correctly rounded division.
                Some(n as f64 / 10f64.powi(scale as i32))
            }
            FloatRepr::Raw { start, step } => Some(start + index as f64 * step),
        }
    }

    /// The same values in the opposite order.
    pub fn reversed(&self) -> FloatRange {
        if self.count < 2 {
            return self.clone();
        }
        let last = i128::from(self.count - 1);
        let repr = match self.repr {
            FloatRepr::Scaled { start, step, scale } => {
                match last.checked_mul(step).and_then(|d| d.checked_add(start)) {
                    Some(end) => FloatRepr::Scaled { start: end, step: -step, scale },
                    None => return self.clone(),
                }
            }
            FloatRepr::Raw { start, step } => {
                FloatRepr::Raw { start: start + (self.count - 1) as f64 * step, step: -step }
            }
        };
        FloatRange { repr, count: self.count }
    }
}

/// Number of steps of `step` from 0 towards `diff`: end-exclusive like Python's range, or
/// inclusive of `diff` when a step lands on it. Never negative.
fn range_count(diff: i128, step: i128, inclusive: bool) -> i128 {
    let (diff, step) = if step < 0 { (-diff, -step) } else { (diff, step) };
    if diff < 0 || (diff == 0 && !inclusive) {
        return 0;
    }
    if inclusive { diff / step + 1 } else { (diff + step - 1) / step }
}

/// `x` as an integer times 10^-scale, read from its shortest round-trip decimal form, so
/// `0.1` is (1, 1) rather than the binary float's long expansion.
fn decimal(x: f64) -> Option<(i128, u32)> {
    if x.abs() >= 1e15 {
        return None;
    }
    // Display for f64 is the shortest round-trip form and never uses an exponent.
    let text = format!("{x}");
    let (int_part, frac) = text.split_once('.').unwrap_or((text.as_str(), ""));
    let scale = u32::try_from(frac.len()).ok()?;
    if scale > MAX_SCALE {
        return None;
    }
    let digits: String = format!("{int_part}{frac}");
    Some((digits.parse::<i128>().ok()?, scale))
}

fn rescale(v: i128, from: u32, to: u32) -> Option<i128> {
    v.checked_mul(10i128.checked_pow(to.checked_sub(from)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(r: &FloatRange) -> Vec<f64> {
        (0..r.len()).filter_map(|i| r.get(i)).collect()
    }

    #[test]
    fn int_ranges_follow_python() {
        let r = IntRange::new(5, 0, -2, false).unwrap();
        assert_eq!((0..r.len()).map(|i| r.get(i).unwrap()).collect::<Vec<_>>(), [5, 3, 1]);
        assert_eq!(IntRange::new(1, 6, 1, false).unwrap().len(), 5);
        assert_eq!(IntRange::new(1, 1, 1, false).unwrap().len(), 0);
        assert_eq!(IntRange::new(1, 1, 1, true).unwrap().len(), 1);
        assert!(IntRange::new(1, 5, 0, false).is_err());
    }

    #[test]
    fn extreme_int_ranges_do_not_overflow() {
        assert!(IntRange::new(i64::MIN, i64::MAX, 1, true).is_err());
        let r = IntRange::new(i64::MIN, i64::MAX, 1, false).unwrap();
        assert_eq!(r.len(), u64::MAX);
        assert_eq!(r.get(u64::MAX - 1), Some(i64::MAX - 1));
        assert_eq!(r.reversed().get(0), Some(i64::MAX - 1));
        let r = IntRange::new(i64::MAX, i64::MIN, i64::MIN, false).unwrap();
        assert_eq!(r.len(), 2);
        let rev = r.reversed();
        assert_eq!(rev.get(0), Some(-1));
        assert_eq!(rev.get(1), Some(i64::MAX));
    }

    #[test]
    fn float_ranges_are_clean() {
        let r = FloatRange::new(0.0, 1.0, 0.1, false).unwrap();
        assert_eq!(floats(&r), [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]);
        let r = FloatRange::new(0.5, 0.8, 0.1, false).unwrap();
        assert_eq!(floats(&r), [0.5, 0.6, 0.7]);
        let r = FloatRange::new(0.0, 1.0, 0.25, true).unwrap();
        assert_eq!(floats(&r), [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(floats(&r.reversed()), [1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn float_ranges_reject_bad_bounds() {
        assert!(FloatRange::new(0.0, f64::INFINITY, 1.0, false).is_err());
        assert!(FloatRange::new(0.0, 1.0, 0.0, false).is_err());
        assert!(FloatRange::new(0.0, 1e300, 1e-300, false).is_err());
        // Too many digits for the scaled form: falls back to plain steps.
        let r = FloatRange::new(0.0, 1.0, 1e-16, false);
        assert!(r.is_ok());
    }
}
