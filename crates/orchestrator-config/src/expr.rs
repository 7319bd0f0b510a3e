//! joblib's safe arithmetic for `pre_dispatch` (`2*n_jobs`), evaluated without `eval`.
//!
//! Same operators as joblib's `eval_expr`: `+ - * / // % **`, unary minus, parentheses,
//! with `/` as true division and `**` right-associative. `n_jobs` is the only name.

/// Why an expression could not be evaluated; `column` is a 0-based char index.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    /// 0-based char index of the problem.
    pub column: usize,
    /// What was expected.
    pub message: String,
}

/// Longest expression accepted; joblib caps it too, and it bounds the recursion depth.
pub const MAX_EXPR_LEN: usize = 30;
const MAX_MAGNITUDE: f64 = 1e6;

/// Evaluate `expr` with `n_jobs` bound to the given value.
pub fn eval(expr: &str, n_jobs: f64) -> Result<f64, ExprError> {
    if expr.chars().count() > MAX_EXPR_LEN {
        return Err(ExprError {
            column: MAX_EXPR_LEN,
            message: format!("expression longer than {MAX_EXPR_LEN} characters"),
        });
    }
    let chars: Vec<char> = expr.chars().collect();
    let mut p = Parser { chars: &chars, pos: 0, n_jobs };
    let value = p.expr(0)?;
    p.skip_ws();
    if p.pos < chars.len() {
        return Err(p.err("expected an operator (+ - * / // % **) or the end"));
    }
    if !value.is_finite() || value.abs() > MAX_MAGNITUDE {
        return Err(ExprError {
            column: 0,
            message: format!("value {value} is out of range (at most {MAX_MAGNITUDE})"),
        });
    }
    Ok(value)
}

struct Parser<'a> {
    chars: &'a [char],
    pos: usize,
    n_jobs: f64,
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
}

impl Op {
    fn precedence(self) -> (u8, bool) {
        match self {
            Op::Add | Op::Sub => (1, false),
            Op::Mul | Op::Div | Op::FloorDiv | Op::Mod => (2, false),
            Op::Pow => (4, true),
        }
    }
}

impl Parser<'_> {
    fn err(&self, message: &str) -> ExprError {
        ExprError { column: self.pos, message: message.to_string() }
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek_op(&mut self) -> Option<(Op, usize)> {
        self.skip_ws();
        let c = *self.chars.get(self.pos)?;
        let next = self.chars.get(self.pos + 1).copied();
        Some(match (c, next) {
            ('*', Some('*')) => (Op::Pow, 2),
            ('/', Some('/')) => (Op::FloorDiv, 2),
            ('+', _) => (Op::Add, 1),
            ('-', _) => (Op::Sub, 1),
            ('*', _) => (Op::Mul, 1),
            ('/', _) => (Op::Div, 1),
            ('%', _) => (Op::Mod, 1),
            _ => return None,
        })
    }

    fn expr(&mut self, min_prec: u8) -> Result<f64, ExprError> {
        let mut lhs = self.unary()?;
        while let Some((op, width)) = self.peek_op() {
            let (prec, right_assoc) = op.precedence();
            if prec < min_prec {
                break;
            }
            let at = self.pos;
            self.pos += width;
            let rhs = self.expr(if right_assoc { prec } else { prec + 1 })?;
            lhs = apply(op, lhs, rhs).map_err(|m| ExprError { column: at, message: m })?;
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<f64, ExprError> {
        self.skip_ws();
        match self.chars.get(self.pos) {
            Some('-') => {
                self.pos += 1;
                // Unary minus binds looser than `**`, as in Python: -2**2 == -4.
                Ok(-self.expr(3)?)
            }
            Some('+') => {
                self.pos += 1;
                self.expr(3)
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Result<f64, ExprError> {
        self.skip_ws();
        let start = self.pos;
        match self.chars.get(self.pos) {
            Some('(') => {
                self.pos += 1;
                let v = self.expr(0)?;
                self.skip_ws();
                if self.chars.get(self.pos) != Some(&')') {
                    return Err(self.err("expected `)`"));
                }
                self.pos += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || *c == '.' => {
                while self.chars.get(self.pos).is_some_and(|c| c.is_ascii_digit() || *c == '.' || *c == '_') {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().filter(|c| **c != '_').collect();
                text.parse::<f64>()
                    .map_err(|_| ExprError { column: start, message: format!("`{text}` is not a number") })
            }
            Some(c) if c.is_alphabetic() || *c == '_' => {
                while self.chars.get(self.pos).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().collect();
                if name == "n_jobs" {
                    Ok(self.n_jobs)
                } else {
                    Err(ExprError {
                        column: start,
                        message: format!("unknown name `{name}`: the only name allowed is `n_jobs`"),
                    })
                }
            }
            Some(_) => Err(self.err("expected a number, `n_jobs` or `(`")),
            None => Err(self.err("expected a number, `n_jobs` or `(` but the expression ended")),
        }
    }
}

fn apply(op: Op, a: f64, b: f64) -> Result<f64, String> {
    Ok(match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div | Op::FloorDiv | Op::Mod if b == 0.0 => return Err("division by zero".into()),
        Op::Div => a / b,
        Op::FloorDiv => (a / b).floor(),
        // Python's % takes the sign of the divisor.
        Op::Mod => a - b * (a / b).floor(),
        Op::Pow => {
            if b.abs() > 64.0 {
                return Err("exponent too large".into());
            }
            a.powf(b)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joblib_examples() {
        assert_eq!(eval("2*n_jobs", 4.0), Ok(8.0));
        assert_eq!(eval("n_jobs", 2.0), Ok(2.0));
        assert_eq!(eval("7/2", 1.0), Ok(3.5));
        assert_eq!(eval("7//2", 1.0), Ok(3.0));
        assert_eq!(eval("2**3", 1.0), Ok(8.0));
        assert_eq!(eval("2**3**2", 1.0), Ok(512.0));
        assert_eq!(eval("-2**2", 1.0), Ok(-4.0));
        assert_eq!(eval("-7%3", 1.0), Ok(2.0));
        assert_eq!(eval("(n_jobs + 1) * 2", 3.0), Ok(8.0));
        assert_eq!(eval(" 3 * n_jobs ", 2.0), Ok(6.0));
    }

    #[test]
    fn errors_point_at_the_problem() {
        assert_eq!(eval("2*n_job", 1.0).unwrap_err().column, 2);
        assert_eq!(eval("2*", 1.0).unwrap_err().column, 2);
        assert_eq!(eval("(2", 1.0).unwrap_err().column, 2);
        assert!(eval("1/0", 1.0).is_err());
        assert!(eval("10**10", 1.0).is_err());
        assert!(eval("2*n_jobs*2*n_jobs*2*n_jobs*2*n_jobs", 1.0).is_err());
        assert!(eval("2 3", 1.0).is_err());
        assert!(eval("", 1.0).is_err());
        assert!(eval("((((((((((((((((((((((((((((", 1.0).is_err());
    }
}
